from .phases import Phase, load_config, make_phase, resolve_phases, run_phases
from .train_loop import do_test, do_train

__all__ = ["Phase", "load_config", "make_phase", "resolve_phases", "run_phases", "do_test", "do_train"]
