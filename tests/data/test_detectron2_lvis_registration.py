"""Derived datasets drawn from a dataset registered by Detectron2's ``register_lvis_instances`` (issue #25), on
real LVIS v0.5 annotations (tests/resources/lvis_v0.5_val_100.json: 100 images, 977 annotations, 1230
categories): LST's phase sets (the same files as from ltdet2's own registration of the file, the json annotation
and category ids kept), step-wise exemplar sets scored by a from-scratch model (every score under its json
annotation id and json category id), and per-class AP of an LST phase stored under the dataset's category ids."""

import collections
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances

from ltdet2.data import (
    ExemplarSetBuilder,
    IncrementalPhaseBuilder,
    build_derived_dataset,
    dataset_category_ids,
    dataset_dicts_with_annotation_ids,
    derived_source,
    register_lvis_format_dataset,
)
from ltdet2.data.derived import RECORD_KEY
from ltdet2.engine.derived import DerivedDatasetContext
from ltdet2.utils.json_io import read_json, write_json_atomic

from fixtures.lvis_files import (
    LVIS_V0_5_100,
    detectron2_image_path,
    first_images,
    register_like_detectron2,
    write_dummy_images,
)
from fixtures.models import small_model_cfg

BASE, NUM_PHASES = 20, 2  # the 100 images hold 190 of the 1230 classes: phases 0 and 1 have images to replay


@pytest.fixture(scope="module")
def lvis():
    return read_json(LVIS_V0_5_100, what="LVIS json")


@pytest.fixture(scope="module")
def registered(tmp_path_factory, lvis):
    """(train, val, image root): the 100-image file registered twice as Detectron2 registers LVIS (the names hold
    "v0.5": its loader sets the built-in v0.5 metadata), its images small dummy files where Detectron2 reads them."""
    root = os.path.join(str(tmp_path_factory.mktemp("d2_lvis")), "coco", "")
    write_dummy_images(lvis, root)
    suffix = f"d2reg_{os.getpid()}"
    train = register_like_detectron2(f"lvis_v0.5_train_{suffix}", LVIS_V0_5_100, root)
    val = register_like_detectron2(f"lvis_v0.5_val_{suffix}", LVIS_V0_5_100, root)
    return train, val, root


@pytest.fixture(scope="module")
def registered_20(tmp_path_factory, lvis, registered):
    """(name, json dict): the file's first 20 images (by id) with their annotations and every category, registered
    as Detectron2 registers LVIS, for the tests that score annotations with a model."""
    subset = first_images(lvis, 20)
    path = str(tmp_path_factory.mktemp("d2_lvis_20") / "lvis_v0.5_val_20.json")
    write_json_atomic(path, subset)
    return register_like_detectron2(f"lvis_v0.5_train_d2reg20_{os.getpid()}", path, registered[2]), subset


def context(folder, seed=0, phases=None):
    return DerivedDatasetContext(phase_name="phase", output_dir=str(folder), seed=seed, phases=phases or {})


def by_rank(lvis):
    """json category ids by instance count descending, ties by id (LST's order), from the file itself."""
    counts = collections.Counter(a["category_id"] for a in lvis["annotations"])
    return sorted((c["id"] for c in lvis["categories"]), key=lambda i: (-counts[i], i))


def test_detectron2s_registration_is_read_from_its_metadata(registered):
    train, _, root = registered
    source = derived_source(train)
    assert type(source).__name__ == "Detectron2LVISSource"
    assert (source.json_file, source.image_root) == (LVIS_V0_5_100, root)
    np.testing.assert_array_equal(dataset_category_ids(train), np.arange(1, 1231))  # load_lvis_json: id - 1
    dicts = dataset_dicts_with_annotation_ids(train)
    assert not any("id" in a for r in DatasetCatalog.get(train) for a in r["annotations"])  # Detectron2 drops them
    lvis = read_json(LVIS_V0_5_100, what="LVIS json")
    expected = collections.defaultdict(list)
    for a in lvis["annotations"]:
        expected[a["image_id"]].append((a["id"], a["category_id"] - 1, a["bbox"]))
    assert {r["image_id"]: [(a["id"], a["category_id"], a["bbox"]) for a in r["annotations"]] for r in dicts} == {
        im["id"]: expected[im["id"]] for im in lvis["images"]
    }
    files = {im["id"]: detectron2_image_path(root, im) for im in lvis["images"]}
    assert all(r["file_name"] == files[r["image_id"]] and os.path.isfile(r["file_name"]) for r in dicts)
    with pytest.raises(ValueError, match="neither by ltdet2.data.register_lvis_format_dataset nor by Detectron2"):
        derived_source("coco_2017_val_panoptic")  # a Detectron2 dataset of another kind


def test_lst_phase_sets_from_detectron2s_registration(registered, lvis, tmp_path):
    train, val, root = registered
    order = by_rank(lvis)
    base_ids = order[:BASE]
    category = {a["id"]: a["category_id"] for a in lvis["annotations"]}

    built = {}
    for phase in (0, 1):
        builder = IncrementalPhaseBuilder(
            name=f"{train}_lst_phase{phase}",
            source=train,
            source_val=val,
            base=BASE,
            num_phases=NUM_PHASES,
            phase=phase,
        )
        builder.prepare(context(tmp_path / f"p{phase}"))
        builder.register(context(tmp_path / f"p{phase}"))
        assert builder.seen_category_ids().tolist() == order[: BASE + (605 if phase else 0)]
        built[phase] = (builder, read_json(builder.json_path(context(tmp_path / f"p{phase}")), what="phase set"))

    # phase 0: every image with a base class, its base-class annotations (json ids kept as source_annotation_id),
    # categories renumbered by rank with the json id as source_id
    _, phase0 = built[0]
    assert [(c["id"], c["source_id"]) for c in phase0["categories"]] == [(r + 1, i) for r, i in enumerate(base_ids)]
    images = sorted({a["image_id"] for a in lvis["annotations"] if a["category_id"] in base_ids})
    assert [im["source_image_id"] for im in phase0["images"]] == images
    assert sorted(a["source_annotation_id"] for a in phase0["annotations"]) == sorted(
        a["id"] for a in lvis["annotations"] if a["category_id"] in base_ids
    )
    assert all(base_ids[a["category_id"] - 1] == category[a["source_annotation_id"]] for a in phase0["annotations"])
    assert not any("valid" in a for a in phase0["annotations"])

    # phase 1: new-class entries (new classes valid, base classes ignored) + replay entries (one base class valid)
    builder, phase1 = built[1]
    new_ids = set(order[BASE : BASE + 605])
    by_entry = collections.defaultdict(list)
    for a in phase1["annotations"]:
        assert order[a["category_id"] - 1] == category[a["source_annotation_id"]]
        by_entry[a["image_id"]].append(a)
    replayed = collections.Counter()
    for entry in phase1["images"]:
        annotations = by_entry[entry["id"]]
        valid = {category[a["source_annotation_id"]] for a in annotations if a.get("valid", True)}
        if valid <= new_ids:
            assert all(a.get("valid", True) == (category[a["source_annotation_id"]] in new_ids) for a in annotations)
        else:
            (replayed_class,) = valid
            assert replayed_class in base_ids
            replayed[replayed_class] += 1
    # balanced replay: ceil(n_C / n_k) images of each base class k
    counts = collections.Counter(a["category_id"] for a in lvis["annotations"])
    image_counts = collections.Counter(c for c, _ in {(a["category_id"], a["image_id"]) for a in lvis["annotations"]})
    new_instances = sum(counts[i] for i in new_ids)  # n_C / n_k = new_instances * images_k / (N * instances_k)
    assert replayed == {k: -(-new_instances * image_counts[k] // (len(new_ids) * counts[k])) for k in base_ids}

    # the val set: the source's image and annotation ids, seen-class annotations renumbered
    _, val0 = built[0]
    val0 = read_json(os.path.join(tmp_path / "p0", f"{train}_lst_phase0_val.json"), what="val set")
    assert [im["id"] for im in val0["images"]] == [im["id"] for im in lvis["images"]]
    assert sorted(a["id"] for a in val0["annotations"]) == sorted(
        a["id"] for a in lvis["annotations"] if a["category_id"] in base_ids
    )
    assert all(base_ids[a["category_id"] - 1] == category[a["id"]] for a in val0["annotations"])

    # through Detectron2: the phase set's images are the files the Detectron2 source reads
    source_files = {r["image_id"]: r["file_name"] for r in DatasetCatalog.get(train)}
    phase_dicts = DatasetCatalog.get(f"{train}_lst_phase0")
    assert [r["file_name"] for r in phase_dicts] == [source_files[i] for i in images]
    assert MetadataCatalog.get(f"{train}_lst_phase0").derived_from == train

    # the same files as from ltdet2's own registration of the json (stored counts not checked there either)
    ours = register_lvis_format_dataset(f"ltdet2_lvis_100_{os.getpid()}", LVIS_V0_5_100, root, skip_invalid=True)
    for phase in (0, 1):
        twin = IncrementalPhaseBuilder(
            name=f"{ours}_lst_phase{phase}", source=ours, source_val=ours, base=BASE, num_phases=NUM_PHASES, phase=phase
        )
        twin.prepare(context(tmp_path / f"ours{phase}"))
        theirs = read_json(twin.json_path(context(tmp_path / f"ours{phase}")), what="phase set")
        assert {k: v for k, v in theirs.items() if k != RECORD_KEY} == {
            k: v for k, v in built[phase][1].items() if k != RECORD_KEY
        }


def scoring_phase(tmp_path):
    """A finished 'pretrain' phase for the scorer: the small R-18 Faster R-CNN with LVIS v0.5's 1230 classes, from
    scratch, evaluated at short edge 64."""
    cfg = OmegaConf.create()
    cfg.model = small_model_cfg()
    cfg.model.roi_heads.num_classes = 1230
    cfg.train = dict(device="cpu")
    resize = L(T.ResizeShortestEdge)(short_edge_length=64, max_size=96)
    cfg.dataloader = dict(test=dict(mapper=dict(augmentations=[resize], image_format="BGR")))
    torch.manual_seed(0)
    checkpoint = str(tmp_path / "pretrain" / "model_final.pth")
    os.makedirs(os.path.dirname(checkpoint))
    torch.save({"model": instantiate(cfg.model).state_dict()}, checkpoint)
    return SimpleNamespace(name="pretrain", cfg=cfg, final_checkpoint=checkpoint)


def test_exemplar_sets_from_detectron2s_registration(registered_20, tmp_path):
    train, lvis = registered_20
    phase = scoring_phase(tmp_path)
    ctx = context(tmp_path / "head_expert", phases={"pretrain": phase})
    table = ctx.annotation_scores("pretrain", dataset=train)
    # every annotation scored once, under its json annotation id, image id and json category id
    expected = {a["id"]: (a["image_id"], a["category_id"]) for a in lvis["annotations"]}
    assert len(table["annotation_id"]) == len(expected) == 205
    assert {
        a: (i, c)
        for a, i, c in zip(table["annotation_id"].tolist(), table["image_id"].tolist(), table["category_id"].tolist())
    } == expected
    assert ((table["score"] >= 0) & (table["score"] <= 1)).all()

    image_counts = collections.Counter(c for c, _ in {(a["category_id"], a["image_id"]) for a in lvis["annotations"]})
    counts = collections.Counter(a["category_id"] for a in lvis["annotations"])
    head = {c for c, n in image_counts.items() if n >= 2}
    assert len(head) == 6 and len(counts) == 51
    for name, (head_quota, tail_quota) in {"d_head": (3, 1), "d_tail": (2, None)}.items():
        builder = ExemplarSetBuilder(
            name=f"{train}_{name}", source=train, scores_from_phase="pretrain", head_quota=head_quota,
            tail_quota=tail_quota, min_images=2,
        )  # fmt: skip
        builder.prepare(ctx)
        builder.register(ctx)
        out = read_json(builder.json_path(ctx), what="exemplar set")
        # selected annotations keep their json ids and json category ids; per class the quota (or all there are)
        assert all(expected[a["id"]] == (a["image_id"], a["category_id"]) for a in out["annotations"])
        selected = collections.Counter(a["category_id"] for a in out["annotations"])
        assert selected == {
            c: min(n, head_quota if c in head else (tail_quota if tail_quota is not None else n))
            for c, n in counts.items()
        }
        assert [c["id"] for c in out["categories"]] == list(range(1, 1231))
        chosen = {a["id"] for a in out["annotations"]}
        # through Detectron2: the set's classes are the source's (json id - 1), the ids kept, the same image files
        source_files = {r["image_id"]: r["file_name"] for r in DatasetCatalog.get(train)}
        dicts = DatasetCatalog.get(builder.name)
        assert sorted(a["id"] for r in dicts for a in r["annotations"]) == sorted(chosen)
        assert all(
            a["category_id"] == expected[a["id"]][1] - 1 and r["file_name"] == source_files[r["image_id"]]
            for r in dicts
            for a in r["annotations"]
        )
        assert out[RECORD_KEY]["source"] == out[RECORD_KEY]["inputs"]["score_table"]["dataset"] == train


def test_lst_per_class_ap_is_stored_under_the_datasets_category_ids(registered, lvis, tmp_path):
    """The evaluator of an LST phase set (categories renumbered by rank) writes per-class AP with ``id`` = the
    source dataset's category id (joins across phases and entries) and the phase set's own id as ``dataset_id``."""
    from ltdet2.evaluation import LTLVISEvaluator

    train, val, _ = registered
    builder = IncrementalPhaseBuilder(
        name=f"{train}_ap_phase0", source=train, source_val=val, base=BASE, num_phases=NUM_PHASES, phase=0
    )
    builder.prepare(context(tmp_path))
    builder.register(context(tmp_path))
    order = by_rank(lvis)
    # perfect detections of the phase's val set (its contiguous classes = rank), except class rank 0 missed
    inputs, outputs = [], []
    for record in DatasetCatalog.get(builder.val_name):
        kept = [a for a in record["annotations"] if a["category_id"] != 0]
        instances = Instances((record["height"], record["width"]))
        xywh = torch.tensor([a["bbox"] for a in kept], dtype=torch.float32).reshape(-1, 4)
        instances.pred_boxes = Boxes(torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1))
        instances.scores = torch.ones(len(kept))
        instances.pred_classes = torch.tensor([a["category_id"] for a in kept], dtype=torch.int64)
        inputs.append({"image_id": record["image_id"], "height": record["height"], "width": record["width"]})
        outputs.append({"instances": instances})
    evaluator = LTLVISEvaluator(builder.val_name, tasks=("bbox",), distributed=False, output_dir=str(tmp_path / "ev"))
    evaluator.reset()
    evaluator.process(inputs, outputs)
    evaluator.evaluate()
    records = json.loads((tmp_path / "ev" / "per_class_ap_bbox.json").read_text())
    assert [r["id"] for r in records] == list(order[:BASE])  # the phase set's order, base classes by rank
    assert {r["id"]: r["dataset_id"] for r in records} == {i: rank + 1 for rank, i in enumerate(order[:BASE])}
    names = {c["id"]: c["name"] for c in lvis["categories"]}
    assert all(r["name"] == names[r["id"]] for r in records)
    ap = {r["id"]: r["AP"] for r in records}
    assert ap[order[0]] == 0 and all(ap[i] == pytest.approx(100) for i in order[1:BASE])


def test_detectron2_registrations_that_cannot_be_read_are_named(registered, lvis, tmp_path):
    from detectron2.data.datasets import load_lvis_json

    train, _, root = registered
    # category ids that are not 1..C: Detectron2's id - 1 would not be the classes a derived set gets
    shifted = first_images(lvis, 3)
    shifted = dict(
        shifted,
        categories=[dict(c, id=c["id"] + 1) for c in shifted["categories"]],
        annotations=[dict(a, category_id=a["category_id"] + 1) for a in shifted["annotations"]],
        images=[dict(im, neg_category_ids=[], not_exhaustive_category_ids=[]) for im in shifted["images"]],
    )
    path = str(tmp_path / "shifted.json")
    write_json_atomic(path, shifted)
    name = register_like_detectron2(f"lvis_v0.5_train_shifted_{os.getpid()}", path, root)
    with pytest.raises(ValueError, match=r"maps a json category id i to class i - 1, which needs the ids 1\.\.1230"):
        dataset_category_ids(name)
    builder = IncrementalPhaseBuilder(name=f"{name}_p0", source=name, source_val=name, base=5, num_phases=0, phase=0)
    builder.prepare(context(tmp_path / "shifted"))  # LST's sets renumber the classes: any ids will do
    phase_set = read_json(builder.json_path(context(tmp_path / "shifted")), what="phase set")
    assert [c["source_id"] for c in phase_set["categories"]] == builder.seen_category_ids().tolist()
    assert {c["source_id"] for c in phase_set["categories"]} <= {a["category_id"] for a in shifted["annotations"]}
    with pytest.raises(ValueError, match="Detectron2's load_lvis_json maps"):
        build_derived_dataset(
            f"{name}_d",
            source=name,
            output_dir=tmp_path,
            valid_annotation_ids=[shifted["annotations"][0]["id"]],
            inputs={},
        )

    # a loader that does not list the json's annotations (one dropped): the ids are not guessed
    def dropping():
        dicts = load_lvis_json(LVIS_V0_5_100, root, train)
        dicts[1]["annotations"] = dicts[1]["annotations"][1:]
        return dicts

    name = f"lvis_v0.5_train_dropping_{os.getpid()}"
    if name not in DatasetCatalog:
        DatasetCatalog.register(name, dropping)
        MetadataCatalog.get(name).set(json_file=LVIS_V0_5_100, image_root=root, evaluator_type="lvis")
    image_id = dropping()[1]["image_id"]
    with pytest.raises(ValueError, match=rf"the annotations of images \[{image_id} \(1 in total\)\] are not those of"):
        dataset_dicts_with_annotation_ids(name)
