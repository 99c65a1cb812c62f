"""Checkpoints that survive a kill: atomic saves, max_to_keep across a resume, and a resume that
falls back to the newest intact checkpoint when the last one is damaged."""

import logging
import os
from types import SimpleNamespace

import pytest
import torch

from ltdet2.engine.checkpoint import AtomicCheckpointer, PeriodicCheckpointer


class Progress:
    """A checkpointable holding the iteration, as Detectron2's trainer does."""

    def __init__(self):
        self.iter = -1

    def state_dict(self):
        return {"iteration": self.iter}

    def load_state_dict(self, state):
        self.iter = state["iteration"]


def checkpointer_in(folder):
    torch.manual_seed(0)
    progress = Progress()
    return AtomicCheckpointer(torch.nn.Linear(3, 2), str(folder), trainer=progress), progress


def save_iterations(folder, iterations):
    checkpointer, progress = checkpointer_in(folder)
    for iteration in iterations:
        progress.iter = iteration
        with torch.no_grad():
            checkpointer.model.bias.fill_(iteration)
        checkpointer.save(f"model_{iteration:07d}")
    return checkpointer


def last_checkpoint(folder):
    with open(os.path.join(folder, "last_checkpoint")) as f:
        return f.read()


def test_a_save_killed_midway_leaves_the_earlier_checkpoints_whole(tmp_path, monkeypatch):
    checkpointer = save_iterations(tmp_path, [1])
    real_save = torch.save
    at_the_kill = {}

    def killed_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        f.flush()
        # what the folder holds if the process dies now (no clean-up runs after a kill)
        at_the_kill.update(files=sorted(os.listdir(tmp_path)), tag=last_checkpoint(tmp_path))
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_save)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_0000002")
    monkeypatch.setattr(torch, "save", real_save)
    assert at_the_kill == {
        "files": [".tmp-model_0000002.pth", "last_checkpoint", "model_0000001.pth"],
        "tag": "model_0000001.pth",
    }
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert last_checkpoint(tmp_path) == "model_0000001.pth"
    assert torch.load(tmp_path / "model_0000001.pth", weights_only=False)["trainer"]["iteration"] == 1

    checkpointer.save("model_0000002")
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth", "model_0000002.pth"]
    assert last_checkpoint(tmp_path) == "model_0000002.pth"


def test_resume_keeps_max_to_keep_with_the_checkpoints_of_the_interrupted_run(tmp_path):
    checkpointer = save_iterations(tmp_path, [0, 1, 2, 3, 4])  # an interrupted run kept them all
    hook = PeriodicCheckpointer(checkpointer, period=1, max_to_keep=2)
    hook.trainer = SimpleNamespace(start_iter=5, iter=5, max_iter=10)
    hook.before_train()
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000003.pth", "model_0000004.pth"]
    hook.step(5)
    hook.step(6)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000005.pth", "model_0000006.pth"]


def test_kept_checkpoints_are_neither_removed_nor_counted_in_max_to_keep(tmp_path):
    checkpointer = save_iterations(tmp_path, [1, 3, 5, 7])  # period 2: saved after iterations 1, 3, 5, 7
    hook = PeriodicCheckpointer(checkpointer, period=2, max_to_keep=1, keep=[3])
    hook.trainer = SimpleNamespace(start_iter=8, iter=8, max_iter=20)
    hook.before_train()  # a resume: the interrupted run's newest one, and the kept one
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000003.pth", "model_0000007.pth"]
    hook.step(9)
    hook.step(11)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000003.pth", "model_0000011.pth"]
    with pytest.raises(ValueError, match=r"keep=\[4\]: no checkpoint is saved after iterations \[4\] \(train"):
        PeriodicCheckpointer(checkpointer, period=2, max_to_keep=1, keep=[4])


def resume(folder):
    checkpointer, progress = checkpointer_in(folder)
    checkpointer.resume_or_load("", resume=True)
    return progress.iter, checkpointer.model.bias[0].item()


@pytest.fixture
def logged(caplog):
    caplog.set_level(logging.WARNING, logger="detectron2")
    return caplog


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_resume_from_a_damaged_last_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, logged, damage):
    save_iterations(tmp_path, [1, 3, 5])
    path = tmp_path / "model_0000005.pth"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a checkpoint at all")
    assert resume(tmp_path) == (3, 3.0)
    assert (
        f"last_checkpoint names {path}, which cannot be read: resumed from {tmp_path / 'model_0000003.pth'}"
        in logged.text
    )


@pytest.mark.parametrize("tag", ["", "\x00\x17garbage", "model_0000009.pth"])
def test_resume_with_an_empty_or_garbage_last_checkpoint_takes_the_newest_intact_one(tmp_path, logged, tag):
    save_iterations(tmp_path, [1, 3])
    (tmp_path / "last_checkpoint").write_text(tag)
    assert resume(tmp_path) == (3, 3.0)
    assert "not the name of a checkpoint in the folder" in logged.text
    assert f"resumed from {tmp_path / 'model_0000003.pth'}" in logged.text


def test_resume_prefers_the_tagged_checkpoint_and_final_is_newest(tmp_path):
    save_iterations(tmp_path, [1, 3])
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")  # e.g. chosen by hand
    assert resume(tmp_path) == (1, 1.0)
    checkpointer = save_iterations(tmp_path, [7])
    checkpointer.save("model_final")
    (tmp_path / "last_checkpoint").write_text("")
    assert resume(tmp_path) == (7, 7.0)


def test_resume_with_no_intact_checkpoint_names_the_files_to_remove(tmp_path):
    save_iterations(tmp_path, [1, 3])
    for name in ("model_0000001.pth", "model_0000003.pth"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(
        RuntimeError,
        match=r"no checkpoint there can be read \(damaged: \[.*model_0000003.pth.*"
        r"model_0000001.pth.*\]\). Remove them and .*last_checkpoint",
    ):
        resume(tmp_path)
    for name in ("model_0000001.pth", "model_0000003.pth"):
        os.remove(tmp_path / name)
    with pytest.raises(
        RuntimeError,
        match=r"last_checkpoint names no checkpoint in the folder and there is none. "
        r"Remove .*last_checkpoint",
    ):
        resume(tmp_path)
