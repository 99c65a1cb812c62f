"""LST's balanced replay resampled each epoch (issue #13, the official code's option): the phase set's replay
draws (``IncrementalPhaseBuilder(replay_draws=...)``), :class:`ReplayDrawSampler`, and ``lst_phases``'
``replay_resampling`` training an incremental phase on the tiny LT-Shapes.

Tiny LT-Shapes, base 4, 2 phases: phase 1 has 13 new-class entries and replays the 4 old classes (one instance per
image; 48, 31, 20 and 13 images) 7 images each (n_C = 6.5): 28 replay entries per draw."""

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from detectron2.utils import comm

from ltdet2.data.samplers import ReplayDrawSampler, replay_draw_sampler

from fixtures.models import ROOT, TEST_DEVICE

NEW_ENTRIES, PER_CLASS, OLD_IMAGES = 13, 7, (48, 31, 20, 13)


def build(tiny_dataset, tmp_path, folder, *, phase=1, name="replay_test_p1", **options):
    """Prepares (and registers) the phase set in ``tmp_path/folder``; returns (builder, its json, its path)."""
    from ltdet2.data import IncrementalPhaseBuilder

    train, val = tiny_dataset
    builder = IncrementalPhaseBuilder(
        name=name, source=train, source_val=val, base=4, num_phases=2, phase=phase, seed=0, **options
    )
    context = SimpleNamespace(output_dir=str(tmp_path / folder), seed=0)
    builder.prepare(context)
    with open(builder.json_path(context)) as f:
        return builder, json.load(f), builder.json_path(context)


def replay_rows(train):
    """{draw (-1: untagged): [(valid class, source image id)]} in entry order; an entry's valid class is the
    smallest valid one (a replay entry has exactly one)."""
    valid = {}
    for a in train["annotations"]:
        if a.get("valid", True):
            valid.setdefault(a["image_id"], set()).add(a["category_id"])
    rows = {}
    for image in train["images"]:
        rows.setdefault(image.get("replay_draw", -1), []).append((min(valid[image["id"]]), image["source_image_id"]))
    return rows


# --- the phase set's draws ---------------------------------------------------------------------------------------


def test_one_draw_is_the_fixed_replay_file_byte_for_byte(tiny_dataset, tmp_path):
    _, fixed, fixed_path = build(tiny_dataset, tmp_path, "default")
    _, one, one_path = build(tiny_dataset, tmp_path, "one", replay_draws=1)
    with open(fixed_path, "rb") as a, open(one_path, "rb") as b:
        assert a.read() == b.read()
    assert not any("replay_draw" in image for image in one["images"])
    assert set(one["ltdet2_derived"]["parameters"]) == {"base", "num_phases", "phase", "replay", "new_images", "seed"}
    assert len(one["images"]) == NEW_ENTRIES + 4 * PER_CLASS


def test_three_draws_cycle_through_each_old_class_images(tiny_dataset, tmp_path):
    _, fixed, _ = build(tiny_dataset, tmp_path, "fixed")
    _, three, _ = build(tiny_dataset, tmp_path, "three", replay_draws=3)
    assert [im["id"] for im in three["images"]] == list(range(1, NEW_ENTRIES + 3 * 4 * PER_CLASS + 1))
    rows, fixed_rows = replay_rows(three), replay_rows(fixed)[-1]
    assert sorted(rows) == [-1, 0, 1, 2]
    # the new-class entries untagged, as in the fixed set; draw 0 is the fixed replay, entry for entry
    assert rows[-1] == fixed_rows[:NEW_ENTRIES] and rows[0] == fixed_rows[NEW_ENTRIES:]
    assert all(c > 4 for c, _ in rows[-1])
    for e in range(3):  # each draw: 7 images of each old class (json ids 1..4), by class
        assert [c for c, _ in rows[e]] == np.repeat([1, 2, 3, 4], PER_CLASS).tolist()
    # draw e takes a class's next 7 images of one permutation (cycled): the 21 picks cover min(21, n_k) images,
    # none used more often than ceil(21 / n_k); draws 0 and 1 share an image only for the class of 13 images
    for k, n in enumerate(OLD_IMAGES, start=1):
        picks = [[image for c, image in rows[e] if c == k] for e in range(3)]
        used = np.unique(np.concatenate(picks), return_counts=True)[1]
        assert len(used) == min(21, n) and used.max() == -(-21 // n)
        assert len(set(picks[0]) & set(picks[1])) == (1 if n == 13 else 0)


def test_epochs_mode_writes_one_draw_per_epoch_of_the_schedule(tiny_dataset, tmp_path, caplog):
    import logging

    # an epoch: 13 + 28 = 41 entries; schedules of 40, 84, 82 images
    for iters, batch, draws in ((10, 4, 1), (21, 4, 3), (41, 2, 2)):
        builder, train, _ = build(
            tiny_dataset, tmp_path, f"e{iters}", replay_draws="epochs", schedule_iters=iters, schedule_batch_size=batch
        )
        rows = replay_rows(train)
        assert sorted(rows) == list(range(-1, draws)) and len(train["images"]) == NEW_ENTRIES + draws * 4 * PER_CLASS
        assert builder.num_draws(NEW_ENTRIES, 4 * PER_CLASS) == draws
        assert train["ltdet2_derived"]["parameters"]["schedule"] == [iters, batch]
    # a changed schedule rebuilds the set, naming what changed
    with caplog.at_level(logging.WARNING, logger="ltdet2.data.derived"):
        build(tiny_dataset, tmp_path, "e10", replay_draws="epochs", schedule_iters=11, schedule_batch_size=4)
    assert any("parameters.schedule" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "options, message",
    [(dict(replay_draws=0), "replay_draws must be an int >= 1 or 'epochs', got 0"),
     (dict(replay_draws=True), "replay_draws must be an int >= 1 or 'epochs', got True"),
     (dict(replay_draws="epoch"), "replay_draws must be an int >= 1 or 'epochs', got 'epoch'"),
     (dict(replay_draws="epochs", schedule_iters=10), "needs schedule_iters and schedule_batch_size"),
     (dict(replay_draws=2, schedule_iters=10, schedule_batch_size=2), "read only with replay_draws='epochs'"),
     (dict(replay_draws=2, phase=0), "phase 0 \\(base\\) has no replay to resample")],
)  # fmt: skip
def test_builder_refuses_bad_draw_options(options, message):
    from ltdet2.data import IncrementalPhaseBuilder

    options = {"phase": 1, **options}
    with pytest.raises(ValueError, match=message):
        IncrementalPhaseBuilder(name="x", source="s", source_val="v", base=4, num_phases=2, **options)


# --- the sampler ---------------------------------------------------------------------------------------------------

DRAWS = np.array([-1, 0, 1, 2, -1, 0, 1, 2, 2, -1, 0, 1, -1])  # 4 every epoch; draws of 3, 3, 3 entries


def stream(sampler, n):
    iterator = iter(sampler)
    return [next(iterator) for _ in range(n)]


def test_sampler_epoch_is_the_untagged_entries_and_one_draw_each_once():
    sampler = ReplayDrawSampler(DRAWS, seed=3)
    assert sampler.num_draws == 3
    indices = stream(sampler, 7 * 7)  # 7 epochs of 4 + 3 entries: draws 0, 1, 2, 0, 1, 2, 0
    epochs = [indices[7 * e : 7 * (e + 1)] for e in range(7)]
    every = np.flatnonzero(DRAWS == -1).tolist()
    for e, epoch in enumerate(epochs):
        assert sorted(epoch) == sorted(every + np.flatnonzero(DRAWS == e % 3).tolist())
    assert epochs[0] != epochs[3]  # the same entries, permuted anew
    assert stream(ReplayDrawSampler(DRAWS, seed=3), 49) == indices  # seeded
    unshuffled = stream(ReplayDrawSampler(DRAWS, shuffle=False, seed=0), 14)
    assert unshuffled == [0, 4, 9, 12, 1, 5, 10, 0, 4, 9, 12, 2, 6, 11]


def test_two_ranks_partition_the_stream(monkeypatch):
    single = stream(ReplayDrawSampler(DRAWS, seed=5), 40)
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    ranks = []
    for rank in (0, 1):
        monkeypatch.setattr(comm, "get_rank", lambda rank=rank: rank)
        ranks.append(stream(ReplayDrawSampler(DRAWS, seed=5), 20))
    assert ranks[0] == single[0::2] and ranks[1] == single[1::2]


def test_sampler_reads_the_dataset_dicts_and_names_what_is_wrong():
    dicts = [{"image_id": i + 1} if d < 0 else {"image_id": i + 1, "replay_draw": int(d)} for i, d in enumerate(DRAWS)]
    sampler = replay_draw_sampler(dicts, seed=3)
    assert stream(sampler, 21) == stream(ReplayDrawSampler(DRAWS, seed=3), 21)
    with pytest.raises(ValueError, match="none of the 3 dataset dicts has a 'replay_draw'.*loader dropped the key"):
        replay_draw_sampler([{}, {}, {}], seed=0)
    with pytest.raises(ValueError, match=r"replay draws \[1 \(1 in total\)\] of 0..2 have no entry"):
        ReplayDrawSampler([-1, 0, 2], seed=0)
    with pytest.raises(ValueError, match="are -1 \\(every epoch\\) or >= 0, got -2"):
        ReplayDrawSampler([-2, 0], seed=0)


# --- the config: lst_phases(replay_resampling=...) -----------------------------------------------------------------


def lst_config(tiny_dataset, **options):
    """A root config (train + phases) of lst_phases on the tiny LT-Shapes: base 4 classes, 2 phases of 2, 2 iterations
    each at batch 2, no distillation (no teacher to build)."""
    from omegaconf import DictConfig

    from detectron2.config import LazyConfig

    from ltdet2.config.lst import lst_phases

    cfg = LazyConfig.load(os.path.join(ROOT, "configs", "lt_shapes_defaults.py"))
    model = LazyConfig.load(os.path.join(ROOT, "configs", "models", "mask_rcnn_r18_fpn_small.py")).model
    cfg.train.update(max_iter=2, device=TEST_DEVICE)
    cfg.dataloader.train.update(total_batch_size=2, num_workers=0)
    phases = lst_phases(
        model,
        cfg.dataloader,
        cfg.optimizer,
        cfg.lr_multiplier,
        cfg.train,
        num_classes=8,
        source=tiny_dataset[0],
        source_val=tiny_dataset[1],
        base=4,
        num_phases=2,
        incremental_iters=2,
        incremental_schedule=lambda n: cfg.lr_multiplier,
        incremental_lr=0.002,
        agnostic_mlp_dim=16,
        name_prefix="replay_test",
        distill=False,
        **options,
    )
    return DictConfig({"train": cfg.train, "phases": phases}, flags={"allow_objects": True})


def test_replay_resampling_sets_the_builders_and_samplers(tiny_dataset):
    from ltdet2.engine.derived import derived_dataset_builders
    from ltdet2.engine.phases import resolve_phases

    phases = resolve_phases(lst_config(tiny_dataset, replay_resampling=True))
    builders = [derived_dataset_builders(p.cfg)[0] for p in phases]
    assert [b.replay_draws for b in builders] == [1, "epochs", "epochs"]
    # the schedule is the phase's own, read when the builder is made: an override reaches it
    assert [(b.schedule_iters, b.schedule_batch_size) for b in builders[1:]] == [(2, 2), (2, 2)]
    phases[1].cfg.train.max_iter = 30
    phases[1].cfg.dataloader.train.total_batch_size = 4
    assert derived_dataset_builders(phases[1].cfg)[0].schedule_iters == 30
    assert derived_dataset_builders(phases[1].cfg)[0].schedule_batch_size == 4
    assert "sampler" not in phases[0].cfg.dataloader.train
    assert [p.cfg.dataloader.train.sampler._target_ for p in phases[1:]] == [replay_draw_sampler] * 2

    fixed = resolve_phases(lst_config(tiny_dataset))
    assert all("sampler" not in p.cfg.dataloader.train for p in fixed)
    assert [derived_dataset_builders(p.cfg)[0].replay_draws for p in fixed] == [1, 1, 1]
    drawn = resolve_phases(lst_config(tiny_dataset, replay_resampling=4))
    assert [derived_dataset_builders(p.cfg)[0].replay_draws for p in drawn] == [1, 4, 4]
    for bad in (1, 0, "epochs"):
        with pytest.raises(ValueError, match="replay_resampling must be False .* or an int >= 2"):
            lst_config(tiny_dataset, replay_resampling=bad)
    with pytest.raises(ValueError, match="set replay_resampling, not replay_draws"):
        lst_config(tiny_dataset, replay_draws=3)


def test_an_incremental_phase_trains_two_iterations_on_resampled_replay(tiny_dataset, tmp_path):
    from detectron2.config import instantiate
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ltdet2.engine.derived import derived_dataset_builders
    from ltdet2.engine.phases import resolve_phases
    from ltdet2.engine.train_loop import do_train

    cfg = resolve_phases(lst_config(tiny_dataset, replay_resampling=3))[1].cfg
    cfg.train.update(output_dir=str(tmp_path / "incremental_1"), hooks=[])  # from scratch: no base to expand
    (builder,) = derived_dataset_builders(cfg)
    context = SimpleNamespace(output_dir=cfg.train.output_dir, seed=0)
    try:
        builder.prepare(context)
        builder.register(context)
        dicts = DatasetCatalog.get(builder.name)
        draws = np.array([d.get("replay_draw", -1) for d in dicts])
        assert np.bincount(draws + 1).tolist() == [NEW_ENTRIES, 28, 28, 28]
        sampler = instantiate(cfg.dataloader.train.sampler)
        assert isinstance(sampler, ReplayDrawSampler) and sampler.num_draws == 3
        first = stream(sampler, 2 * 41)
        assert sorted(first[:41]) == np.flatnonzero(draws < 1).tolist()
        assert sorted(first[41:]) == np.flatnonzero((draws == -1) | (draws == 1)).tolist()

        model = do_train(cfg)
        assert model.roi_heads.num_classes == 6
        saved = torch.load(os.path.join(cfg.train.output_dir, "model_final.pth"), weights_only=False)
        assert saved["iteration"] == 1  # iterations 0 and 1
    finally:
        for name in (builder.name, builder.val_name):
            if name in DatasetCatalog:
                DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)


def test_lvis_lst_phases_pass_lst_phases_options_through():
    from detectron2.config import LazyConfig

    from ltdet2.config.lst import lvis_lst_phases
    from ltdet2.modeling import MetaWeightGeneratorTerm, OldClassLogitDistillation

    cfg = LazyConfig.load(os.path.join(ROOT, "configs", "lvis_v0_5_defaults.py"))
    phases = lvis_lst_phases(
        cfg.model,
        cfg.dataloader,
        cfg.optimizer,
        cfg.train,
        num_classes=1230,
        source="lvis_v0.5_train",
        source_val="lvis_v0.5_val",
        num_phases=2,  # replaces the paper's 6
        weight_generator=dict(row_norm="keep"),
        replay_resampling=True,
    )
    assert list(phases) == ["base", "incremental_1", "incremental_2"]
    phase = phases["incremental_2"]
    assert phase["model"].roi_heads.num_classes == 1230
    assert phase["train"].max_iter is None and phase["train"].epochs == 10  # counted when its set is built
    assert [d._target_ for d in phase["model"].distillers] == [OldClassLogitDistillation, MetaWeightGeneratorTerm]
    assert [hook._target_.__name__ for hook in phase["train"].hooks] == ["ClassExpansion", "WriteGeneratedWeights"]
    assert phase["train"].hooks[1].row_norm == "keep"
    assert phase["train"].derived_datasets[0].replay_draws == 10  # one draw per epoch
    assert phase["dataloader"].train.sampler._target_ is replay_draw_sampler
