"""A phase's own steps (``train.hooks``, the contract of ltdet2.engine.train_loop): Detectron2 hooks registered after
the standard ones, that see the phase config, the checkpointer and what the run resumed from, run before and after
training, are skipped or kept on a resume as they decide, and keep their state across a resume; initial-checkpoint
transforms applied to train.init_checkpoint and not to a resumed checkpoint; entries that are neither refused. The
method hooks of ltdet2.hooks (LOCE's warm-up, LST's phase-end write) check and skip as the engine did."""

import os
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from detectron2.config import LazyCall as L
from detectron2.engine import HookBase

from ltdet2.engine.phases import load_config
from ltdet2.engine.train_loop import build_phase_hooks, do_train, training_finished

from fixtures.models import ROOT, tiny_run_overrides

PROJECT = os.path.join(ROOT, "tests", "configs", "tiny_two_phase.py")
EVENTS = []  # what the hooks below saw, in order
PROBE = "roi_heads.box_predictor.cls_score.bias"  # a parameter the transform below shifts


class Recorder(HookBase):
    """Records what the engine gives a hook, and counts the iterations it saw in its own checkpointed state."""

    def __init__(self, name="recorder"):
        self.name = name
        self.steps = 0

    def before_train(self):
        trainer = self.trainer
        resumed = trainer.resumed_from and os.path.basename(trainer.resumed_from)
        EVENTS.append(
            {
                "event": "before_train",
                "name": self.name,
                "start_iter": trainer.start_iter,
                "resumed_from": resumed,
                "resumed_iteration": (trainer.resumed_checkpoint or {}).get("iteration"),
                "output_dir": trainer.cfg.train.output_dir,
                "checkpointer": type(trainer.checkpointer).__name__,
                "hooks": [type(h).__name__ for h in trainer._hooks],
                "steps": self.steps,
                "probe": trainer.model.state_dict()[PROBE].clone(),
            }
        )

    def before_step(self):  # counted before the periodic checkpointer's after_step saves this iteration
        self.steps += 1
        EVENTS.append({"event": "step", "name": self.name, "iter": self.trainer.iter})

    def after_train(self):
        final = os.path.join(self.trainer.cfg.train.output_dir, "model_final.pth")
        EVENTS.append(
            {
                "event": "after_train",
                "name": self.name,
                "iter": self.trainer.iter,
                "finished": training_finished(self.trainer),
                "final_saved": os.path.isfile(final),
            }
        )

    def state_dict(self):  # saved and resumed with the trainer (Detectron2's hook state)
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


class FirstRunOnly(HookBase):
    """A step of a run that does not resume (as LOCE's memory warm-up)."""

    def before_train(self):
        if not self.trainer.resumed_from:
            EVENTS.append({"event": "first_run_only"})


class FailsAt(HookBase):
    def __init__(self, where):
        self.where = where

    def before_train(self):
        if self.where == "before_train":
            raise RuntimeError("refused before training")

    def before_step(self):
        if self.where == "step" and self.trainer.iter == self.trainer.max_iter - 1:
            raise RuntimeError("failed at the last step")


class ShiftProbe:
    """An initial-checkpoint transform (not a Detectron2 hook)."""

    def __init__(self, by=1.0):
        self.by = by

    def transform_initial_checkpoint(self, state_dict, model_state, where):
        EVENTS.append({"event": "transform", "where": where, "model_has_probe": PROBE in model_state})
        return {k: v + self.by if k == PROBE else v for k, v in state_dict.items()}


class NotAHook:
    pass


def events(kind):
    return [e for e in EVENTS if e["event"] == kind]


def phase_cfg(tiny_dataset, output_dir, *hooks, max_iter=2):
    cfg = load_config(PROJECT, tiny_run_overrides(tiny_dataset, str(output_dir))).phases.pretrain
    cfg.train.update(output_dir=str(output_dir), max_iter=max_iter, log_period=1, hooks=list(hooks))
    cfg.train.checkpointer.period = 1
    return cfg


def point_last_checkpoint(folder, name):
    with open(os.path.join(folder, "last_checkpoint"), "w") as f:
        f.write(name)


@pytest.fixture(autouse=True)
def _clear_events():
    EVENTS.clear()
    yield
    EVENTS.clear()


def test_phase_hooks_run_before_and_after_training_and_decide_on_resume(tiny_dataset, tmp_path):
    folder = tmp_path / "phase"
    hooks = [L(Recorder)(), L(FirstRunOnly)()]

    # a fresh run: after the standard hooks, before_train before the first step, after_train once model_final is saved
    do_train(phase_cfg(tiny_dataset, folder, *hooks))
    (before,) = events("before_train")
    assert before["hooks"][-3:] == ["SaveFinalAtTheEnd", "Recorder", "FirstRunOnly"]
    assert before["hooks"][:3] == ["IterationTimer", "LRScheduler", "PeriodicCheckpointer"]
    assert before["start_iter"] == 0 and before["resumed_from"] is None and before["resumed_iteration"] is None
    assert before["output_dir"] == str(folder) and before["checkpointer"] == "AtomicCheckpointer"
    assert [e["event"] for e in EVENTS] == ["before_train", "first_run_only", "step", "step", "after_train"]
    assert EVENTS[-1] == {"event": "after_train", "name": "recorder", "iter": 2, "finished": True, "final_saved": True}
    final = torch.load(folder / "model_final.pth", weights_only=False)
    assert final["trainer"]["hooks"]["Recorder"] == {"steps": 2}  # the hook's state, saved with the trainer

    # resumed in the middle: the first-run step is skipped, the hook's state comes back
    EVENTS.clear()
    point_last_checkpoint(folder, "model_0000000.pth")
    do_train(phase_cfg(tiny_dataset, folder, *hooks), resume=True)
    (before,) = events("before_train")
    assert before["resumed_from"] == "model_0000000.pth" and before["resumed_iteration"] == 0
    assert before["start_iter"] == 1 and before["steps"] == 1
    assert not events("first_run_only") and [e["iter"] for e in events("step")] == [1]
    assert events("after_train")[0]["finished"] and events("after_train")[0]["iter"] == 2

    # resumed at the end of the schedule (from its last periodic checkpoint): no step; model_final is saved by the
    # engine before the phase's after_train, which sees a finished training
    EVENTS.clear()
    os.remove(folder / "model_final.pth")
    point_last_checkpoint(folder, "model_0000001.pth")
    do_train(phase_cfg(tiny_dataset, folder, *hooks), resume=True)
    assert events("before_train")[0]["start_iter"] == 2 and not events("step") and not events("first_run_only")
    assert events("after_train")[0] == {
        "event": "after_train",
        "name": "recorder",
        "iter": 3,
        "finished": True,
        "final_saved": True,
    }


def test_after_train_knows_a_training_that_failed(tiny_dataset, tmp_path):
    folder = tmp_path / "phase"
    with pytest.raises(RuntimeError, match="failed at the last step"):
        do_train(phase_cfg(tiny_dataset, folder, L(FailsAt)(where="step"), L(Recorder)()))
    assert [e["finished"] for e in events("after_train")] == [False]
    assert not os.path.exists(folder / "model_final.pth")

    # resumed at the end of the schedule, a hook refuses before training: not a finished training either
    EVENTS.clear()
    do_train(phase_cfg(tiny_dataset, folder), resume=True)  # the last step
    os.remove(folder / "model_final.pth")
    point_last_checkpoint(folder, "model_0000001.pth")
    with pytest.raises(RuntimeError, match="refused before training"):
        do_train(phase_cfg(tiny_dataset, folder, L(FailsAt)(where="before_train"), L(Recorder)()), resume=True)
    assert [e["finished"] for e in events("after_train")] == [False]
    assert not os.path.exists(folder / "model_final.pth")  # nor saved by the engine


def test_training_finished():
    def trainer(start_iter, iteration, max_iter=4):
        return SimpleNamespace(start_iter=start_iter, iter=iteration, max_iter=max_iter)

    assert training_finished(trainer(0, 4)) and training_finished(trainer(2, 4))
    assert not training_finished(trainer(0, 3)) and not training_finished(trainer(0, 0))  # an error at a step / before
    assert training_finished(trainer(4, 5)) and not training_finished(trainer(4, 4))  # resumed at the end


def test_initial_checkpoint_transforms_apply_to_the_initial_checkpoint_only(tiny_dataset, tmp_path):
    first = tmp_path / "first"
    do_train(phase_cfg(tiny_dataset, first))
    initial = torch.load(first / "model_final.pth", weights_only=False)["model"][PROBE]

    folder = tmp_path / "second"
    cfg = phase_cfg(tiny_dataset, folder, L(ShiftProbe)(by=1.0), L(Recorder)())
    cfg.train.init_checkpoint = str(first / "model_final.pth")
    do_train(cfg)
    (transform,) = events("transform")
    assert transform["model_has_probe"] and f"of the phase in {folder}" in transform["where"]
    assert torch.equal(events("before_train")[0]["probe"], initial + 1.0)

    EVENTS.clear()
    point_last_checkpoint(folder, "model_0000000.pth")
    cfg = phase_cfg(tiny_dataset, folder, L(ShiftProbe)(by=1.0), L(Recorder)())
    cfg.train.init_checkpoint = str(first / "model_final.pth")
    do_train(cfg, resume=True)
    assert not events("transform")
    saved = torch.load(folder / "model_0000000.pth", weights_only=False)["model"][PROBE]
    assert torch.equal(events("before_train")[0]["probe"], saved)


def test_entries_that_are_neither_a_hook_nor_a_transform_are_refused():
    cfg = OmegaConf.create({"train": {"output_dir": "out/p", "hooks": [L(Recorder)(), L(NotAHook)()]}})
    with pytest.raises(TypeError, match=r"train.hooks\[1\] of the phase in out/p is a NotAHook: an entry of"):
        build_phase_hooks(cfg)
    cfg.train.hooks = [L(Recorder)(colour="red")]
    with pytest.raises(TypeError, match=r"train.hooks\[0\] of the phase in out/p \(.*Recorder'>\): .*colour"):
        build_phase_hooks(cfg)
    cfg.train.hooks = [L(ShiftProbe)(), L(Recorder)()]
    assert [type(h).__name__ for h in build_phase_hooks(cfg)] == ["ShiftProbe", "Recorder"]
    assert build_phase_hooks(OmegaConf.create({"train": {}})) == []  # a config without train.hooks


# --- the method hooks ------------------------------------------------------------------------------------------


def test_memory_warmup_runs_only_when_the_run_did_not_resume(monkeypatch):
    import ltdet2.hooks.memory_warmup as memory_warmup

    calls = []
    monkeypatch.setattr(memory_warmup, "warm_up_memories", lambda model, cfg, **kw: calls.append((model, cfg, kw)))
    hook = memory_warmup.MemoryWarmup(images_per_class=3)
    hook.trainer = SimpleNamespace(model="model", cfg="cfg", resumed_from=None)
    hook.before_train()
    assert calls == [("model", "cfg", {"images_per_class": 3, "deduplicate": False})]
    hook.trainer.resumed_from = "out/model_0000009.pth"
    hook.before_train()
    assert len(calls) == 1


def test_weight_write_checks_before_training_and_writes_only_after_a_finished_one(monkeypatch):
    import ltdet2.hooks.weight_generation as weight_generation

    with pytest.raises(ValueError, match=r"WriteGeneratedWeights: row_norm must be one of \('keep', 'generated'\)"):
        weight_generation.WriteGeneratedWeights(row_norm="unit")
    hook = weight_generation.WriteGeneratedWeights(batch_size=2)
    assert hook.options == {"row_norm": "keep", "batch_size": 2, "num_workers": 0}
    cfg = OmegaConf.create({"train": {"output_dir": "out/p"}, "dataloader": {"train": {"dataset": {"names": "d"}}}})
    hook.trainer = SimpleNamespace(model=torch.nn.Linear(2, 2), cfg=cfg)
    with pytest.raises(ValueError, match=r"WriteGeneratedWeights \(train.hooks\) of the phase in out/p: the model"):
        hook.before_train()

    writes = []
    monkeypatch.setattr(weight_generation, "_the_term", lambda model, owner: None)
    monkeypatch.setattr(weight_generation, "write_phase_end_weights", lambda *a, **k: writes.append((a, k)))
    hook.before_train()
    cfg.dataloader.train.dataset.names = ["d", "e"]
    with pytest.raises(ValueError, match=r"out/p: generates weights over one training dataset"):
        hook.before_train()
    hook.trainer.__dict__.update(start_iter=0, iter=3, max_iter=4, checkpointer="ckpt", resumed_checkpoint=None)
    hook.after_train()  # an error at the last step
    assert writes == []
    hook.trainer.iter = 4
    hook.after_train()
    ((args, kwargs),) = writes
    assert args[1:] == (cfg, "ckpt", hook.options) and kwargs == {"resumed": None}
