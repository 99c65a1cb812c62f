"""Tracebacks and silences (issue #26): what used to pass without a word or stop with a message that did not say what
went wrong or what to do: a changed config of a finished phase, a teacher or expansion checkpoint of another class
count, a rerun without --resume over an interrupted run's checkpoints, a divergence, missing dataset files, a total
batch that does not divide among the processes, an sbatch without a job id, and the temporary files of interrupted
writes. Tiny LT-Shapes on CPU; the phases have no evaluator, except where said."""

import itertools
import json
import os
import re
import shutil
import stat
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp
from omegaconf import OmegaConf
from torch import nn

from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_lvis_instances

from ltdet2.engine import phases as phases_module
from ltdet2.engine import train_loop
from ltdet2.engine.launch_slurm import RUN_RECORD
from ltdet2.engine.phases import DONE_FILE, run_phases
from ltdet2.modeling import TeacherStudentRCNN

from fixtures.distributed import free_port
from fixtures.models import ROOT, TINY_LT_SHAPES, load_repo_module, small_model_cfg
from fixtures.runs import PROJECT, load_tiny_run

load = load_tiny_run  # the tiny two-phase run (fixtures.runs); `trained`: tests/engine/conftest.py


def linked_copy_of(trained, tmp_path):
    """A copy of the run whose checkpoints are hard links (a checkpoint is replaced by a rename, never written in
    place); the other files are copied (metrics.json is appended to)."""
    out = str(tmp_path / "run")
    shutil.copytree(
        trained, out, copy_function=lambda src, dst: (os.link if src.endswith(".pth") else shutil.copy2)(src, dst)
    )
    return out


def with_finished_pretrain(pretrain_dir, tmp_path):
    """A run folder whose finished 'pretrain' is ``pretrain_dir`` (linked: only read, since the phase is skipped)."""
    out = tmp_path / "run"
    out.mkdir(parents=True)
    os.symlink(pretrain_dir, out / "pretrain")
    return str(out)


@pytest.fixture
def trainings(monkeypatch):
    """The output folders do_train was called for (it still trains)."""
    called = []
    do_train = phases_module.do_train

    def recording_do_train(cfg, *, resume=False):
        called.append(cfg.train.output_dir)
        return do_train(cfg, resume=resume)

    monkeypatch.setattr(phases_module, "do_train", recording_do_train)
    return called


def state_of(num_classes):
    model_cfg = small_model_cfg()
    model_cfg.roi_heads.num_classes = num_classes
    torch.manual_seed(0)
    return {"model": instantiate(model_cfg).state_dict()}


# --- 1. a changed config of a finished phase ----------------------------------------------------------------


def test_a_finished_phase_whose_config_changed_is_skipped_with_a_warning_naming_the_keys(
    trained, tmp_path, tiny_dataset, messages
):
    out = with_finished_pretrain(os.path.join(trained, "pretrain"), tmp_path)
    run_phases(load(out, tiny_dataset, "train.device=cpu"), only="pretrain")  # the same config (and runner's keys)
    assert any("phase 'pretrain' already finished" in m for m in messages)
    assert not [m for m in messages if "has changed" in m]

    changed = ("phases.pretrain.optimizer.lr=0.5", "phases.pretrain.train.max_iter=6", "phases.finetune.train.seed=9")
    results = run_phases(load(out, tiny_dataset, *changed), only="pretrain")
    assert list(results) == ["pretrain"]  # still skipped
    [warning] = [m for m in messages if "has changed" in m]
    assert "phase 'pretrain' already finished, and its config has changed since it trained" in warning
    assert os.path.join(out, "pretrain", "config.yaml") in warning
    assert "optimizer.lr: 0.02 -> 0.5" in warning and "train.max_iter: 4 -> 6" in warning
    assert "seed" not in warning and "init_checkpoint" not in warning and "output_dir" not in warning
    assert f"delete {os.path.join(out, 'pretrain', DONE_FILE)} and run with --restart" in warning


@pytest.mark.parametrize("config_yaml", ["missing", "not yaml", "a list"])
def test_a_finished_phase_whose_config_cannot_be_read_is_skipped_without_an_error(tmp_path, tiny_dataset, config_yaml):
    pretrain = tmp_path / "run" / "pretrain"
    pretrain.mkdir(parents=True)
    (pretrain / "model_final.pth").write_bytes(b"")
    (pretrain / DONE_FILE).write_text(json.dumps({"results": {"bbox": {"AP": 1.0}}, "input_checkpoint": None}))
    if config_yaml != "missing":
        (pretrain / "config.yaml").write_text("model: {a: [1, 2\n" if config_yaml == "not yaml" else "- 1\n- 2\n")
    assert run_phases(load(tmp_path / "run", tiny_dataset), only="pretrain") == {"pretrain": {"bbox": {"AP": 1.0}}}


# --- 2. a teacher or expansion checkpoint of another class count ---------------------------------------------


class NoDistillation(nn.Module):
    """A distillation term that adds nothing (the teacher is built all the same)."""

    def forward(self, context):
        return {"loss_no_distillation": sum(f.sum() for f in context.teacher_features.values()) * 0.0}


@pytest.fixture(scope="module")
def three_class_pretrain(trained, tmp_path_factory):
    """A finished 'pretrain' whose model_final holds 3 classes (the config: 8)."""
    pretrain = tmp_path_factory.mktemp("three_classes") / "pretrain"
    pretrain.mkdir()
    for name in (DONE_FILE, "config.yaml"):
        shutil.copy(os.path.join(trained, "pretrain", name), pretrain / name)
    torch.save(state_of(3), pretrain / "model_final.pth")
    return str(pretrain)


def test_a_teacher_checkpoint_of_another_class_count_is_refused_before_training(
    three_class_pretrain, tmp_path, tiny_dataset, trainings
):
    out = with_finished_pretrain(three_class_pretrain, tmp_path)
    cfg = load(out, tiny_dataset)
    finetune = cfg.phases.finetune
    finetune.model._target_ = TeacherStudentRCNN
    finetune.model.teacher = None  # the runner copies pretrain's model config (8 classes)
    finetune.model.teacher_weights = None
    finetune.model.distillers = [L(NoDistillation)()]
    finetune.train.teacher_from_phase = "pretrain"
    finetune.train.init_from_phase = ""
    with pytest.raises(
        ValueError,
        match=r"phase 'finetune': its teacher's checkpoint .*pretrain/model_final.pth \(model.teacher_weights\) does "
        r"not fit model.teacher, which has 8 classes \(model.teacher.roi_heads.num_classes\): "
        r"roi_heads.box_predictor.cls_score.weight: \(4, \d+\) in the checkpoint, 9 rows for 8 classes;.*"
        r"was phase 'pretrain' trained with another class count",
    ):
        run_phases(cfg)
    assert trainings == []


def test_a_teacher_built_from_a_checkpoint_of_another_shape_names_the_shapes(tmp_path):
    path = str(tmp_path / "three_classes.pth")
    torch.save(state_of(3), path)
    model_cfg = small_model_cfg()  # 6 classes
    model_cfg._target_ = TeacherStudentRCNN
    model_cfg.teacher = small_model_cfg()
    model_cfg.teacher_weights = path
    model_cfg.distillers = [L(NoDistillation)()]
    model = instantiate(model_cfg)
    with pytest.raises(
        ValueError,
        match=r"teacher checkpoint .*three_classes.pth does not fit the teacher model \(model.teacher\): 4 entries "
        r"have another shape \(roi_heads.box_predictor.cls_score.weight: \(4, \d+\) in the checkpoint, \(7, \d+\) in "
        r"the teacher",
    ):
        model.teacher_model()


def test_an_expansion_checkpoint_of_another_class_count_is_refused_before_training(
    three_class_pretrain, tmp_path, tiny_dataset, trainings
):
    out = with_finished_pretrain(three_class_pretrain, tmp_path)
    cfg = load(
        out,
        tiny_dataset,
        "phases.finetune.train.hooks=[{_target_: ltdet2.modeling.expansion.ClassExpansion, old_num_classes: 4}]",
    )
    with pytest.raises(
        ValueError,
        match=r"phase 'finetune': train.init_checkpoint .*pretrain/model_final.pth: the checkpoint's classifier has 3 "
        r"classes; ClassExpansion \(train.hooks\) expects the previous phase's 4 classes \(expanded to this phase's "
        r"8\) or 8. "
        r"Its class rows: roi_heads.box_predictor.cls_score.weight \(4, \d+\): 3 classes; "
        r"roi_heads.box_predictor.cls_score.bias \(4,\): 3 classes",
    ):
        run_phases(cfg)
    assert trainings == []


# --- 3. a rerun without --resume over an interrupted run's checkpoints ---------------------------------------


def test_a_rerun_without_resume_over_checkpoints_is_refused_and_restart_starts_over(
    tmp_path, tiny_dataset, messages, script
):
    pretrain = tmp_path / "run" / "pretrain"
    pretrain.mkdir(parents=True)
    earlier = {"model_0000001.pth": b"weights 1", "model_0000003.pth": b"weights 3", "last_checkpoint": b"x"}
    for name, content in earlier.items():  # what a killed run left (refused before anything reads them)
        (pretrain / name).write_bytes(content)
    with pytest.raises(
        RuntimeError,
        match=r"phase 'pretrain': .*/run/pretrain holds checkpoints of an earlier run \(model_0000003.pth, "
        r"model_0000001.pth, last_checkpoint\), which training without --resume would start again from iteration 0 "
        r"and overwrite. Run again with --resume to continue from the newest one \(finished phases are skipped\), or "
        r"with --restart",
    ):
        run_phases(load(tmp_path / "run", tiny_dataset), only="pretrain")
    assert {name: (pretrain / name).read_bytes() for name in earlier} == earlier
    with pytest.raises(ValueError, match="--resume and --restart: choose one"):
        run_phases(load(tmp_path / "run", tiny_dataset), only="pretrain", resume=True, restart=True)

    run_phases(load(tmp_path / "run", tiny_dataset), only="pretrain", restart=True)
    assert any("phase 'pretrain': --restart: removed the checkpoints of an earlier run" in m for m in messages)
    assert any("Starting training from iteration 0" in m for m in messages)
    assert (pretrain / DONE_FILE).is_file() and (pretrain / "model_final.pth").is_file()
    assert torch.load(pretrain / "model_0000003.pth", weights_only=False)["iteration"] == 3  # this run's

    args = script.parse_args(["--config-file", PROJECT, "train.max_iter=5", "--restart"])
    assert args.restart and not args.resume and args.opts == ["train.max_iter=5"]


@pytest.fixture(scope="module")
def script():
    return load_repo_module("scripts/lazyconfig_train_net.py")


def test_the_script_refuses_resume_with_restart(script, capsys):
    with pytest.raises(SystemExit):
        script.parse_args(["--config-file", PROJECT, "--resume", "--restart"])
    assert "--resume and --restart: choose one" in capsys.readouterr().err


# --- 4. a divergence ----------------------------------------------------------------------------------------


def poison(monkeypatch, module_name, *, training_from_iter=None, evaluation=False):
    """Makes the first output of ``model.<module_name>`` NaN in training from iteration ``training_from_iter`` on
    and/or in evaluation."""
    from detectron2.utils.events import get_event_storage

    def hook(module, inputs, output):
        if module.training:
            poisoned = training_from_iter is not None and get_event_storage().iter >= training_from_iter
        else:
            poisoned = evaluation
        if not poisoned:
            return output
        first = output[0]
        first = [o * float("nan") for o in first] if isinstance(first, list) else first * float("nan")
        return (first, *output[1:])

    build_model = train_loop.build_model

    def build_poisoned_model(cfg):
        model = build_model(cfg)
        model.get_submodule(module_name).register_forward_hook(hook)
        return model

    monkeypatch.setattr(train_loop, "build_model", build_poisoned_model)


def test_a_divergence_found_by_the_models_checks_names_the_iteration_and_the_last_losses(
    tmp_path, tiny_dataset, monkeypatch
):
    # NaN objectness: Detectron2's RPN raises "Predicted boxes or scores contain Inf/NaN" before any loss is computed
    poison(monkeypatch, "proposal_generator.rpn_head", training_from_iter=1)
    out = tmp_path / "run"
    with pytest.raises(
        FloatingPointError,
        match=r"phase 'pretrain' diverged \(not marked done\): training diverged at iteration 1: Predicted boxes or "
        r"scores contain Inf/NaN. Training has diverged. \(the loss terms at iteration 0: loss_cls=[0-9.e+-]+, "
        r"loss_box_reg=[0-9.e+-]+, loss_rpn_cls=[0-9.e+-]+, loss_rpn_loc=[0-9.e+-]+\)",
    ) as stopped:
        run_phases(load(out, tiny_dataset, "train.max_iter=3"), only="pretrain")
    cause = stopped.value.__cause__
    assert isinstance(cause, train_loop.TrainingDiverged) and cause.iteration == 1 and cause.losses_iteration == 0
    assert not (out / "pretrain" / DONE_FILE).exists()


def test_an_empty_evaluation_of_non_finite_predictions_says_the_run_diverged(tmp_path, tiny_dataset, monkeypatch):
    poison(monkeypatch, "roi_heads.box_predictor", evaluation=True)  # Detectron2 drops the non-finite boxes
    out = tmp_path / "run"
    with pytest.raises(
        FloatingPointError,
        match=r"phase 'pretrain' diverged \(not marked done\): the evaluation of .*pretrain/model_final.pth found "
        r"nothing \(every bbox metric is NaN\) because the model's outputs are NaN or infinite \(first in "
        r"roi_heads.box_predictor, on the first test batch\). Train it again from its beginning \(--restart\)",
    ) as stopped:
        run_phases(load(out, tiny_dataset, "train.max_iter=1", evaluator=True), only="pretrain")
    assert "allow_empty_eval" not in str(stopped.value)
    assert not (out / "pretrain" / DONE_FILE).exists()


# --- 5. missing dataset files ---------------------------------------------------------------------------------

_registrations = itertools.count()


@pytest.fixture
def unreachable_lvis(tmp_path, monkeypatch):
    """A dataset registered as Detectron2 registers LVIS v1 train without $DETECTRON2_DATASETS (relative paths under
    ./datasets), run from a folder that has no datasets/."""
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    monkeypatch.chdir(tmp_path)
    name = f"ltdet2_tests_unreachable_lvis_{next(_registrations)}"
    register_lvis_instances(name, {}, "datasets/lvis/lvis_v1_train.json", "datasets/coco/")
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


@pytest.fixture
def built_models(monkeypatch):
    built = []
    build_model = train_loop.build_model
    monkeypatch.setattr(train_loop, "build_model", lambda cfg: built.append(cfg) or build_model(cfg))
    monkeypatch.setattr(phases_module, "build_model", lambda cfg: built.append(cfg) or build_model(cfg))
    return built


def test_missing_dataset_files_name_the_path_the_dataset_and_detectron2_datasets(
    trained, tmp_path, tiny_dataset, unreachable_lvis, built_models
):
    cwd = os.getcwd()  # the fixture's: tmp_path
    json_file = os.path.join(cwd, "datasets", "lvis", "lvis_v1_train.json")
    with pytest.raises(
        FileNotFoundError,
        match=rf"phase 'pretrain': dataset '{unreachable_lvis}' reads its json_file datasets/lvis/lvis_v1_train.json "
        rf"\(from {re.escape(cwd)}: {re.escape(json_file)}\), which does not exist. Detectron2 registers its built-in "
        r"datasets .* under \$DETECTRON2_DATASETS, read when detectron2.data is imported; "
        r"\$DETECTRON2_DATASETS is not set",
    ):
        run_phases(load(tmp_path / "run", tiny_dataset, f"dataloader.train.dataset.names={unreachable_lvis}"))
    assert built_models == []

    # evaluation only: its test set, before the model is built
    out = with_finished_pretrain(os.path.join(trained, "pretrain"), tmp_path / "eval")
    with pytest.raises(FileNotFoundError, match=rf"dataset '{unreachable_lvis}' reads its json_file .*DETECTRON2"):
        run_phases(
            load(out, tiny_dataset, f"dataloader.test.dataset.names={unreachable_lvis}"),
            only="pretrain",
            eval_only=True,
        )
    assert built_models == []


def test_a_builtin_lvis_without_its_files_names_detectron2_datasets(tmp_path, tiny_dataset, built_models):
    json_file = MetadataCatalog.get("lvis_v1_train").json_file
    if os.path.exists(json_file):
        pytest.skip(f"LVIS v1 is here ({json_file})")
    overrides = (
        "dataloader.train.dataset.names=lvis_v1_train",
        "dataloader.test.dataset.names=lvis_v1_val",
        "model.roi_heads.num_classes=1203",
    )
    with pytest.raises(FileNotFoundError, match=r"dataset 'lvis_v1_train' reads its json_file .*\$DETECTRON2_DATASETS"):
        run_phases(load(tmp_path / "run", tiny_dataset, *overrides), only="pretrain")
    assert built_models == []


# --- 6. a total batch that does not divide among the processes ------------------------------------------------


def _batch_worker(rank, port, data_root, out):
    from ltdet2.data import register_lt_shapes
    from ltdet2.engine import launch

    torch.set_num_threads(1)
    names = register_lt_shapes(root=data_root, seed=3, spec=TINY_LT_SHAPES, name_prefix="lt_shapes_e2e")
    launch.init_process_group(
        rank=rank, world_size=2, local_rank=rank, local_world_size=2, dist_url=f"tcp://127.0.0.1:{port}", use_gpu=False
    )
    try:
        cfg = load(os.path.join(out, "run"), names, "dataloader.train.total_batch_size=3")
        run_phases(cfg, only="pretrain")
        outcome = "trained"
    except Exception as e:
        outcome = f"{type(e).__name__}: {e}"
    finally:
        launch.close_process_group()
    with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
        f.write(outcome)


def test_a_total_batch_that_does_not_divide_among_the_processes_names_both_numbers(tmp_path, tiny_dataset):
    data_root = MetadataCatalog.get(tiny_dataset[0]).image_root
    mp.spawn(_batch_worker, args=(free_port(), data_root, str(tmp_path)), nprocs=2)
    expected = "ValueError: phase 'pretrain': dataloader.train.total_batch_size=3 does not divide among the 2 "
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.txt").read_text().startswith(expected + "training processes")
    assert not (tmp_path / "run" / "pretrain").exists()  # refused before anything was written


# --- 7. the Slurm launcher: an sbatch without a job id, a failed one ------------------------------------------


@pytest.fixture
def slurm_with(tmp_path, monkeypatch):
    """Puts fake Slurm commands on the PATH, sbatch running the given shell line; returns the launcher's functions."""

    def install(sbatch):
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        for tool, line in (("sbatch", sbatch), ("srun", ""), ("sinfo", "printf 'debug\\n'"), ("squeue", "")):
            path = bin_dir / tool
            path.write_text(f"#!/bin/sh\n{line}\n")
            path.chmod(path.stat().st_mode | stat.S_IEXEC)
        monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
        return SimpleNamespace(**__import__("runpy").run_path(os.path.join(ROOT, "scripts", "slurm_launch.py")))

    return install


def test_an_sbatch_without_a_job_id_is_not_refused_and_is_recorded(tmp_path, slurm_with, capsys):
    script = slurm_with('echo "queued somewhere"')
    output_dir = tmp_path / "run"
    argv = ["--config-file", PROJECT, "--gpus-per-node", "0", f"train.output_dir={output_dir}"]
    assert script.main(argv) == 3
    err = capsys.readouterr().err
    assert "sbatch accepted the job (exit status 0) but printed no job id ('queued somewhere')" in err
    assert "it may be queued" in err and "refused" not in err
    record = json.loads((output_dir / "slurm" / RUN_RECORD).read_text())
    [job] = record["jobs"]
    assert job["job_id"] is None and job["sbatch_output"] == "queued somewhere"
    assert all(os.path.isfile(path) for path in job["submission_files"]) and job["submission_files"]

    # the next submission of this run is not blocked by the unknown job id
    script = slurm_with('echo "Submitted batch job 4243"')
    assert script.main([*argv, "--resume"]) == 0
    record = json.loads((output_dir / "slurm" / RUN_RECORD).read_text())
    assert [job["job_id"] for job in record["jobs"]] == [None, "4243"]


def test_a_failed_submission_leaves_no_submitit_files(tmp_path, slurm_with, capsys):
    script = slurm_with('echo "sbatch: error: invalid account" >&2; exit 1')
    output_dir = tmp_path / "run"
    argv = ["--config-file", PROJECT, "--gpus-per-node", "0", f"train.output_dir={output_dir}"]
    assert script.main(argv) == 2
    assert "sbatch refused the job: sbatch: error: invalid account" in capsys.readouterr().err
    assert not (output_dir / "slurm").exists()

    (output_dir / "slurm").mkdir(parents=True)  # a job folder of earlier submissions: only this one's files go
    (output_dir / "slurm" / "17_submitted.pkl").write_bytes(b"an earlier job")
    assert script.main(argv) == 2
    assert os.listdir(output_dir / "slurm") == ["17_submitted.pkl"]


# --- 8. the temporary files of interrupted writes -------------------------------------------------------------


def test_temporary_files_of_interrupted_writes_are_removed_when_the_phase_starts_again(
    trained, tmp_path, tiny_dataset, messages
):
    out = linked_copy_of(trained, tmp_path)
    pretrain = os.path.join(out, "pretrain")
    os.remove(os.path.join(pretrain, "model_final.pth"))  # killed while saving it
    os.remove(os.path.join(pretrain, DONE_FILE))
    left = [
        ".tmp-model_final.pth",
        ".tmp-last_checkpoint",
        "rank_state/.tmp-model_0000003.rank1.pth",
        "phase_done.json.tmp.4242",
        "annotation_scores.pretrain.x.loss.npz.tmp.4242.npz",
        "inference/per_class_ap_bbox.json.tmp.77",
    ]
    kept = ["notes.tmp", "tmp-model.pth", "results.tmp.old", "deeper/.tmp-model_final.pth"]
    for name in left + kept:
        os.makedirs(os.path.dirname(os.path.join(pretrain, name)), exist_ok=True)
        with open(os.path.join(pretrain, name), "wb") as f:
            f.write(b"half")
    other_phase = os.path.join(out, "finetune", ".tmp-model_final.pth")
    os.makedirs(os.path.dirname(other_phase))
    with open(other_phase, "wb") as f:
        f.write(b"half")

    run_phases(load(out, tiny_dataset), only="pretrain", resume=True)

    assert [name for name in left if os.path.exists(os.path.join(pretrain, name))] == []
    assert all(os.path.isfile(os.path.join(pretrain, name)) for name in kept) and os.path.isfile(other_phase)
    [removed] = [m for m in messages if "temporary files left by interrupted writes" in m]
    assert removed.startswith("phase 'pretrain': removed 6 temporary files left by interrupted writes: [")
    assert all(repr(name) in removed for name in left)
    assert os.path.isfile(os.path.join(pretrain, "model_final.pth")) and os.path.isfile(
        os.path.join(pretrain, DONE_FILE)
    )


def test_the_keys_the_runner_fills_are_left_out_of_the_config_comparison(tmp_path):
    from detectron2.config import LazyConfig

    from ltdet2.engine.phase_checks import changed_config_keys
    from ltdet2.engine.phases import Phase

    cfg = OmegaConf.create({"train": {"output_dir": str(tmp_path), "init_checkpoint": "a.pth", "device": "cpu"}})
    LazyConfig.save(cfg, str(tmp_path / "config.yaml"))
    cfg.train.init_checkpoint, cfg.train.device = "b.pth", "cuda"
    cfg.train.new_option = None  # a key added to the configs since, unset: as before
    assert changed_config_keys(Phase("p", cfg, str(tmp_path))) == []
    cfg.train.lr = 0.1
    assert changed_config_keys(Phase("p", cfg, str(tmp_path)))[0][0] == "train.lr"
