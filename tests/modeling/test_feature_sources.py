"""The feature-source contract: every source trains through LongTailROIHeads on batches where one image,
or every image, has no annotations (Detectron2 sets no ``gt_boxes`` on such an image's RoIs)."""

import inspect

import pytest
import torch

import ltdet2.modeling.feature_sources as feature_sources
from ltdet2.memory import MeanScore
from ltdet2.modeling.extra_rows import ExtraRows
from ltdet2.modeling.feature_sources import FeatureHallucination, FeatureSource, MemoryFeatureSampler, ObjectReplay

from fixtures.models import NUM_CLASSES, make_batch, paired_models, train_losses

CAPACITY = 20


class RoIBoxRows(FeatureSource):
    """The base-class contract on its own: box-head rows built from the matched boxes of the sampled
    foreground RoIs (``SourceContext.roi_gt_boxes``), recording what it read."""

    stage = "box_head"

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, context):
        gt_boxes = context.roi_gt_boxes()
        labels = torch.cat([p.gt_classes for p in context.proposals])
        self.seen.append((context, gt_boxes))
        foreground = labels < context.num_classes
        if not foreground.any():
            return None
        return ExtraRows(
            features=context.box_features.detach()[foreground],
            labels=labels[foreground],
            proposal_boxes=gt_boxes[foreground],
            gt_boxes=gt_boxes[foreground],
        )


SOURCES = {
    MemoryFeatureSampler: lambda: MemoryFeatureSampler(
        num_classes=NUM_CLASSES, feature_shape=(128, 7, 7), capacity=CAPACITY, num_sampled_classes=4, per_class=2
    ),
    ObjectReplay: lambda: ObjectReplay(
        num_classes=NUM_CLASSES, feature_dim=256, targeted_classes=range(NUM_CLASSES), capacity=CAPACITY, per_class=3
    ),
    FeatureHallucination: lambda: FeatureHallucination(
        num_classes=NUM_CLASSES, feature_dim=256, num_sampled_classes=4, per_class=3, indicator="mean_score"
    ),
    RoIBoxRows: RoIBoxRows,
}


def exported_sources():
    return {
        obj
        for obj in vars(feature_sources).values()
        if inspect.isclass(obj) and issubclass(obj, FeatureSource) and obj is not FeatureSource
    }


def test_every_exported_source_is_tested_here():
    # a new source must be added to SOURCES (and so pass the empty-image batches below)
    assert exported_sources() <= set(SOURCES), exported_sources() - set(SOURCES)


class Recorder:
    """Per call of a source: the classes of its sampled RoIs, its output, and the queue counts before."""

    def __init__(self, source):
        self.calls = []

        def before(module, args):
            queue = getattr(module, "queue", None)
            counts = queue.counts if queue is not None else None
            self.calls.append(
                {
                    "rois": torch.cat([p.gt_classes for p in args[0].proposals]),
                    "counts": counts,
                    "targets": torch.cat([t.gt_classes for t in args[0].targets]),
                }
            )

        source.register_forward_pre_hook(before)
        source.register_forward_hook(lambda m, args, out: self.calls[-1].update(rows=out))


@pytest.mark.parametrize("empty", ["one", "all"])
@pytest.mark.parametrize("source_class", list(SOURCES), ids=lambda c: c.__name__)
def test_sources_train_on_images_without_annotations(source_class, empty):
    source = SOURCES[source_class]()
    _, model = paired_models(mask=True, feature_sources=[source], indicators={"mean_score": MeanScore(NUM_CLASSES)})
    recorder = Recorder(source)
    predictor_rows = []
    model.roi_heads.box_predictor.register_forward_hook(lambda m, args, out: predictor_rows.append(out[0].shape[0]))
    train_losses(model, make_batch(mask=True, seed=0))  # fills the memories
    empty_images = (1,) if empty == "one" else (0, 1)
    batch = make_batch(mask=True, seed=1, empty_images=empty_images)
    losses = train_losses(model, batch, seed=2)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    assert model.roi_heads.box_predictor.cls_score.weight.grad is not None

    call = recorder.calls[-1]
    num_rois = call["rois"].numel()
    num_rows = 0 if call["rows"] is None else len(call["rows"])
    assert predictor_rows[-1] == num_rois + num_rows
    foreground = call["rois"][call["rois"] < NUM_CLASSES]
    if empty == "all":
        assert foreground.numel() == 0 and call["targets"].numel() == 0
    else:
        assert foreground.numel() > 0 and call["targets"].numel() == 3

    if source_class is MemoryFeatureSampler:
        # 16 dense boxes per ground-truth box of the annotated images; rows drawn from the filled memory
        pushed = torch.bincount(call["targets"], minlength=NUM_CLASSES) * 16
        assert torch.equal(source.queue.counts, (call["counts"] + pushed).clamp(max=CAPACITY))
        assert num_rows > 0 and num_rows % source.per_class == 0
    elif source_class is ObjectReplay:
        # foreground RoIs pushed (none from an image without annotations); replay only for classes present
        pushed = torch.bincount(foreground, minlength=NUM_CLASSES)
        assert torch.equal(source.queue.counts, (call["counts"] + pushed).clamp(max=CAPACITY))
        expected = int(call["counts"][foreground.unique()].clamp(max=source.per_class).sum())
        assert num_rows == expected and (num_rows > 0) == (empty == "one")
    elif source_class is FeatureHallucination:
        # statistics of the annotated images' objects only; every draw among the classes seen so far
        first = torch.cat([b["instances"].gt_classes for b in make_batch(mask=True, seed=0)])
        seen = torch.zeros(NUM_CLASSES, dtype=torch.bool)
        seen[torch.cat([first, call["targets"].cpu()])] = True
        assert torch.equal(source.bank.seen.cpu(), seen)
        assert num_rows == 4 * 3 and call["rows"].proposal_boxes is None and seen[call["rows"].labels.cpu()].all()
    else:
        context, gt_boxes = source.seen[-1]
        assert num_rows == foreground.numel()
        starts = torch.tensor([0] + [len(p) for p in context.proposals]).cumsum(0).tolist()
        for image, proposals in enumerate(context.proposals):
            rows = slice(starts[image], starts[image + 1])
            expected = proposals.gt_boxes if image not in empty_images else proposals.proposal_boxes
            assert proposals.has("gt_boxes") == (image not in empty_images)
            assert torch.equal(gt_boxes[rows], expected.tensor)


def test_sampling_sources_refuse_counts_that_sample_nothing():
    with pytest.raises(ValueError, match=r"MemoryFeatureSampler: .* must be >= 1, got 0 and 4"):
        MemoryFeatureSampler(num_classes=NUM_CLASSES, feature_shape=(4,), num_sampled_classes=0)
    with pytest.raises(ValueError, match=r"FeatureHallucination: .* must be >= 0, got -1 and 2"):
        FeatureHallucination(num_classes=NUM_CLASSES, feature_dim=4, num_sampled_classes=-1, per_class=2)
    with pytest.raises(ValueError, match=r"normalize must be one of .*, got 'l3'"):
        FeatureHallucination(num_classes=NUM_CLASSES, feature_dim=4, normalize="l3")
