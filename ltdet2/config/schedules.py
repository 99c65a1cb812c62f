"""Learning-rate multipliers as LazyConfig nodes: linear warm-up, then step decay by 10x at each milestone."""

from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler

from ltdet2.engine.epochs import warmup_multi_step


def multi_step(max_iter, steps, warmup_iters=1000, warmup_factor=0.001):
    """LazyConfig of a warm-up + multi-step schedule over ``max_iter`` iterations: the multiplier is 0.1**k after the
    k-th of ``steps`` (iterations), after a linear warm-up from ``warmup_factor`` over ``warmup_iters`` iterations."""
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[0.1**k for k in range(len(steps) + 1)],
            milestones=list(steps),
            num_updates=max_iter,
        ),
        warmup_length=warmup_iters / max_iter,
        warmup_method="linear",
        warmup_factor=warmup_factor,
    )


def epochs_to_iters(epochs, num_images, batch_size):
    """Iterations of ``epochs`` passes over ``num_images`` images at ``batch_size`` images per iteration (rounded)."""
    return int(round(epochs * num_images / batch_size))


def set_phase_length(phase, *, iters=None, epochs=None, step_fractions=(), warmup_iters=0, where="set_phase_length"):
    """Sets ``phase``'s length and its learning-rate schedule (linear warm-up over ``warmup_iters``, then x0.1 at
    each of ``step_fractions`` of the length; (0.5,): halfway). The length is either ``iters`` iterations (steps at
    ``int(iters * f)``) or ``epochs`` epochs of the phase's training set, counted when the set is registered (a
    derived set: when it is built) and logged (``train.epochs``, :mod:`ltdet2.engine.epochs`)."""
    if (iters is None) == (epochs is None):
        raise ValueError(
            f"{where}: give a phase's length either in iterations or in epochs of its training set, not both or "
            f"neither: got iters={iters!r}, epochs={epochs!r}"
        )
    if iters is not None:
        phase["train"].max_iter = iters
        steps = tuple(int(iters * fraction) for fraction in step_fractions)
        phase["lr_multiplier"] = multi_step(iters, steps=steps, warmup_iters=warmup_iters)
        return phase
    phase["train"].max_iter = None  # set from the set's entries when it is registered
    phase["train"].epochs = epochs
    phase["lr_multiplier"] = L(warmup_multi_step)(
        max_iter="${..train.max_iter}", step_fractions=list(step_fractions), warmup_iters=warmup_iters
    )
    return phase
