"""Training and evaluation of one phase: Detectron2's SimpleTrainer/AMPTrainer with its usual hooks.

The same steps and writers (progress printer, metrics.json, TensorBoard events) as Detectron2's
``tools/lazyconfig_train_net.py``; ltdet2 adds the evaluator's output folder, per-phase seeding,
freezing (``train.trainable``) and the memory warm-up (``train.memory_warmup``).
"""

import logging
import os

from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_writers, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

from .checkpoint import AtomicCheckpointer, PeriodicCheckpointer
from .freezing import freeze_all_but
from .memory_warmup import warm_up_memories

logger = logging.getLogger("detectron2")

FINAL_CHECKPOINT = "model_final.pth"


class _NamedLossCheck:
    """Detectron2's trainers stop on a non-finite loss; this names each loss term's value in the error."""

    def _write_metrics(self, loss_dict, data_time, prefix=""):
        try:
            super()._write_metrics(loss_dict, data_time, prefix)
        except FloatingPointError as e:
            terms = ", ".join(f"{name}={float(value):.4g}" for name, value in loss_dict.items())
            raise FloatingPointError(f"the loss became infinite or NaN at iteration {self.iter}: {terms}") from e


class Trainer(_NamedLossCheck, SimpleTrainer):
    pass


class AMPTrainerWithNamedLosses(_NamedLossCheck, AMPTrainer):
    pass


def seed_phase(cfg):
    """Seeds every RNG from ``train.seed`` (+ rank), so a phase run alone equals it run in sequence."""
    seed = cfg.train.get("seed", -1)
    seed_all_rng(None if seed is None or seed < 0 else seed + comm.get_rank())


def build_evaluator(cfg):
    if "evaluator" not in cfg.dataloader:
        return None
    evaluator_cfg = cfg.dataloader.evaluator
    # like Detectron2's train_net: results and per-class AP go to <phase output>/inference
    if evaluator_cfg.get("output_dir") is None and _accepts_output_dir(evaluator_cfg):
        evaluator_cfg.output_dir = os.path.join(cfg.train.output_dir, "inference")
    return instantiate(evaluator_cfg)


def _accepts_output_dir(lazy_cfg):
    import inspect

    target = lazy_cfg.get("_target_")
    if isinstance(target, str):
        from detectron2.config.instantiate import locate

        target = locate(target)
    try:
        return "output_dir" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


def do_test(cfg, model):
    """Evaluates ``model`` on ``dataloader.test``; returns the evaluator's results (or {})."""
    evaluator = build_evaluator(cfg)
    if evaluator is None:
        return {}
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), evaluator)
    if comm.is_main_process():
        print_csv_format(results)
    return results


def build_model(cfg):
    """Instantiates ``cfg.model``, freezes what ``train.trainable`` leaves out, moves it to the device."""
    model = instantiate(cfg.model)
    freeze_all_but(model, cfg.train.get("trainable", None))
    model.to(cfg.train.device)
    return model


def do_train(cfg, *, resume=False):
    """Trains one phase to ``train.max_iter`` in ``train.output_dir``; returns the model.

    With ``resume`` and a checkpoint in the output folder, training continues from it with the
    optimizer, scheduler, iteration and every model buffer (memories, indicators) restored.
    """
    seed_phase(cfg)
    model = build_model(cfg)
    logger.info(f"Model:\n{model}")

    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    cfg.optimizer.params.model = None  # the config outlives the phase; don't keep the model alive
    train_loader = instantiate(cfg.dataloader.train)

    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainerWithNamedLosses if cfg.train.amp.enabled else Trainer)(model, train_loader, optimizer)
    checkpointer = AtomicCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
            # periodic evaluation only; the phase runner evaluates the final model itself
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model), eval_after_train=False),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter),
                period=cfg.train.log_period,
            )
            if comm.is_main_process()
            else None,
        ]
    )

    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    if resume and checkpointer.has_checkpoint():
        # the checkpoint stores the iteration that just finished (and the memories' state)
        start_iter = trainer.iter + 1
    else:
        start_iter = 0
        warmup = cfg.train.get("memory_warmup", None)
        if warmup:
            warm_up_memories(model, cfg, **warmup)
    trainer.train(start_iter, cfg.train.max_iter)
    comm.synchronize()
    return model
