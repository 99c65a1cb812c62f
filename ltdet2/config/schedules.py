"""Learning-rate multipliers as LazyConfig nodes: linear warm-up, then step decay by 10x at each milestone."""

from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler


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
