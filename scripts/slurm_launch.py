#!/usr/bin/env python
"""Submits an ltdet2 training (a project with phases, or any LazyConfig) to Slurm, through submitit.

    python scripts/slurm_launch.py --config-file projects/loce_lvis_v1.py \
        --nodes 1 --gpus-per-node 8 --partition gpu --timeout 1440 [--resume | --restart] [--phase NAME] [key=value ...]

The training script's arguments (``--config-file``, ``--phase``, ``--resume``, ``--restart``, ``--eval-only`` and the
``key=value`` overrides, checked before submitting) plus the job's resources: one task per GPU
(``--gpus-per-node``), or ``--gpus-per-node 0 --tasks-per-node N`` for N CPU processes joined with gloo.
``--account``, ``--qos``, ``--constraint``, ``--comment`` and ``--slurm-option KEY=VALUE`` (any sbatch
option) pass through to sbatch.

On preemption or time-out the job saves a checkpoint, requeues itself (at most ``--max-requeues``
times) and continues with ``--resume`` (a job submitted with ``--restart`` restarts its unfinished phases once, when it
first starts, and resumes when requeued). Logs: the run's output folder (``train.output_dir``); Slurm's
and submitit's files in its ``slurm/`` folder (or ``--job-dir``). See ltdet2.engine.launch_slurm.

Exit status: 0 submitted; 2 refused (nothing submitted, nothing left behind); 3 sbatch exited 0 but printed no job
id: the job may be queued (the submission is recorded in ``slurm/launch.json`` with its job id unknown).
"""

import argparse
import os
import sys

from ltdet2.engine.launch import split_flags_from_overrides
from ltdet2.engine.launch_slurm import (
    DEFAULT_MAX_REQUEUES,
    SlurmLaunchError,
    SubmittedWithoutJobId,
    describe_submission,
    submit,
)


def argument_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    train = parser.add_argument_group("training (as scripts/lazyconfig_train_net.py)")
    train.add_argument("--config-file", required=True, metavar="FILE", help="path to the (project) config file")
    train.add_argument("--phase", default=None, help="run (or evaluate) only this phase of the project")
    train.add_argument("--resume", action="store_true", help="continue the run in the output folder")
    train.add_argument(
        "--restart",
        action="store_true",
        help="train the unfinished phases from their beginning, removing their earlier checkpoints (a requeued job "
        "resumes instead)",
    )
    train.add_argument("--eval-only", action="store_true", help="evaluate the phases' final checkpoints")
    train.add_argument("opts", nargs=argparse.REMAINDER, help="key=value overrides of the config")
    slurm = parser.add_argument_group("Slurm job")
    slurm.add_argument("--nodes", type=int, default=1, help="number of nodes (default 1)")
    slurm.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node, one task each (default 8)")
    slurm.add_argument(
        "--tasks-per-node",
        type=int,
        default=None,
        help="processes per node: the number of GPUs (the default), or with --gpus-per-node 0 CPU processes (gloo)",
    )
    slurm.add_argument("--cpus-per-task", type=int, default=8, help="CPU cores per task (default 8)")
    slurm.add_argument("--mem", default=None, help="memory per node, in sbatch's syntax (64G, 0 = all)")
    slurm.add_argument("--timeout", type=int, default=24 * 60, help="time limit of each run in minutes (default 1440)")
    slurm.add_argument("--partition", default=None)
    slurm.add_argument("--account", default=None)
    slurm.add_argument("--qos", default=None)
    slurm.add_argument("--constraint", default=None)
    slurm.add_argument("--comment", default=None)
    slurm.add_argument(
        "--slurm-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other sbatch option (repeatable), e.g. --slurm-option exclude=node7",
    )
    slurm.add_argument("--job-name", default=None, help="Slurm job name (default: ltdet2-<config file name>)")
    slurm.add_argument(
        "--job-dir", default=None, help="Slurm logs and submitit files (default: <train.output_dir>/slurm)"
    )
    slurm.add_argument(
        "--max-requeues",
        type=int,
        default=DEFAULT_MAX_REQUEUES,
        help=f"requeues after preemption or time-out before the job stops (default {DEFAULT_MAX_REQUEUES})",
    )
    return parser


def parse_args(argv=None):
    """Parses and checks the command line; flags may also follow the ``key=value`` overrides."""
    parser = argument_parser()
    args = parser.parse_args(argv)
    overrides, flags = split_flags_from_overrides(parser, args.opts)
    if flags:
        parser.parse_args(["--config-file", args.config_file, *flags], namespace=args)
    args.opts = overrides
    check_args(parser, args)
    return args


def check_args(parser, args):
    if args.resume and args.restart:
        parser.error("--resume and --restart: choose one (continue the unfinished phases, or train them again)")
    if not os.path.isfile(args.config_file):
        parser.error(f"--config-file {args.config_file}: no such file")
    args.config_file = os.path.abspath(args.config_file)
    if args.nodes < 1:
        parser.error(f"--nodes must be at least 1, got {args.nodes}")
    if args.gpus_per_node < 0:
        parser.error(f"--gpus-per-node must be 0 (CPU processes) or more, got {args.gpus_per_node}")
    if args.tasks_per_node is None:
        args.tasks_per_node = args.gpus_per_node or 1
    if args.gpus_per_node and args.tasks_per_node != args.gpus_per_node:
        parser.error(
            f"--tasks-per-node {args.tasks_per_node} with --gpus-per-node {args.gpus_per_node}: one task per GPU "
            f"(leave --tasks-per-node out)"
        )
    if args.tasks_per_node < 1:
        parser.error(f"--tasks-per-node must be at least 1, got {args.tasks_per_node}")
    if args.timeout < 1:
        parser.error(f"--timeout is in minutes and must be at least 1, got {args.timeout}")
    if args.max_requeues < 0:
        parser.error(f"--max-requeues must be 0 or more, got {args.max_requeues}")
    for item in args.slurm_option:
        if not item.partition("=")[0].lstrip("-"):
            parser.error(f"--slurm-option {item!r}: write KEY=VALUE (or KEY for a flag)")
    if args.job_name is None:
        args.job_name = "ltdet2-" + os.path.splitext(os.path.basename(args.config_file))[0]


def main(argv=None):
    args = parse_args(argv)
    try:
        job_id, job_folder, output_dir = submit(args)
    except SubmittedWithoutJobId as e:  # not refused: the job may be queued
        print(f"slurm_launch.py: {e}", file=sys.stderr)
        return 3
    except (SlurmLaunchError, ValueError, FileNotFoundError) as e:
        print(f"slurm_launch.py: error: {e}", file=sys.stderr)
        return 2
    print(describe_submission(job_id, job_folder, output_dir, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
