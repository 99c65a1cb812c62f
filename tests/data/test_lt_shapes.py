import glob
import hashlib
import json
import os
import re

import numpy as np
import pytest

from ltdet2.data.categories import dataset_dict_pairs, frequency_from_image_count
from ltdet2.data.category_meta import load_lvis_meta
from ltdet2.data.lt_shapes import (
    COLORS,
    NUM_CLASSES,
    LTShapesSpec,
    build,
    class_names,
    default_root,
    generate,
    get_lt_shapes,
    is_complete,
    plan_class_targets,
    plan_split,
    register_all_lt_shapes,
    register_lt_shapes,
)
from ltdet2.data.lt_shapes.__main__ import main as lt_shapes_cli

from fixtures.models import TINY_LT_SHAPES

# 12 classes with all three LVIS groups, small and fast to render
MEDIUM = LTShapesSpec(
    num_train=300,
    num_val=60,
    image_size=64,
    shapes=("circle", "square", "triangle"),
    colors=("red", "blue"),
    fills=("solid", "outline"),
)
# 8 classes, rare + common only (too few images for > 100-image classes): the end-to-end tests' spec
TINY = TINY_LT_SHAPES
# 18 classes: every shape and fill (one colour), rare + common, 46 images of 48 px: generates in < 1 s
SMALL = LTShapesSpec(
    num_train=40, num_val=6, image_size=48, colors=("red",), group_fractions=(0.5, 0.5, 0.0), val_min_instances=1
)

# sha256 of the files the generator wrote BEFORE it was split into a package (ltdet2/data/lt_shapes.py at
# commit 1ea0987), recorded with `generate(dir, seed, spec)` and, per dataset folder,
#   sha256sum DONE lt_shapes_train.json lt_shapes_val.json
#   sha256sum train/*.png val/*.png | sha256sum     (-> "png")
# The output must stay byte-identical for a (spec, seed): a change here needs a GENERATOR_VERSION bump.
# Exception, at version 1: the `area` of the train json of SMALL and MEDIUM was re-recorded when the shoelace sums
# moved from np.dot to math.fsum (np.dot's rounding depended on the CPU's OpenBLAS kernel: the old digests held with
# its SkylakeX kernel, OPENBLAS_CORETYPE=SkylakeX, not with Haswell's or Zen's). Only some areas' second decimal
# moved, which no training, loss or AP over all areas reads.
# PNG bytes also depend on Pillow's zlib: if only "png" differs after such an upgrade, compare decoded pixels.
DIGESTS = {
    ("SMALL", 1): {
        "DONE": "54e8208b7f206be60cef3e46c3bc805453a070d9e9aef2652c8942ba1a2a93ee",
        "lt_shapes_train.json": "e82530551b90e3f630063e8b2c8fb2679c1fa4c2a4204f9eefce5fe5ab14528e",
        "lt_shapes_val.json": "7b09dccca8af96b280e2ed1ffa21dc7b8d45fd3806432390c48a0d5745cb75da",
        "png": "3f18df4088ce5e2a91573975c83a810a2ee72af41b14a4b024107a396ee9fc6d",
    },
    ("TINY", 5): {
        "DONE": "7d6d312373fba84369edb0c30ecc8183fd3b6fa301fac94eaf0afa870524e839",
        "lt_shapes_train.json": "f158e3300ddf928bb1fde3214abbf6eb13d5f8a24a7e2fc6bbd5ca4aaf6faad0",
        "lt_shapes_val.json": "b4622c8d77964c00b19b60c0cfaa1e9171c0dc39396e723bff73ff8501152312",
        "png": "aceb1b825ac8fb3d5fd6e596b59f4a20c9497c88ecfb86eaaedd0086c8f44dc5",
    },
    ("MEDIUM", 3): {
        "DONE": "af90deee966e3d53d603e51afdfc51e55ef6fe5da7cd0939a27859a1ebc6d79a",
        "lt_shapes_train.json": "f553e42a41cb3e1637c041d4b4c7436106ae01075f3d4e2882724cc22a86bc5b",
        "lt_shapes_val.json": "cd524c5f870338d39bc5b488028ce052530b7cede7a67bff4b010e98eab06eab",
        "png": "1906f36941ced199a5da62442e9f4ba7f992285fc43856f2271594fa4a15233e",
    },
}
# the default dataset (seed 0, 2500 + 400 images, ~30 s; checked by hand, not here):
# DONE 7028dd7bfac61ad015d7913f8efb086fb8717804a6ac4654dc8318545fd3c9f4,
# lt_shapes_train.json 06b3ff3599875d4416313021c367b058d6bfb6482b218b4abc454801eb2bf8ed,
# lt_shapes_val.json 39a6c438f0c44b0b8ae34fcb65dd420862e861b502d552990da0f17f682f03c9 (both with math.fsum areas;
# the np.dot areas of the machine that first recorded them gave ff0edd65... and 6574646d...),
# png e706a1297a53829f617d71d567b96254e68dc0dfaaf7b163abab1bbb64dca8cc


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _digests(root):
    """The digests of :data:`DIGESTS` for the dataset folder ``root``."""
    out = {name: _sha256(os.path.join(root, name)) for name in ("DONE", "lt_shapes_train.json", "lt_shapes_val.json")}
    pngs = [p for split in ("train", "val") for p in sorted(glob.glob(os.path.join(root, split, "*.png")))]
    listing = "".join(f"{_sha256(p)}  {os.path.relpath(p, root)}\n" for p in pngs)
    out["png"] = hashlib.sha256(listing.encode()).hexdigest()
    return out


def _plan_counts(plan, C):
    img = np.array([c for classes in plan for c in np.unique(classes)])
    inst = np.array([c for classes in plan for c in classes])
    return np.bincount(img, minlength=C), np.bincount(inst, minlength=C)


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("medium"))
    paths = generate(root, seed=3, spec=MEDIUM)
    with open(paths["train_json"]) as f:
        train = json.load(f)
    with open(paths["val_json"]) as f:
        val = json.load(f)
    return paths, train, val


def test_output_is_byte_identical_to_recorded(tmp_path, medium):
    paths = generate(str(tmp_path / "small"), seed=1, spec=SMALL)
    assert _digests(paths["root"]) == DIGESTS[("SMALL", 1)]
    assert _digests(medium[0]["root"]) == DIGESTS[("MEDIUM", 3)]


def test_default_spec_plan_groups():
    spec = LTShapesSpec()
    C = spec.num_classes
    assert C == NUM_CLASSES == 72 and len(class_names(spec)) == C and class_names(spec)[0] == "red_solid_circle"
    targets, groups = plan_class_targets(spec, seed=0)
    plan = plan_split(spec, seed=0, split="train")
    assert len(plan) == spec.num_train
    k = np.array([len(p) for p in plan])
    assert k.min() >= 2 and k.max() <= 5
    image_count, inst = _plan_counts(plan, C)
    assert (inst == targets).all()
    assert (frequency_from_image_count(image_count) == groups).all()
    assert (image_count >= 1).all()
    assert {g: int((groups == g).sum()) for g in "rcf"} == {"r": 18, "c": 25, "f": 29}
    assert targets.sum() == 8750 and targets.max() == 467 and image_count.max() == 434  # Zipf-like head ...
    assert image_count.min() == 1  # ... to tail
    # tail classes are spread over attributes: every shape has a rare class
    names = np.array(class_names(spec))
    assert {n.split("_")[-1] for n in names[groups == "r"]} == set(spec.shapes)
    # every image with a rare class also has a frequent one
    rare = groups == "r"
    freq = groups == "f"
    assert all(freq[p].any() for p in plan if rare[p].any())
    val = plan_split(spec, seed=0, split="val")
    assert len(val) == spec.num_val
    assert np.bincount(np.concatenate(val), minlength=C).min() >= spec.val_min_instances


def test_infeasible_spec_is_explained():
    with pytest.raises(ValueError, match="num_train=100"):
        plan_class_targets(LTShapesSpec(num_train=100), seed=0)


def test_realised_groups_and_counts(medium):
    _, train, val = medium
    C = MEDIUM.num_classes
    meta = load_lvis_meta(medium[0]["train_json"])
    recount = load_lvis_meta(medium[0]["train_json"], recompute_counts=True)
    assert (meta.image_count == recount.image_count).all()
    assert (meta.instance_count == recount.instance_count).all()
    assert (frequency_from_image_count(meta.image_count) == meta.frequency).all()
    assert {g: int(meta.group_mask(g).sum()) for g in "rcf"} == {"r": 3, "c": 4, "f": 5}
    assert (meta.image_count >= 1).all()
    # val json carries the TRAIN counts, like LVIS val
    assert [c["image_count"] for c in val["categories"]] == meta.image_count.tolist()
    val_inst = np.bincount([a["category_id"] - 1 for a in val["annotations"]], minlength=C)
    assert val_inst.min() >= MEDIUM.val_min_instances
    assert len(train["images"]) == 300 and len(val["images"]) == 60
    per_img = np.bincount([a["image_id"] for a in train["annotations"]])[1:]
    assert per_img.min() >= 2 and per_img.max() <= 5


def test_cooccurrence(medium):
    _, train, _ = medium
    freq = {c["id"]: c["frequency"] for c in train["categories"]}
    by_img = {}
    for a in train["annotations"]:
        by_img.setdefault(a["image_id"], set()).add(freq[a["category_id"]])
    rare_imgs = [g for g in by_img.values() if "r" in g]
    assert len(rare_imgs) == 13
    assert all("f" in g for g in rare_imgs)


def test_image_records(medium):
    _, train, val = medium
    C = MEDIUM.num_classes
    for d in (train, val):
        present = {}
        for a in d["annotations"]:
            present.setdefault(a["image_id"], set()).add(a["category_id"])
        for im in d["images"]:
            assert im["not_exhaustive_category_ids"] == []
            assert sorted(im["neg_category_ids"]) == sorted(set(range(1, C + 1)) - present[im["id"]])
            assert im["height"] == im["width"] == 64
        assert d["licenses"] == [] and "info" in d
        cat = d["categories"][0]
        assert cat["id"] == 1 and cat["synset"] == cat["name"] == "red_solid_circle"
        assert [c["id"] for c in d["categories"]] == list(range(1, C + 1))


def test_polygon_box_consistency(medium):
    _, train, val = medium
    for d in (train, val):
        ids = [a["id"] for a in d["annotations"]]
        assert ids == list(range(1, len(ids) + 1))
        for a in d["annotations"]:
            assert len(a["segmentation"]) == 1
            xy = np.array(a["segmentation"][0]).reshape(-1, 2)
            assert len(xy) >= 3
            x, y, w, h = a["bbox"]
            assert np.allclose([x, y, x + w, y + h], [*xy.min(0), *xy.max(0)], atol=0.011)
            # extent: the drawn size (within the spec's range; ~0.95 of it for the star), to 0.01 px
            lo, hi = MEDIUM.size_range
            assert 0.95 * lo - 0.02 <= max(w, h) <= hi + 0.02
            assert xy.min() >= 0 and xy.max() <= 64
            shoelace = abs(np.dot(xy[:, 0], np.roll(xy[:, 1], -1)) - np.dot(xy[:, 1], np.roll(xy[:, 0], -1))) / 2
            assert a["area"] == pytest.approx(shoelace, abs=0.01)


def test_rendered_pixels_match_polygons(medium):
    import pycocotools.mask as mask_util
    from PIL import Image
    from scipy import ndimage

    paths, train, _ = medium
    cats = {c["id"]: c["name"] for c in train["categories"]}
    imgs = {im["id"]: im for im in train["images"]}
    checked = 0
    for a in train["annotations"][:40]:
        im = imgs[a["image_id"]]
        pix = np.asarray(Image.open(os.path.join(paths["image_root"], im["file_name"]))).astype(np.float32)
        assert pix.shape == (64, 64, 3)
        mask = mask_util.decode(mask_util.merge(mask_util.frPyObjects(a["segmentation"], 64, 64))).astype(bool)
        assert abs(mask.sum() - a["area"]) <= 0.12 * a["area"] + 4
        color, fill, _ = cats[a["category_id"]].split("_")
        ref = np.array(COLORS[color], dtype=np.float32)
        close = np.abs(pix - ref).max(-1) < 30
        if fill == "solid":
            assert close[mask].mean() > 0.95
            checked += 1
        else:  # hollow: the boundary ring is painted, the centre mostly not
            assert close[mask].mean() > 0.25
        # nothing of this colour right outside the object (objects never touch)
        ring = np.zeros_like(mask)
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = max(ys.min() - 2, 0), min(ys.max() + 3, 64), max(xs.min() - 2, 0), min(xs.max() + 3, 64)
        ring[y0:y1, x0:x1] = True
        ring &= ~ndimage.binary_dilation(mask)
        assert close[ring].mean() < 0.2
    assert checked >= 5


def test_loaders(medium):
    from lvis import LVIS

    from detectron2.data.datasets.lvis import load_lvis_json

    paths, train, val = medium
    for split, d in (("train", train), ("val", val)):
        api = LVIS(paths[f"{split}_json"])
        assert len(api.get_img_ids()) == len(d["images"])
        assert len(api.get_ann_ids()) == len(d["annotations"])
        dicts = load_lvis_json(paths[f"{split}_json"], paths["image_root"])
        assert len(dicts) == len(d["images"])
        assert all(os.path.isfile(r["file_name"]) for r in dicts)
        cids = [o["category_id"] for r in dicts for o in r["annotations"]]
        assert min(cids) == 0 and max(cids) == MEDIUM.num_classes - 1
        assert sum(len(r["annotations"]) for r in dicts) == len(d["annotations"])


def test_determinism(tmp_path):
    a = generate(str(tmp_path / "a"), seed=5, spec=TINY)
    b = generate(str(tmp_path / "b"), seed=5, spec=TINY)
    c = generate(str(tmp_path / "c"), seed=6, spec=TINY)
    for key in ("train_json", "val_json"):
        with open(a[key], "rb") as fa, open(b[key], "rb") as fb, open(c[key], "rb") as fc:
            ba, bb, bc = fa.read(), fb.read(), fc.read()
        assert ba == bb
        assert ba != bc
    assert _digests(a["root"]) == _digests(b["root"]) == DIGESTS[("TINY", 5)]
    meta = load_lvis_meta(a["train_json"])
    assert (frequency_from_image_count(meta.image_count) == meta.frequency).all()
    assert set(meta.frequency.tolist()) == {"r", "c"}


def test_done_marker_and_regeneration(tmp_path, monkeypatch):
    root = str(tmp_path / "ds")
    # an interrupted generation leaves no DONE marker
    real = build.render_split

    def crash_on_val(out_dir, split, *args, **kw):
        if split == "val":
            raise KeyboardInterrupt
        return real(out_dir, split, *args, **kw)

    monkeypatch.setattr(build, "render_split", crash_on_val)
    with pytest.raises(KeyboardInterrupt):
        generate(root, seed=0, spec=TINY)
    assert not os.path.exists(os.path.join(root, "DONE"))
    assert not is_complete(root, 0, TINY)
    monkeypatch.setattr(build, "render_split", real)

    calls = []
    real_generate = build.generate
    monkeypatch.setattr(build, "generate", lambda *a, **k: calls.append(a) or real_generate(*a, **k))
    paths = get_lt_shapes(root, seed=0, spec=TINY)  # incomplete -> regenerated
    assert len(calls) == 1 and is_complete(root, 0, TINY)
    get_lt_shapes(root, seed=0, spec=TINY)  # complete -> reused
    assert len(calls) == 1
    assert not is_complete(root, 1, TINY)  # another seed is not this folder
    get_lt_shapes(root, seed=1, spec=TINY)
    assert len(calls) == 2 and is_complete(root, 1, TINY) and not is_complete(root, 0, TINY)
    assert os.path.isfile(paths["train_json"])
    assert os.path.isfile(os.path.join(root, "DONE.lock"))  # iopath's file_lock(<root>/DONE)


def test_cache_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LTDET2_DATASETS", str(tmp_path / "cache"))
    assert default_root(4) == str(tmp_path / "cache" / "lt_shapes_seed4")
    paths = get_lt_shapes(seed=4, spec=TINY)
    assert paths["root"].startswith(str(tmp_path / "cache" / "lt_shapes_seed4_"))
    assert is_complete(paths["root"], 4, TINY)


def test_registration_is_lazy(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    root = str(tmp_path / "tiny")
    names = register_lt_shapes(root=root, seed=2, spec=TINY, name_prefix="lt_shapes_tiny")
    assert names == ("lt_shapes_tiny_train", "lt_shapes_tiny_val")
    assert not os.path.exists(root)  # nothing generated at registration
    assert register_lt_shapes(root=root, seed=2, spec=TINY, name_prefix="lt_shapes_tiny") == names  # idempotent
    with pytest.raises(ValueError, match="already registered"):
        register_lt_shapes(root=str(tmp_path / "other"), seed=2, spec=TINY, name_prefix="lt_shapes_tiny")
    meta = MetadataCatalog.get("lt_shapes_tiny_val")
    assert meta.evaluator_type == "lvis"
    assert meta.thing_classes == class_names(TINY)
    assert meta.json_file == os.path.join(root, "lt_shapes_val.json")
    dicts = DatasetCatalog.get("lt_shapes_tiny_train")
    assert len(dicts) == TINY.num_train and is_complete(root, 2, TINY)
    rec = dicts[0]
    assert os.path.isfile(rec["file_name"])
    assert rec["file_name"] == os.path.join(meta.image_root, "train", "000001.png")
    assert all(0 <= o["category_id"] < TINY.num_classes for o in rec["annotations"])
    _, pair_classes = dataset_dict_pairs(dicts)
    image_count = np.bincount(pair_classes, minlength=TINY.num_classes)
    assert MetadataCatalog.get("lt_shapes_tiny_train").class_image_count == [
        {"id": i + 1, "image_count": int(n)} for i, n in enumerate(image_count)
    ]
    # default names registered at import, idempotently, without generating anything
    register_all_lt_shapes()
    register_all_lt_shapes()
    assert "lt_shapes_train" in DatasetCatalog.list() and "lt_shapes_val" in DatasetCatalog.list()
    assert MetadataCatalog.get("lt_shapes_train").evaluator_type == "lvis"
    assert MetadataCatalog.get("lt_shapes_train").thing_classes == class_names(LTShapesSpec())


def test_cli(tmp_path, capsys):
    out = str(tmp_path / "cli")
    with pytest.raises(ValueError, match="num_train=100"):
        lt_shapes_cli(["--out", out, "--seed", "2", "--num-train", "100"])
    assert not is_complete(out, 2, LTShapesSpec(num_train=100))


def test_registered_splits_load_like_detectron2_through_the_validated_loader(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets.lvis import load_lvis_json

    train, val = register_lt_shapes(root=str(tmp_path / "tiny"), seed=5, spec=TINY, name_prefix="lt_shapes_loader")
    lists = ("neg_category_ids", "not_exhaustive_category_ids")
    for name in (train, val):
        meta = MetadataCatalog.get(name)
        dicts = DatasetCatalog.get(name)
        reference = load_lvis_json(meta.json_file, meta.image_root)
        # ltdet2's annotations also carry the json annotation "id" (Detectron2's LVIS loader drops it)
        without_ids = [{**r, "annotations": [{k: v for k, v in a.items() if k != "id"} for a in r["annotations"]]}
                       for r in dicts]  # fmt: skip
        assert [{k: v for k, v in r.items() if k not in lists} for r in without_ids] == [
            {k: v for k, v in r.items() if k not in lists} for r in reference
        ]
        with open(meta.json_file) as f:
            json_ids = sorted(a["id"] for a in json.load(f)["annotations"])
        assert sorted(a["id"] for r in dicts for a in r["annotations"]) == json_ids
        # the federated lists are contiguous indices, like category_id (Detectron2 keeps the json ids)
        for key in lists:
            assert [r[key] for r in dicts] == [[c - 1 for c in r[key]] for r in reference]
        assert sum(len(r["neg_category_ids"]) for r in dicts) > 0
    # the val split carries the training counts (its json stores them, checked against the train json)
    _, pair_classes = dataset_dict_pairs(DatasetCatalog.get(train))
    image_count = np.bincount(pair_classes, minlength=TINY.num_classes).tolist()
    assert MetadataCatalog.get(val).image_count == MetadataCatalog.get(train).image_count == image_count
    with open(MetadataCatalog.get(val).json_file) as f:
        assert [c["image_count"] for c in json.load(f)["categories"]] == image_count


def test_truncated_json_names_the_file(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    train, _ = register_lt_shapes(root=str(tmp_path / "tiny"), seed=5, spec=TINY, name_prefix="lt_shapes_truncated")
    DatasetCatalog.get(train)  # generates
    path = MetadataCatalog.get(train).json_file
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"dataset json file {re.escape(path)} is not valid JSON"):
        DatasetCatalog.get(train)
