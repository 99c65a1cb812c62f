"""The training script's command line: flags after the key=value overrides, and --eval-only with
nothing to evaluate."""

import os
import sys

import pytest

from ltdet2.engine.launch import train_command
from ltdet2.engine.phases import load_config, run_phases

from fixtures.models import ROOT, load_repo_module, tiny_run_overrides

SCRIPT = os.path.join(ROOT, "scripts", "lazyconfig_train_net.py")


@pytest.fixture(scope="module")
def script():
    return load_repo_module("scripts/lazyconfig_train_net.py")


def test_flags_after_the_overrides_are_flags(script):
    args = script.parse_args(
        [
            "--config-file",
            "projects/loce.py",
            "train.max_iter=5",
            "--resume",
            "phases.finetune.train.log_period=2",
            "--phase",
            "finetune",
            "--eval-only",
            "--num-gpus=1",
            "train.init_checkpoint=a.pth",
        ]
    )
    assert args.resume and args.eval_only and args.phase == "finetune" and args.num_gpus == 1
    assert args.opts == ["train.max_iter=5", "phases.finetune.train.log_period=2", "train.init_checkpoint=a.pth"]
    assert script.checkpoint_to_evaluate(args.opts) == "a.pth"

    args = script.parse_args(["--config-file", "projects/loce.py", "--resume", "train.max_iter=5"])
    assert args.resume and not args.eval_only and args.phase is None and args.opts == ["train.max_iter=5"]


def test_train_command_is_what_the_script_parses(script):
    command = train_command(SCRIPT, "projects/loce.py", seed=2, output_dir="out/s2", overrides=["a.b=1"], phase="x")
    assert command[:2] == [sys.executable, SCRIPT]
    args = script.parse_args(command[2:])
    assert args.resume and args.phase == "x" and args.config_file == "projects/loce.py"
    assert args.opts == ["train.seed=2", "train.output_dir=out/s2", "a.b=1"]
    assert "--phase" not in train_command(SCRIPT, "p.py", seed=0, output_dir="o")  # every phase


def test_unknown_flag_after_the_overrides_is_refused(script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(["--config-file", "projects/loce.py", "train.max_iter=5", "--no-such-flag"])
    assert exit_info.value.code != 0
    assert "--no-such-flag" in capsys.readouterr().err


def test_a_flag_among_overrides_given_to_load_config_says_where_flags_go():
    with pytest.raises(ValueError, match="'--resume' is a flag.*write flags before the overrides"):
        load_config(os.path.join(ROOT, "projects", "loce.py"), ["train.max_iter=5", "--resume"])


def test_eval_only_with_nothing_to_evaluate_fails(tmp_path, tiny_dataset):
    project = os.path.join(ROOT, "tests", "configs", "tiny_two_phase.py")
    cfg = load_config(project, tiny_run_overrides(tiny_dataset, str(tmp_path / "run")))
    with pytest.raises(
        FileNotFoundError,
        match=r"--eval-only: nothing to evaluate.*pretrain/model_final.pth.*"
        r"finetune/model_final.pth",
    ):
        run_phases(cfg, eval_only=True)
