"""LST's phase-end step of the meta weight generator (Sec. 3.4): "after training, w_c = the average prediction over
all instances of c in D_t", written into the classifier's rows of the new classes; the generator is then no longer
used (the next phase builds its own)."""

import logging

import torch

from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.utils import comm

from ltdet2.data import ValidityDatasetMapper
from ltdet2.modeling.meta_weight_term import MetaWeightGeneratorTerm, box_features, new_class_boxes

__all__ = ["ROW_NORMS", "generation_loader", "write_generated_weights"]

logger = logging.getLogger("detectron2")

ROW_NORMS = ("keep", "generated")


def generation_loader(dataset_name, *, augmentations=(), image_format="BGR", batch_size=4, num_workers=0):
    """A finite loader over the images of ``dataset_name`` that have annotations, each once (sharded over the
    ranks when there are several), with ``instances`` (``gt_boxes``, ``gt_classes``, ``gt_valid``) in the
    coordinates of the image resized by ``augmentations`` (the test mapper's resize; no flip)."""
    dataset = [d for d in DatasetCatalog.get(dataset_name) if d.get("annotations")]
    mapper = ValidityDatasetMapper(
        is_train=True, augmentations=list(augmentations), image_format=image_format, use_instance_mask=False
    )
    sampler = None if comm.get_world_size() > 1 else torch.utils.data.SequentialSampler(range(len(dataset)))
    return build_detection_test_loader(
        dataset, mapper=mapper, sampler=sampler, batch_size=batch_size, num_workers=num_workers
    )


def _the_term(model):
    terms = [m for m in model.modules() if isinstance(m, MetaWeightGeneratorTerm)]
    if len(terms) != 1:
        raise ValueError(
            f"write_generated_weights: the model ({type(model).__name__}) must hold exactly one "
            f"MetaWeightGeneratorTerm (e.g. in model.distillers); found {len(terms)}"
        )
    return terms[0]


@torch.no_grad()
def write_generated_weights(model, data_loader, *, row_norm="keep"):
    """Sets the classifier rows of the phase's new classes to the generator's weights averaged over all their
    valid ground-truth boxes in ``data_loader`` (a collective when there are several processes: every rank
    calls it, the sums are added over the ranks).

    Runs with the model in eval mode (restored after). Rows of classes without a box in the loader, the old
    classes' rows, background and the scale are left as they are.

    Args:
        model: the student (a DDP wrapper is unwrapped) holding one :class:`MetaWeightGeneratorTerm`, with a
            cosine classifier.
        data_loader: finite iterable of batches (lists of dicts with ``image`` and ``instances``:
            ``gt_boxes`` in the input image's pixels, ``gt_classes`` contiguous, ``gt_valid`` optional), e.g.
            :func:`generation_loader` over the phase's training set.
        row_norm: ``"keep"`` (default, ours): each written row keeps the L2 norm of the row it replaces (the
            cosine logits do not depend on it; MaskX-style mask weights, computed from the raw rows, and the
            rows' effective learning rate do); ``"generated"``: the generated weight as it is.
    Returns:
        Tensor [K - K_old] int64: the number of boxes each new class's weight averages (0: row not written).
    """
    if row_norm not in ROW_NORMS:
        raise ValueError(f"write_generated_weights: row_norm must be one of {ROW_NORMS}, got {row_norm!r}")
    model = getattr(model, "module", model)
    term = _the_term(model)
    classifier = term.classifier(model)
    weight = classifier.weight
    num_new = term.num_classes - term.num_old_classes
    sums = weight.new_zeros(num_new, term.feature_dim)
    counts = torch.zeros(num_new, dtype=torch.int64, device=weight.device)
    was_training = model.training
    model.eval()
    try:
        for batch in data_loader:
            if any("instances" not in x for x in batch):
                raise KeyError(
                    "write_generated_weights: every input needs 'instances' (a mapper that keeps the annotations, "
                    "e.g. generation_loader's ValidityDatasetMapper(is_train=True))"
                )
            images = model.preprocess_image(batch)
            features = model.backbone(images.tensor)
            boxes, classes = new_class_boxes(
                [x["instances"].to(images.tensor.device) for x in batch], term.num_old_classes
            )
            if len(classes) == 0:
                continue
            means, batch_counts = term.generate(box_features(model.roi_heads, features, boxes), classes, weight)
            sums += means * batch_counts.unsqueeze(1)
            counts += batch_counts
    finally:
        model.train(was_training)
    if comm.get_world_size() > 1:
        torch.distributed.all_reduce(sums)
        torch.distributed.all_reduce(counts)
    written = counts > 0
    rows = torch.nonzero(written).squeeze(1) + term.num_old_classes
    generated = sums[written] / counts[written].unsqueeze(1)
    if row_norm == "keep":
        generated = generated * (weight[rows].norm(dim=1, keepdim=True) / generated.norm(dim=1, keepdim=True))
    weight[rows] = generated.to(weight.dtype)
    missing = (torch.nonzero(~written).squeeze(1) + term.num_old_classes).tolist()
    logger.info(
        f"Meta weight generator: wrote the classifier rows of {len(rows)} new classes (contiguous "
        f"{term.num_old_classes}..{term.num_classes - 1}) from {int(counts.sum())} boxes"
        + (f"; classes {missing[:20]} have no box in the loader, their rows are kept" if missing else "")
    )
    return counts.cpu()
