#!/usr/bin/env python
"""Trains or evaluates a YAML (yacs) config with ltdet2's methods: Detectron2's ``tools/train_net.py`` with
:class:`ltdet2.config.yaml_trainer.LongTailTrainer` and ``MODEL.LTDET2`` (``ltdet2.config.yaml_config``).

    python scripts/train_net.py --config-file configs/yaml/loce_lt_shapes_pretrain.yaml
    python scripts/train_net.py --config-file configs/yaml/loce_lt_shapes.yaml [--resume] [--eval-only] \
        [--num-gpus N] [KEY VALUE ...]

Same command line as Detectron2's script (``KEY VALUE`` pairs override the config, e.g. ``SOLVER.MAX_ITER 20``).
A YAML config trains one phase: the decoupled fine-tunes (LOCE, BACL stage 2) start from ``MODEL.WEIGHTS``, the
pretrain's ``model_final.pth``. The multi-phase methods (LST, step-wise) are LazyConfig-only:
``scripts/lazyconfig_train_net.py --config-file projects/lst.py`` (or ``projects/stepwise.py``).

Datasets: LT-Shapes (``lt_shapes_train`` / ``lt_shapes_val``) and Detectron2's LVIS registrations
(``$DETECTRON2_DATASETS``) are there; register your own before ``main`` runs (e.g. in a copy of this script, with
:func:`ltdet2.data.register_lvis_format_dataset`), so that every process has them.
"""

import logging

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, hooks, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from ltdet2.config.yaml_config import add_ltdet2_config
from ltdet2.config.yaml_trainer import LongTailTrainer, check_yaml_config

logger = logging.getLogger("detectron2")
__all__ = ["setup", "main", "invoke_main"]


def setup(args):
    """The config of ``args.config_file`` and ``args.opts`` with ltdet2's keys, checked (a LazyConfig-only method
    is refused here, before anything is written), then Detectron2's ``default_setup`` (logger, config saved to
    ``OUTPUT_DIR``, seed)."""
    cfg = get_cfg()
    add_ltdet2_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    check_yaml_config(cfg)
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = LongTailTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = LongTailTrainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            res.update(LongTailTrainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    trainer = LongTailTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    if cfg.TEST.AUG.ENABLED:
        trainer.register_hooks([hooks.EvalHook(0, lambda: trainer.test_with_TTA(cfg, trainer.model))])
    return trainer.train()


def invoke_main():
    args = default_argument_parser(__doc__).parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
