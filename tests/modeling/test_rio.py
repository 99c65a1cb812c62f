"""RIO: repeat-factor sampling, cosine classifier, object-centric memory replay, configs, a short run."""

import copy
import math
import os

import numpy as np
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.structures import Boxes, Instances

from ltdet2.data import dataset_dict_pairs, load_lvis_meta
from ltdet2.data.class_counts import dataset_class_image_count
from ltdet2.data.lvis_meta import LVISMeta
from ltdet2.data.samplers import (
    class_repeat_factors,
    repeat_factor_sampler,
    repeat_factors_from_dataset_dicts,
)
from ltdet2.engine.phases import load_config, run_phases
from ltdet2.modeling import CosineClassifier, WeightNormCosineClassifier
from ltdet2.modeling.feature_sources import ObjectReplay, SourceContext
from ltdet2.modeling.feature_sources.object_replay import targeted_classes
from ltdet2.utils.json_io import write_json_atomic

from fixtures.models import (
    NUM_CLASSES,
    ROOT,
    SHORT_RUN_OVERRIDES,
    TINY_LT_SHAPES,
    long_tail_cfg,
    make_batch,
    small_model_cfg,
    tiny_run_overrides,
    train_losses,
)

# --- repeat-factor sampling ---------------------------------------------------------------------

# 8 images; classes 0..4; class 4 in no image; image 6 has no annotation
IMAGE_CLASSES = [[0, 0, 1], [0], [0, 2], [0, 1], [0], [0, 3, 3], [], [1, 0]]


def handmade_dicts():
    return [{"image_id": i, "annotations": [{"category_id": c} for c in cats]} for i, cats in enumerate(IMAGE_CLASSES)]


def direct_factors(image_classes, threshold, power, num_images=None, image_count=None):
    """Per image, in plain Python: r_I = max_{c in I} max(1, (t / f_c) ** p)."""
    num_images = num_images or len(image_classes)
    out = []
    for cats in image_classes:
        factor = 1.0
        for c in set(cats):
            n = image_count[c] if image_count is not None else sum(c in set(other) for other in image_classes)
            factor = max(factor, max(1.0, (threshold / (n / num_images)) ** power))
        out.append(factor)
    return out


@pytest.mark.parametrize("threshold,power", [(0.3, 0.5), (0.5, 1.0), (0.6, 0.3), (0.001, 0.5)])
def test_repeat_factors_match_direct_computation(threshold, power):
    factors = repeat_factors_from_dataset_dicts(handmade_dicts(), threshold=threshold, power=power)
    expected = direct_factors(IMAGE_CLASSES, threshold, power)
    assert factors.dtype == torch.float32 and factors.shape == (8,)
    assert np.allclose(factors.numpy(), expected, rtol=1e-6)
    if power in (0.5, 1.0):  # Detectron2's own (loop) computation agrees
        stock = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
            handmade_dicts(), threshold, sqrt=power == 0.5
        )
        assert torch.allclose(factors, stock)


def test_repeat_factor_values_and_pairs():
    images, classes = dataset_dict_pairs(handmade_dicts())
    assert list(zip(images.tolist(), classes.tolist())) == [
        (0, 0),
        (0, 1),
        (1, 0),
        (2, 0),
        (2, 2),
        (3, 0),
        (3, 1),
        (4, 0),
        (5, 0),
        (5, 3),
        (7, 0),
        (7, 1),
    ]
    # f = (7/8, 3/8, 1/8, 1/8, 0) at t=0.5, sqrt: r = (1, 1.1547, 2, 2, 1)
    r = class_repeat_factors([7 / 8, 3 / 8, 1 / 8, 1 / 8, 0.0], threshold=0.5)
    assert np.allclose(r, [1, math.sqrt(4 / 3), 2, 2, 1])
    factors = repeat_factors_from_dataset_dicts(handmade_dicts(), threshold=0.5)
    assert np.allclose(factors.numpy(), [math.sqrt(4 / 3), 1, 2, math.sqrt(4 / 3), 1, 2, 1, math.sqrt(4 / 3)])


def test_repeat_factors_from_lvis_counts():
    json_dict = {
        "images": [{"id": i + 1} for i in range(8)],
        "categories": [{"id": c + 1, "name": f"c{c}", "frequency": "r"} for c in range(5)],
        "annotations": [
            {"id": k, "image_id": i + 1, "category_id": c + 1}
            for k, (i, c) in enumerate((i, c) for i, cats in enumerate(IMAGE_CLASSES) for c in cats)
        ],
    }
    meta = load_lvis_meta(json_dict, recompute_counts=True)
    assert meta.image_count.tolist() == [7, 3, 1, 1, 0]
    # the json counts of a larger training set (e.g. dicts filtered to a subset): f_c = count / num_images
    image_count = np.array([70, 3, 10, 1, 0])
    factors = repeat_factors_from_dataset_dicts(
        handmade_dicts(), threshold=0.05, image_count=image_count, num_images=100
    )
    expected = direct_factors(IMAGE_CLASSES, 0.05, 0.5, num_images=100, image_count=image_count)
    assert np.allclose(factors.numpy(), expected, rtol=1e-6)
    same = repeat_factors_from_dataset_dicts(handmade_dicts(), threshold=0.3, image_count=meta)
    assert torch.allclose(same, repeat_factors_from_dataset_dicts(handmade_dicts(), threshold=0.3))


def test_repeat_factor_sampler_is_detectron2s_and_repeats_rare_images():
    sampler = repeat_factor_sampler(handmade_dicts(), threshold=0.5, seed=3)
    assert isinstance(sampler, RepeatFactorTrainingSampler)
    expected = repeat_factors_from_dataset_dicts(handmade_dicts(), threshold=0.5)
    assert torch.allclose(sampler._int_part + sampler._frac_part, expected)
    it = iter(sampler)
    counts = np.bincount([next(it) for _ in range(4000)], minlength=8)
    # images 2 and 5 (factor 2) come about twice as often as images 1, 4 and 6 (factor 1)
    assert counts[[2, 5]].min() > 1.6 * counts[[1, 4, 6]].max()


# --- cosine classifier --------------------------------------------------------------------------


def test_cosine_classifier_equals_direct_computation():
    torch.manual_seed(0)
    classifier = CosineClassifier(5, 3, scale=48.0, learnable_norm=True)
    with torch.no_grad():
        classifier.norm.copy_(torch.tensor([1.0, 2.0, 0.5, 1.5]))
    x = torch.randn(4, 5)
    logits = classifier(x)
    assert logits.shape == (4, 4)  # C + 1 rows, background last
    w = classifier.weight.detach()
    for n in range(4):
        for j in range(4):
            cos = float(x[n] @ w[j]) / ((float(x[n].norm()) + 1e-5) * (float(w[j].norm()) + 1e-5))
            expected = 48.0 * classifier.norm[j].item() * cos
            assert logits[n, j].item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    # scale and norms learn; features of any extra dims are flattened
    logits.sum().backward()
    assert classifier.scale.grad is not None and classifier.norm.grad is not None
    assert classifier(x.view(4, 5, 1, 1)).shape == (4, 4)
    fixed = CosineClassifier(5, 3, scale=10.0, learnable_scale=False)
    assert [n for n, _ in fixed.named_parameters()] == ["weight"] and fixed.scale.item() == 10.0
    assert fixed(x).abs().max() <= 10.0 + 1e-5


def test_weight_norm_classifier_is_rios_official_dist_linear():
    # g starts at the row norms of nn.Linear's default init, as torch's weight_norm sets it: E||v_j||^2 =
    # D * (1/sqrt(D))^2 / 3, so g ~ 1/sqrt(3) = 0.577 whatever D
    torch.manual_seed(0)
    classifier = WeightNormCosineClassifier(1024, 300)
    g, v = classifier.norm, classifier.weight
    assert isinstance(g, torch.nn.Parameter) and isinstance(v, torch.nn.Parameter) and g.shape == (301,)
    assert [name for name, _ in classifier.named_parameters()] == ["weight", "norm"]
    assert not isinstance(classifier.scale, torch.nn.Parameter) and classifier.scale.item() == 48.0
    assert torch.equal(g.detach(), v.detach().norm(dim=1))
    assert g.mean().item() == pytest.approx(3**-0.5, abs=2e-3) and g.std().item() < 0.02
    assert v.abs().max().item() <= 1024**-0.5  # uniform in +-1/sqrt(D)

    # the official layer, same seed: weight_norm(nn.Linear(D, C+1, bias=False)) on x / (||x|| + 1e-5), times 48
    torch.manual_seed(1)
    ours = WeightNormCosineClassifier(6, 3)
    torch.manual_seed(1)
    official = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(6, 4, bias=False), "weight", dim=0)
    assert torch.equal(official.parametrizations.weight.original1, ours.weight)
    assert torch.allclose(official.parametrizations.weight.original0.flatten(), ours.norm)
    with torch.no_grad():  # trained values: g and v no longer tied
        ours.norm.mul_(torch.tensor([1.0, 2.0, 0.5, 1.5]))
        official.parametrizations.weight.original0.mul_(torch.tensor([[1.0], [2.0], [0.5], [1.5]]))
    x = torch.randn(5, 6, dtype=torch.float32)
    logits = ours(x)
    expected = 48.0 * official(x / (x.norm(dim=1, keepdim=True) + 1e-5))
    assert torch.allclose(logits, expected, rtol=1e-5, atol=1e-5)
    w = ours.weight.detach()
    for n in range(5):
        for j in range(4):
            cos = float(x[n] @ w[j]) / ((float(x[n].norm()) + 1e-5) * float(w[j].norm()))
            assert logits[n, j].item() == pytest.approx(48.0 * ours.norm[j].item() * cos, rel=1e-5, abs=1e-5)
    logits.sum().backward()
    assert ours.norm.grad is not None and ours.weight.grad is not None


def test_cosine_classifier_in_the_box_predictor():
    cfg = LazyConfig.load(os.path.join(ROOT, "tests", "configs", "cosine_classifier_small.py")).model
    cfg.roi_heads.num_classes = NUM_CLASSES
    model = instantiate(cfg)
    classifier = model.roi_heads.box_predictor.cls_score
    assert isinstance(classifier, CosineClassifier)
    assert classifier.weight.shape == (NUM_CLASSES + 1, 256) and classifier.scale.item() == 10.0


def test_weight_norm_classifier_in_the_box_predictor():
    from detectron2.config import LazyCall as L

    cfg = long_tail_cfg(small_model_cfg())
    cfg.roi_heads.box_predictor.classifier = L(WeightNormCosineClassifier)(
        input_dim="${..input_shape.channels}", num_classes="${..num_classes}"
    )
    torch.manual_seed(0)
    model = instantiate(cfg)
    classifier = model.roi_heads.box_predictor.cls_score
    assert isinstance(classifier, WeightNormCosineClassifier) and classifier.weight.shape == (NUM_CLASSES + 1, 256)
    keys = [k for k in model.state_dict() if k.startswith("roi_heads.box_predictor.cls_score.")]
    assert sorted(keys) == ["roi_heads.box_predictor.cls_score." + k for k in ("norm", "scale", "weight")]
    losses = train_losses(model, make_batch())
    sum(losses.values()).backward()
    assert classifier.norm.grad.abs().sum() > 0 and classifier.scale.item() == 48.0


# --- object replay: the source alone ------------------------------------------------------------


def make_context(rois_per_image, classes, feature_offset, dim=4, num_classes=NUM_CLASSES):
    """Proposals with the given per-RoI classes (background = num_classes); RoI r of the iteration has
    feature ``[feature_offset + r] * dim`` and proposal box ``(r, r, r + 10, r + 10)``."""
    proposals, start = [], 0
    for count in rois_per_image:
        instances = Instances((100, 100))
        ids = torch.arange(start, start + count, dtype=torch.float32)
        instances.proposal_boxes = Boxes(torch.stack([ids, ids, ids + 10, ids + 10], 1))
        instances.gt_boxes = Boxes(torch.stack([ids, ids, ids + 11, ids + 12], 1))
        instances.gt_classes = torch.tensor(classes[start : start + count])
        instances.gt_indices = torch.where(instances.gt_classes < num_classes, 0, -1)
        proposals.append(instances)
        start += count
    features = (feature_offset + torch.arange(start, dtype=torch.float32))[:, None].repeat(1, dim)
    features.requires_grad_(True)
    return SourceContext(
        proposals=proposals,
        targets=[],
        pool=None,
        box_head=None,
        pooled_features=None,
        box_features=features,
        num_classes=num_classes,
    )


BG = NUM_CLASSES


def test_replay_recent_first_counts_and_drawn_before_push():
    replay = ObjectReplay(num_classes=NUM_CLASSES, feature_dim=4, targeted_classes=[1, 3], capacity=6, per_class=4)
    assert replay.queue.num_classes == 2 and replay.class_to_slot.tolist() == [-1, 0, -1, 1, -1, -1, -1]

    # iteration 1: class 1 x5, class 2 (not targeted) x2, background; memory empty -> nothing replayed
    ctx = make_context([3, 5], [1, 2, BG, 1, 1, 2, 1, 1], feature_offset=0)
    assert replay(ctx) is None
    assert replay.queue.counts.tolist() == [5, 0]
    stored = replay.queue.storage("features")[0, :5, 0].tolist()
    assert stored == [0.0, 3.0, 4.0, 6.0, 7.0]  # class-1 RoIs in order; class 2 never stored
    assert not replay.queue.storage("features").requires_grad

    # iteration 2 (other RoI counts per image): classes 1 and 3 present; class 3's queue is empty
    ctx = make_context([1, 4, 2], [3, 1, BG, 1, 3, 0, 1], feature_offset=100)
    rows = replay(ctx)
    # 4 most recent of class 1, newest first, all from iteration 1 (drawn before the push)
    assert rows.labels.tolist() == [1, 1, 1, 1]
    assert rows.features[:, 0].tolist() == [7.0, 6.0, 4.0, 3.0]
    assert rows.proposal_boxes[:, 0].tolist() == [7.0, 6.0, 4.0, 3.0]
    assert torch.equal(rows.gt_boxes[:, 2:], rows.proposal_boxes[:, :2] + torch.tensor([11.0, 12.0]))
    assert not rows.features.requires_grad
    assert replay.queue.counts.tolist() == [6, 2]  # capacity 6: oldest of class 1 overwritten

    # iteration 3: only class 3 present -> its 2 entries (fewer than per_class), class 1 not replayed
    ctx = make_context([2], [3, 5], feature_offset=200)
    rows = replay(ctx)
    assert rows.labels.tolist() == [3, 3] and rows.features[:, 0].tolist() == [104.0, 100.0]

    # iteration 4: no targeted class present -> nothing replayed, nothing stored
    before = replay.queue.counts
    assert replay(make_context([2], [0, BG], feature_offset=300)) is None
    assert torch.equal(replay.queue.counts, before)


def test_replay_random_mode_draws_all_stored_up_to_per_class():
    # official RANDOM_SELECT with 20 or fewer stored: every stored entry once (no replacement, no padding)
    torch.manual_seed(0)
    replay = ObjectReplay(
        num_classes=NUM_CLASSES, feature_dim=4, targeted_classes=[2], capacity=60, per_class=20, mode="random"
    )
    replay(make_context([3], [2, 2, 2], feature_offset=0))
    rows = replay(make_context([2], [2, 0], feature_offset=10))
    assert rows.labels.tolist() == [2, 2, 2]
    assert sorted(rows.features[:, 0].tolist()) == [0.0, 1.0, 2.0]
    assert torch.equal(rows.proposal_boxes[:, 0], rows.features[:, 0])  # rows stay whole


def test_replay_random_mode_draws_without_replacement_per_class():
    # classes 1, 3, 5 hold 40, 20 and 25 entries (values 0..39, 100..119, 200..224): per call 20 distinct
    # entries of each class holding more than 20, all 20 of class 3; uniform over the stored entries
    replay = ObjectReplay(
        num_classes=NUM_CLASSES, feature_dim=4, targeted_classes=[1, 3, 5], capacity=60, per_class=20, mode="random"
    )
    for cls, num, offset in ((1, 40, 0), (3, 20, 100), (5, 25, 200)):
        replay(make_context([num], [cls] * num, feature_offset=offset))
    assert replay.queue.counts.tolist() == [40, 20, 25]
    torch.manual_seed(0)
    draws = 2000
    frequency = {1: np.zeros(40), 3: np.zeros(20), 5: np.zeros(25)}
    offsets = {1: 0, 3: 100, 5: 200}
    probe = make_context([3], [1, 3, 5], feature_offset=1000)
    for _ in range(draws):
        rows = replay.replay(replay.class_to_slot[torch.tensor([1, 3, 5])])
        labels = replay.slot_to_class[rows.labels]
        assert labels.tolist() == [1] * 20 + [3] * 20 + [5] * 20  # grouped by class, request order
        for cls in (1, 3, 5):
            values = rows.features[labels == cls, 0].long() - offsets[cls]
            assert values.unique().numel() == 20  # without replacement
            frequency[cls][values.numpy()] += 1
    assert (frequency[3] == draws).all()
    for cls, num in ((1, 40), (5, 25)):
        expected = draws * 20 / num  # each stored entry is in a draw with probability 20 / num
        chi_square = ((frequency[cls] - expected) ** 2 / expected).sum()
        # without replacement the statistic is about (1 - 20/num) (num - 1): 19.5 and 4.8 here
        assert chi_square < num, (cls, chi_square)
    assert replay(probe).labels.tolist() == [1] * 20 + [3] * 20 + [5] * 20


def test_targeted_classes_from_counts_and_meta():
    counts = np.array([0, 1, 30, 31, 500, 12])
    assert targeted_classes(counts).tolist() == [1, 2, 5]
    assert targeted_classes(counts, max_images=10).tolist() == [1]
    meta = LVISMeta(
        category_ids=tuple(range(1, 7)),
        names=tuple("abcdef"),
        frequency=np.array(list("rrccfc")),
        image_count=counts,
        instance_count=counts * 2,
    )
    assert targeted_classes(meta).tolist() == [1, 2, 5]
    replay = ObjectReplay(num_classes=6, feature_dim=8, image_count=counts)
    assert replay.targeted_classes.tolist() == [1, 2, 5]
    assert replay.queue.storage("features").shape == (3, 60, 8)  # only targeted classes are stored
    with pytest.raises(ValueError, match="exactly one"):
        ObjectReplay(num_classes=6, feature_dim=8, image_count=counts, targeted_classes=[1])
    with pytest.raises(ValueError, match=r"must lie in \[0, 5\]; got \[-1, 7\]"):
        ObjectReplay(num_classes=6, feature_dim=8, targeted_classes=[1, 7, -1])
    with pytest.raises(TypeError, match=r"integer class indices, got \[1.0, 2.5\]"):
        ObjectReplay(num_classes=6, feature_dim=8, targeted_classes=[1.0, 2.5])  # not truncated to [1, 2]


def test_targeted_classes_from_dataset_name_read_lazily(tiny_dataset):
    train_name = tiny_dataset[0]
    DatasetCatalog.get(train_name)  # LT-Shapes sets its class_image_count metadata when loaded
    records = sorted(MetadataCatalog.get(train_name).class_image_count, key=lambda r: r["id"])
    counts = np.array([r["image_count"] for r in records])
    # the one route for a dataset's per-class image counts gives LT-Shapes' own metadata
    assert dataset_class_image_count(train_name).tolist() == counts.tolist() == [1, 13, 20, 2, 9, 4, 48, 31]
    num_classes = TINY_LT_SHAPES.num_classes
    lazy = ObjectReplay(num_classes=num_classes, feature_dim=8, dataset_name=train_name)
    assert lazy.queue is None and "slot_to_class" not in lazy.state_dict()  # nothing read yet
    assert lazy.targeted_classes.tolist() == [0, 1, 2, 3, 4, 5]  # 1..30 images
    assert lazy.queue.storage("features").shape == (6, 60, 8)
    both = ObjectReplay(num_classes=num_classes, feature_dim=8, dataset_name=[train_name, train_name])
    assert both.targeted_classes.tolist() == [0, 1, 3, 4, 5]  # counts summed: 2, 26, 40, 4, 18, 8, 96, 62


# --- object replay inside the ROI heads ---------------------------------------------------------


def replay_model(mask=False, stock_too=False, **replay_options):
    stock_cfg = small_model_cfg(mask)
    torch.manual_seed(0)
    stock = instantiate(stock_cfg) if stock_too else None
    model = instantiate(long_tail_cfg(stock_cfg))
    model.roi_heads.feature_sources.append(ObjectReplay(num_classes=NUM_CLASSES, feature_dim=256, **replay_options))
    if stock is not None:
        missing, unexpected = model.load_state_dict(stock.state_dict(), strict=False)
        assert not unexpected
    return stock, model


class Recorder:
    """Records, per call of an ObjectReplay, the expected replay count (sum over the targeted classes
    among the sampled foreground RoIs of min(per_class, fill before the call)) and the rows."""

    def __init__(self, source):
        self.expected, self.outputs = [], []

        def before(module, args):
            classes = torch.cat([p.gt_classes for p in args[0].proposals])
            slots = module.class_to_slot[classes]
            present = slots[slots >= 0].unique()
            self.expected.append(int(module.queue.counts[present].clamp(max=module.per_class).sum()))

        source.register_forward_pre_hook(before)
        source.register_forward_hook(lambda m, args, out: self.outputs.append(out))


def test_replayed_rows_train_box_losses_but_not_the_mask_head():
    stock, ours = replay_model(mask=True, stock_too=True, targeted_classes=range(NUM_CLASSES), per_class=5)
    recorder = Recorder(ours.roi_heads.feature_sources[0])
    batch = make_batch(mask=True)
    train_losses(ours, batch)  # fills the memory (no optimizer step: weights unchanged)
    stock_losses, our_losses = train_losses(stock, batch), train_losses(ours, batch)
    rows = recorder.outputs[-1]
    assert recorder.expected[0] == 0 and recorder.outputs[0] is None
    assert rows is not None and len(rows) == recorder.expected[-1] > 5
    assert torch.equal(stock_losses["loss_mask"], our_losses["loss_mask"])
    assert not torch.equal(stock_losses["loss_cls"], our_losses["loss_cls"])
    assert not torch.equal(stock_losses["loss_box_reg"], our_losses["loss_box_reg"])


def register_counts_only_dataset(name, image_count, folder):
    """Registers metadata whose LVIS-format json has only categories with the given image counts."""
    categories = [
        {"id": i + 1, "name": f"class_{i}", "frequency": "r", "image_count": int(n), "instance_count": int(n)}
        for i, n in enumerate(image_count)
    ]
    json_file = os.path.join(str(folder), f"{name}.json")
    write_json_atomic(json_file, {"images": [], "annotations": [], "categories": categories})
    MetadataCatalog.get(name).set(json_file=json_file)


def test_replay_memory_survives_a_checkpoint_round_trip(tmp_path):
    name = "rio_test_counts_resume"
    register_counts_only_dataset(name, [3, 100, 7, 40, 12, 500], tmp_path)
    _, model = replay_model(dataset_name=name)
    for seed in range(2):
        train_losses(model, make_batch(seed=seed))
    source = model.roi_heads.feature_sources[0]
    assert source.targeted_classes.tolist() == [0, 2, 4]
    assert source.queue.counts.sum() > 0
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_test")

    _, restored = replay_model(dataset_name="not_registered_anywhere")  # targets come from the checkpoint
    DetectionCheckpointer(restored).load(str(tmp_path / "model_test.pth"))
    restored_source = restored.roi_heads.feature_sources[0]
    saved, loaded = source.state_dict(), restored_source.state_dict()
    assert saved.keys() == loaded.keys() and len(saved) >= 6
    for key in saved:
        assert torch.equal(saved[key], loaded[key]), key
    # and it replays exactly what the original would
    context = make_context([4], [0, 2, 4, BG], feature_offset=0, dim=256)
    a, b = source(copy.deepcopy(context)), restored_source(copy.deepcopy(context))
    assert torch.equal(a.features, b.features) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.proposal_boxes, b.proposal_boxes) and torch.equal(a.gt_boxes, b.gt_boxes)


# --- configs and a short run --------------------------------------------------------------------


def load_tiny(project, output_dir, tiny_dataset, *extra):
    return load_config(
        os.path.join(ROOT, "projects", project),
        [
            *tiny_run_overrides(tiny_dataset, output_dir),
            *SHORT_RUN_OVERRIDES,
            # RIO's pieces hold a copy of the class count (configs/rio.py)
            f"model.roi_heads.box_predictor.classifier.num_classes={TINY_LT_SHAPES.num_classes}",
            f"model.roi_heads.feature_sources.0.num_classes={TINY_LT_SHAPES.num_classes}",
            f"model.roi_heads.feature_sources.0.dataset_name={tiny_dataset[0]}",
            # 3 iterations leave the model without a detection; these tests check sampling and memories, not AP
            "train.allow_empty_eval=True",
            *extra,
        ],
    )


def test_rfs_sampler_config_builds_detectron2_loader(tmp_path, tiny_dataset):
    cfg = load_tiny("rio.py", str(tmp_path), tiny_dataset)  # one phase: a plain config
    sampler = instantiate(cfg.dataloader.train.sampler)
    dicts = instantiate(cfg.dataloader.train.dataset)
    assert isinstance(sampler, RepeatFactorTrainingSampler)
    expected = direct_factors([[a["category_id"] for a in d["annotations"]] for d in dicts], 0.001, 0.5)
    assert np.allclose((sampler._int_part + sampler._frac_part).numpy(), expected, rtol=1e-6)
    loader = instantiate(cfg.dataloader.train)
    batch = next(iter(loader))
    assert len(batch) == 2 and batch[0]["instances"].has("gt_classes")
    # the replay targets this dataset's classes in at most 30 training images
    model = instantiate(cfg.model)
    source = model.roi_heads.feature_sources[0]
    counts = load_lvis_meta(MetadataCatalog.get(tiny_dataset[0]).json_file).image_count
    assert source.targeted_classes.tolist() == np.nonzero((counts >= 1) & (counts <= 30))[0].tolist()
    assert isinstance(model.roi_heads.box_predictor.cls_score, WeightNormCosineClassifier)  # official default
    assert model.roi_heads.box_predictor.cls_score.scale.item() == 48.0


def test_rio_project_trains_a_few_iterations(tmp_path, tiny_dataset):
    out = str(tmp_path / "run")
    results = run_phases(load_tiny("rio.py", out, tiny_dataset))
    assert {"AP", "APr"} <= set(results[""]["bbox"])  # a config without phases: one phase named ""
    final = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)
    prefix = "roi_heads.feature_sources.0."
    assert final["model"][prefix + "queue.fill_counts"].sum() > 0  # replay memory filled and checkpointed
    assert prefix + "slot_to_class" in final["model"]
    assert "roi_heads.box_predictor.cls_score.scale" in final["model"]


def test_replay_dataset_that_is_not_the_training_dataset_is_refused(tmp_path, tiny_dataset):
    overrides = [o for o in tiny_run_overrides(tiny_dataset, str(tmp_path))]
    overrides += [
        f"model.roi_heads.box_predictor.classifier.num_classes={TINY_LT_SHAPES.num_classes}",
        f"model.roi_heads.feature_sources.0.num_classes={TINY_LT_SHAPES.num_classes}",
    ]
    with pytest.raises(
        ValueError,
        match=r"model.roi_heads.feature_sources.0.dataset_name is 'lt_shapes_train' but "
        rf"dataloader.train.dataset.names is '{tiny_dataset[0]}'",
    ):
        load_config(os.path.join(ROOT, "projects", "rio.py"), overrides)


def test_ablation_phases_start_from_the_same_pretrain():
    cfg = load_config(os.path.join(ROOT, "projects", "rio_ablation.py"))
    assert list(cfg.phases) == ["pretrain", "baseline", "rfs", "replay", "rio"]
    for name, phase in list(cfg.phases.items())[1:]:
        assert phase.train.init_from_phase == "pretrain"
        assert phase.model.roi_heads.box_predictor.classifier._target_ is WeightNormCosineClassifier
        assert ("sampler" in phase.dataloader.train) == (name in ("rfs", "rio"))
        assert bool(phase.model.roi_heads.get("feature_sources")) == (name in ("replay", "rio"))
    from ltdet2.engine.phases import chain_checkpoints, resolve_phases

    phases = resolve_phases(cfg)
    chain_checkpoints(phases)
    assert phases[0].cfg.train.init_checkpoint == ""
    assert all(p.cfg.train.init_checkpoint == phases[0].final_checkpoint for p in phases[1:])
