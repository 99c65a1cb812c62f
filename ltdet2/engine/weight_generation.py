"""LST's phase-end step of the meta weight generator (Sec. 3.4): "after training, w_c = the average prediction over
all instances of c in D_t", written into the classifier's rows of the new classes; the generator is then no longer
used (the next phase builds its own).

A phase enables it with ``train.weight_generation`` (a dict of :data:`WEIGHT_GENERATION_OPTIONS`; None: off):
:func:`do_train <ltdet2.engine.train_loop.do_train>` checks it before training
(:func:`weight_generation_options`) and, after the last iteration, writes the rows and saves ``model_final`` again
(:func:`write_phase_end_weights`). The write is not bit-idempotent (``row_norm="keep"`` rescales to the norm of the
row it replaces, which a second write reads back rounded), so the saved ``model_final`` records it
(:data:`CHECKPOINT_KEY`) and a resume from that checkpoint does not write again."""

import logging

import torch

from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.utils import comm

from ltdet2.data import ValidityDatasetMapper
from ltdet2.modeling.meta_weight_term import MetaWeightGeneratorTerm, box_features, new_class_boxes

__all__ = [
    "CHECKPOINT_KEY",
    "ROW_NORMS",
    "WEIGHT_GENERATION_OPTIONS",
    "generation_loader",
    "weight_generation_options",
    "write_generated_weights",
    "write_phase_end_weights",
]

logger = logging.getLogger("detectron2")

ROW_NORMS = ("keep", "generated")
# train.weight_generation's keys: write_generated_weights' row_norm, generation_loader's batch_size / num_workers
WEIGHT_GENERATION_OPTIONS = ("row_norm", "batch_size", "num_workers")
# the key of model_final's record of the write (per new class, the boxes its row averages; the options)
CHECKPOINT_KEY = "generated_weights"


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


def _the_term(model, owner="write_generated_weights"):
    model = getattr(model, "module", model)  # a DDP wrapper
    terms = [m for m in model.modules() if isinstance(m, MetaWeightGeneratorTerm)]
    if len(terms) != 1:
        raise ValueError(
            f"{owner}: the model ({type(model).__name__}) must hold exactly one "
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


# --- the phase-end step of do_train ----------------------------------------------------------------------------


def weight_generation_options(cfg, model):
    """``train.weight_generation`` checked against ``model`` (before training, so that a mistake costs no
    training): None when it is off (absent or None), else the options with their defaults
    (``row_norm="keep"``, ``batch_size=4``, ``num_workers=0``; ``{}`` is on, with the defaults)."""
    options = cfg.train.get("weight_generation", None)
    if options is None:
        return None
    where = f"train.weight_generation of the phase in {cfg.train.output_dir}"
    options = dict(options)
    unknown = sorted(set(options) - set(WEIGHT_GENERATION_OPTIONS))
    if unknown:
        raise ValueError(f"{where}: unknown options {unknown}; known: {list(WEIGHT_GENERATION_OPTIONS)}")
    options = {"row_norm": "keep", "batch_size": 4, "num_workers": 0, **options}
    if options["row_norm"] not in ROW_NORMS:
        raise ValueError(f"{where}: row_norm must be one of {ROW_NORMS}, got {options['row_norm']!r}")
    _the_term(model, owner=where)
    return options


def _without_term(model):
    """The model's state dict without the generator term's: its job is done, and the next phase's model, started
    from this checkpoint, must build its own (its EMA rows belong to this phase's new classes)."""
    model = getattr(model, "module", model)
    term = _the_term(model)
    prefix = next(name for name, module in model.named_modules() if module is term) + "."
    return {key: value for key, value in model.state_dict().items() if not key.startswith(prefix)}


def _training_dataset(cfg, where):
    names = cfg.dataloader.train.dataset.names
    names = [names] if isinstance(names, str) else list(names)
    if len(names) != 1:
        raise ValueError(
            f"{where}: generates weights over one training dataset; dataloader.train.dataset.names={names}"
        )
    return names[0]


def write_phase_end_weights(model, cfg, checkpointer, options, *, resumed=None):
    """After a phase's last iteration (every rank calls it: a collective): writes the new classes' generated
    classifier rows (:func:`write_generated_weights`) averaged over the phase's training set
    (``dataloader.train.dataset.names``, each image once, at the test mapper's resize, no flip) and saves
    ``model_final`` again through ``checkpointer``, recording the write under :data:`CHECKPOINT_KEY`. The saved
    model leaves out the generator term's state (parameters, EMA rows): the next phase builds its own.

    Args:
        model: the trained student (or its DDP wrapper).
        cfg: the phase's config.
        checkpointer: the phase's :class:`~ltdet2.engine.checkpoint.AtomicCheckpointer` (its ``trainer``
            checkpointable, if any, is saved at the final iteration, as the periodic checkpointer saved it).
        options: :func:`weight_generation_options`'s.
        resumed: the further data of the checkpoint training resumed from (None: not resumed); when it records
            a write (a resume of the written ``model_final``) nothing is written or saved again.
    Returns:
        the record of the write (``counts``: boxes per new class, the options), or the resumed checkpoint's.
    """
    from .derived import evaluation_input  # here: ltdet2.engine.derived imports train_loop, which imports this module

    if resumed and resumed.get(CHECKPOINT_KEY):
        logger.info(
            f"train.weight_generation: the resumed checkpoint already holds the generated rows "
            f"({resumed[CHECKPOINT_KEY]}); not written again"
        )
        return resumed[CHECKPOINT_KEY]
    where = f"train.weight_generation of the phase in {cfg.train.output_dir}"
    dataset = _training_dataset(cfg, where)
    augmentations, image_format = evaluation_input(cfg)
    loader = generation_loader(
        dataset,
        augmentations=augmentations,
        image_format=image_format,
        batch_size=options["batch_size"],
        num_workers=options["num_workers"],
    )
    logger.info(f"train.weight_generation: generating the new classes' classifier rows over {dataset}")
    counts = write_generated_weights(model, loader, row_norm=options["row_norm"])
    record = {"counts": counts.tolist(), "dataset": dataset, **options}
    # replaces the periodic checkpointer's model_final: a resume starts after it as from that one
    checkpointer.save_final(cfg.train.max_iter, model=_without_term(model), **{CHECKPOINT_KEY: record})
    comm.synchronize()
    return record
