#!/usr/bin/env python
"""Trains or evaluates an ltdet2 (or any Detectron2 LazyConfig) config, phase by phase.

Same command line as Detectron2's ``tools/lazyconfig_train_net.py``, plus ``--phase NAME``:

    python scripts/lazyconfig_train_net.py --config-file projects/baseline.py [--resume | --restart] \
        [--eval-only] [--phase NAME] [--num-gpus N] [key=value ...] [flags]

A project with ``phases`` (its root holds only ``train`` and ``phases``) trains each phase in
``<train.output_dir>/<phase>`` starting from the previous phase's final checkpoint, skips finished
phases, and resumes an interrupted one with ``--resume``. A phase that has not finished but holds checkpoints of an
earlier run (a killed one) is refused without ``--resume``; ``--restart`` trains it again from its beginning instead,
removing those checkpoints first (finished phases are still skipped: delete a phase's ``phase_done.json`` to train
it again). Overrides ``phases.NAME.key=value`` change
one phase; other overrides change the root ``train`` and every phase holding the key. An override must
name an existing key (``+key=value`` adds a new one). A config without ``phases`` (a
one-phase project, or any Detectron2 LazyConfig) trains in ``train.output_dir`` as Detectron2's
own script does. On a Slurm cluster, scripts/slurm_launch.py submits the same command line.

One run per output folder: the run holds ``<train.output_dir>/run.lock`` while it runs, and a second run on the
folder is refused, naming the first (host, pid, command, start time). A lock left by a process of this host that is
gone is taken over with a warning; one of another host only with ``--force-lock`` (or ``LTDET2_FORCE_LOCK=1``), once
that run is known to be gone (see ltdet2.engine.launch.RunLock).

A YAML (yacs) config (``MODEL:``, ``_BASE_:`` ...) is refused in one line naming scripts/train_net.py, which trains
those; a ``config.yaml`` that a LazyConfig run saved loads. Every run ends with one line naming where its outputs are
(the output folder, ``model_final.pth``, ``metrics.json`` with the final evaluation's metrics at the last iteration,
the evaluation results), and ``--eval-only`` appends its metrics to ``eval_only_metrics.json`` in the phase's folder.

To stop a run so that it continues later exactly where it stopped, send it SIGUSR2 (``kill -USR2 PID``, or
``pkill -USR2 -f lazyconfig_train_net.py``): it saves a checkpoint of the iteration it is in, logs its path and exits
with status 75 (ltdet2.engine.launch.INTERRUPTED_EXIT_STATUS); ``--resume`` continues from it. A phase whose periodic
evaluation was cut short evaluates it first (ltdet2.engine.train_loop.EvalHook). With several processes
(``--num-gpus``), the launcher passes the signal on to them.
"""

import logging
import os
import sys

from torch.multiprocessing import ProcessExitedException

from detectron2.engine import default_argument_parser, launch

from ltdet2.engine.launch import (
    INTERRUPTED_EXIT_STATUS,
    checkpoint_to_evaluate,
    forward_stop_signal_to_children,
    split_flags_from_overrides,
    train_main_until_stopped,
)
from ltdet2.engine.project_config import yacs_config_problem

logger = logging.getLogger("detectron2")
__all__ = ["argument_parser", "parse_args", "checkpoint_to_evaluate", "main", "invoke_main"]


def argument_parser():
    parser = default_argument_parser(__doc__)
    parser.add_argument("--phase", default=None, help="run (or evaluate) only this phase of the project")
    parser.add_argument(
        "--restart",
        action="store_true",
        help="train the phases that have not finished from their beginning, removing the checkpoints an earlier run "
        "left in their folders (without it, or --resume, such a phase is refused)",
    )
    parser.add_argument(
        "--force-lock",
        action="store_true",
        help="take over the output folder's lock (run.lock) whoever holds it: for the lock of a run on another "
        "machine that is gone (a lock of this machine whose process is gone is taken over without it)",
    )
    return parser


def parse_args(argv=None):
    """Parses the command line; flags may also follow the ``key=value`` overrides (Detectron2's parser
    hands everything after the first override to ``opts``): they are taken out of ``opts`` here."""
    parser = argument_parser()
    args = parser.parse_args(argv)
    overrides, flags = split_flags_from_overrides(parser, args.opts)
    if flags:
        parser.parse_args(flags, namespace=args)
    args.opts = overrides
    problem = yacs_config_problem(args.config_file) if args.config_file else None
    if problem:  # a YAML (yacs) config: one line naming the script that trains it, before anything starts
        parser.exit(2, f"{os.path.basename(__file__)}: error: {problem}\n")
    if args.resume and args.restart:
        parser.error(
            "--resume and --restart: choose one (--resume continues the phases that have not finished from their "
            "checkpoints, --restart trains them again from their beginning)"
        )
    return args


def main(args):
    return train_main_until_stopped(args)


def invoke_main():
    args = parse_args()
    if args.num_gpus * args.num_machines > 1:  # Detectron2's launch trains in child processes
        forward_stop_signal_to_children()
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except ProcessExitedException as e:  # a child stopped on request: the launcher exits as a single process would
        if e.exit_code != INTERRUPTED_EXIT_STATUS:
            raise
        sys.exit(INTERRUPTED_EXIT_STATUS)


if __name__ == "__main__":
    invoke_main()
