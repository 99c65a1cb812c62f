"""Which earlier phases a phase needs, in one place: the runner (:mod:`ltdet2.engine.phases`), its derived datasets
(:mod:`ltdet2.engine.derived`) and the leaderboard's chains (:mod:`ltdet2.engine.leaderboard`) all read it here.

A phase needs

- its **input phase**, whose final checkpoint it starts from (given as ``train.init_checkpoint``):
  ``train.init_from_phase`` if set (an earlier phase, e.g. several fine-tunes of one pretrain), else the previous
  phase; ``init_from_phase=""`` makes the phase independent: it keeps its own ``train.init_checkpoint`` (e.g. several
  runs from scratch in one project). The first phase has none;
- its **teacher**, ``train.teacher_from_phase``: an earlier phase whose frozen final model a teacher-student model
  distils from (:func:`chain_teachers`);
- the phases its **derived datasets** read (``train.derived_datasets``: builders, see :mod:`ltdet2.engine.derived`),
  as each builder says through its own ``input_phases()`` (e.g. the phase whose final model scores the annotations).

The names are read by :func:`init_phase_name`, :func:`teacher_phase_name` and :func:`derived_input_names`
(:func:`phase_input_names`: all of them); the runner's functions take ``phases``, the project's phases in order
(each with ``name``, ``cfg``, its config namespace, and ``final_checkpoint``: :class:`ltdet2.engine.phases.Phase`), and
resolve the names to earlier phases, refusing those that are not.
"""

import copy

from omegaconf import OmegaConf

from detectron2.config import instantiate

from ltdet2.modeling.meta_arch.frozen_teacher import FrozenTeacherMixin

from ..utils.lazy_config import lazy_target

__all__ = [
    "init_phase_name",
    "teacher_phase_name",
    "derived_dataset_builders",
    "derived_input_names",
    "phase_input_names",
    "earlier_phases",
    "input_phase",
    "teacher_phase",
    "derived_input_phases",
    "chain_checkpoints",
    "chain_teachers",
    "teacher_model_config",
]


# --- the names, as a phase's train gives them ----------------------------------------------------------------


def init_phase_name(train, previous):
    """The name of the phase whose final checkpoint a phase starts from (None: none), from its ``train``:
    ``train.init_from_phase`` if set, else ``previous`` (the name of the phase before it; None for the first phase,
    which has no input phase whatever its ``init_from_phase``); ``init_from_phase=""``: none. Not checked."""
    if previous is None:
        return None
    source = train.get("init_from_phase", None)
    if source is None:
        return previous
    return None if source == "" else source


def teacher_phase_name(train):
    """The name of the phase a phase distils from (``train.teacher_from_phase``; None: no teacher). Not checked."""
    return train.get("teacher_from_phase", None) or None


def derived_dataset_builders(cfg):
    """The builders of a phase config's ``train.derived_datasets`` (LazyConfigs, or objects), instantiated."""
    return _builders(cfg.train)


def _builders(train):
    entries = train.get("derived_datasets", None) or []
    return [instantiate(entry) if _is_lazy(entry) else entry for entry in entries]


def _is_lazy(entry):
    return OmegaConf.is_config(entry) and "_target_" in entry


def derived_input_names(builders):
    """The names of the phases ``builders`` read, as each says (its ``input_phases()``), in order. Not checked."""
    return [name for builder in builders for name in builder.input_phases()]


def phase_input_names(train, previous):
    """The names of every phase a phase needs (each once, in this order: its input phase, its teacher, its derived
    datasets' input phases), from its ``train`` (a config namespace or a dict) and ``previous``, the name of the phase
    before it (None for the first). Not checked: the caller says what it expects of them."""
    needed = [init_phase_name(train, previous), teacher_phase_name(train), *derived_input_names(_builders(train))]
    return list(dict.fromkeys(name for name in needed if name))


# --- resolved to the runner's phases -------------------------------------------------------------------------


def earlier_phases(phases, phase):
    """{name: phase} of the phases before ``phase`` (one of ``phases``, found by its name), in order."""
    names = [p.name for p in phases]
    return {p.name: p for p in phases[: names.index(phase.name)]}


def _earlier_phase(phases, index, key, source):
    """The phase ``source`` that phase ``index``'s ``train.<key>`` names, which must be an earlier phase."""
    phase = phases[index]
    earlier = {p.name: p for p in phases[:index]}
    if source not in earlier:
        raise ValueError(
            f"phase '{phase.name}': train.{key}={source!r} is not an earlier phase (earlier phases: {list(earlier)})"
        )
    return earlier[source]


def input_phase(phases, index):
    """The phase whose final checkpoint phase ``index`` starts from (:func:`init_phase_name`), an earlier phase; None
    when there is no input phase."""
    source = init_phase_name(phases[index].cfg.train, phases[index - 1].name if index > 0 else None)
    return None if source is None else _earlier_phase(phases, index, "init_from_phase", source)


def teacher_phase(phases, index):
    """The earlier phase named by phase ``index``'s ``train.teacher_from_phase`` (None: no teacher)."""
    source = teacher_phase_name(phases[index].cfg.train)
    return None if source is None else _earlier_phase(phases, index, "teacher_from_phase", source)


def derived_input_phases(phases, phase, builders):
    """(builder, earlier phase) for every phase that each of ``builders`` (``phase``'s) reads, in order; a ValueError,
    when one is reached, for a name that is not a phase before ``phase``."""
    earlier = earlier_phases(phases, phase)
    for builder in builders:
        for name in builder.input_phases():
            if name not in earlier:
                raise ValueError(
                    f"phase '{phase.name}': derived dataset '{builder.name}' reads phase {name!r}, which is not an "
                    f"earlier phase (earlier phases: {list(earlier)})"
                )
            yield builder, earlier[name]


def chain_checkpoints(phases):
    """Phase k > 0 starts from its input phase's final checkpoint (see :func:`input_phase`)."""
    for index, phase in enumerate(phases[1:], start=1):
        source = input_phase(phases, index)
        if source is not None:
            phase.cfg.train.init_checkpoint = source.final_checkpoint


def chain_teachers(phases):
    """A phase with ``train.teacher_from_phase = NAME`` gets NAME's final checkpoint as ``model.teacher_weights``
    and, when its ``model.teacher`` is None, a copy of NAME's ``model`` config as ``model.teacher`` (the
    teacher-student model, e.g. :class:`ltdet2.modeling.TeacherStudentRCNN`, builds and freezes it)."""
    for index, phase in enumerate(phases):
        source = teacher_phase(phases, index)
        if source is None:
            continue
        phase.cfg.model.teacher_weights = source.final_checkpoint
        if phase.cfg.model.get("teacher", None) is None:
            phase.cfg.model.teacher = teacher_model_config(source.cfg.model)


def teacher_model_config(model_cfg):
    """A copy of an earlier phase's model config to build its frozen model from: a teacher-student model
    (:class:`~ltdet2.modeling.meta_arch.frozen_teacher.FrozenTeacherMixin`: ``TeacherStudentRCNN``,
    ``TeacherStudentDETR``) becomes its ``student_class`` without its own ``teacher_student_arguments`` (teacher,
    distillation terms: a teacher is the phase's student alone, as its checkpoint)."""
    teacher = copy.deepcopy(model_cfg)
    target = lazy_target(teacher)
    if isinstance(target, type) and issubclass(target, FrozenTeacherMixin):
        if target.student_class is None:
            raise TypeError(f"teacher_model_config: {target.__name__} names no student_class")
        for key in target.teacher_student_arguments:
            teacher.pop(key, None)
        teacher._target_ = target.student_class
    return teacher
