from .derived import DerivedDatasetContext
from .exemplar_scoring import load_score_table, save_score_table, score_annotations
from .phases import Phase, load_config, resolve_phases, run_phases
from .project_config import make_phase
from .train_loop import do_test, do_train

__all__ = [
    "Phase",
    "load_config",
    "make_phase",
    "resolve_phases",
    "run_phases",
    "do_test",
    "do_train",
    "DerivedDatasetContext",
    "score_annotations",
    "load_score_table",
    "save_score_table",
]
