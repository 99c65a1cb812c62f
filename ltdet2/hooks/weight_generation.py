"""LST's phase-end step of the meta weight generator (Sec. 3.4): "after training, w_c = the average prediction over
all instances of c in D_t", written into the classifier's rows of the new classes; the generator is then no longer
used (the next phase builds its own).

A phase enables it with the hook :class:`WriteGeneratedWeights` in its ``train.hooks`` (options:
:data:`WEIGHT_GENERATION_OPTIONS`), e.g. ``L(WriteGeneratedWeights)(row_norm="keep", batch_size=4)``: before the first
iteration it checks that the model holds the generator's term and that the phase trains on one dataset; after the last
iteration it writes the rows and saves ``model_final`` again (:func:`write_phase_end_weights`). The write is not
bit-idempotent (``row_norm="keep"`` rescales to the norm of the row it replaces, which a second write reads back
rounded), so the saved ``model_final`` records it (:data:`CHECKPOINT_KEY`) and a resume from that checkpoint does not
write again."""

import logging

import torch

from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.engine import HookBase
from detectron2.utils import comm

from ltdet2.data import ValidityDatasetMapper
from ltdet2.engine.model_input import evaluation_input
from ltdet2.engine.train_loop import training_finished
from ltdet2.modeling.meta_weight_term import MetaWeightGeneratorTerm, box_features, new_class_boxes

__all__ = [
    "CHECKPOINT_KEY",
    "ROW_NORMS",
    "WEIGHT_GENERATION_OPTIONS",
    "WriteGeneratedWeights",
    "generation_loader",
    "write_generated_weights",
    "write_phase_end_weights",
]

logger = logging.getLogger("detectron2")

ROW_NORMS = ("keep", "generated")
# WriteGeneratedWeights' options: write_generated_weights' row_norm, generation_loader's batch_size / num_workers
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


# --- the phase-end step: the hook ------------------------------------------------------------------------------


class WriteGeneratedWeights(HookBase):
    """LST's phase-end write as a phase hook (``train.hooks``): after the last iteration (every rank: a collective),
    :func:`write_phase_end_weights` writes the new classes' generated classifier rows and saves ``model_final`` again,
    unless the run resumed from a ``model_final`` that records the write.

    Options: ``row_norm`` (``"keep"``, default, or ``"generated"``: :func:`write_generated_weights`), ``batch_size``
    (4) and ``num_workers`` (0) of the :func:`generation_loader` over the phase's training set. ``before_train``
    checks (before the first iteration, so that a mistake costs no training) that the model holds exactly one
    :class:`MetaWeightGeneratorTerm` and that the phase trains on one dataset.

    It reads the engine's ``trainer.cfg``, ``trainer.model``, ``trainer.checkpointer`` and
    ``trainer.resumed_checkpoint``, and writes only when :func:`~ltdet2.engine.train_loop.training_finished` (not after
    an error or a stop request). It is registered after the engine's hook that saves ``model_final`` of a run resumed
    at the end of its schedule, so it replaces that one (:mod:`ltdet2.engine.train_loop`)."""

    def __init__(self, *, row_norm="keep", batch_size=4, num_workers=0):
        if row_norm not in ROW_NORMS:
            raise ValueError(f"WriteGeneratedWeights: row_norm must be one of {ROW_NORMS}, got {row_norm!r}")
        self.options = {"row_norm": row_norm, "batch_size": batch_size, "num_workers": num_workers}

    def before_train(self):
        where = _where(self.trainer.cfg)
        _the_term(self.trainer.model, owner=where)
        _training_dataset(self.trainer.cfg, where)

    def after_train(self):
        if not training_finished(self.trainer):
            return
        trainer = self.trainer
        write_phase_end_weights(
            trainer.model, trainer.cfg, trainer.checkpointer, self.options, resumed=trainer.resumed_checkpoint
        )

    def __repr__(self):
        return "WriteGeneratedWeights(" + ", ".join(f"{k}={v!r}" for k, v in self.options.items()) + ")"


def _where(cfg):
    return f"WriteGeneratedWeights (train.hooks) of the phase in {cfg.train.output_dir}"


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
        options: ``row_norm``, ``batch_size``, ``num_workers`` (:class:`WriteGeneratedWeights`').
        resumed: the further data of the checkpoint training resumed from (None: not resumed); when it records
            a write (a resume of the written ``model_final``) nothing is written or saved again.
    Returns:
        the record of the write (``counts``: boxes per new class, the options), or the resumed checkpoint's.
    """
    if resumed and resumed.get(CHECKPOINT_KEY):
        logger.info(
            f"WriteGeneratedWeights: the resumed checkpoint already holds the generated rows "
            f"({resumed[CHECKPOINT_KEY]}); not written again"
        )
        return resumed[CHECKPOINT_KEY]
    dataset = _training_dataset(cfg, _where(cfg))
    augmentations, image_format = evaluation_input(cfg)
    loader = generation_loader(
        dataset,
        augmentations=augmentations,
        image_format=image_format,
        batch_size=options["batch_size"],
        num_workers=options["num_workers"],
    )
    logger.info(f"WriteGeneratedWeights: generating the new classes' classifier rows over {dataset}")
    counts = write_generated_weights(model, loader, row_norm=options["row_norm"])
    record = {"counts": counts.tolist(), "dataset": dataset, **options}
    # replaces the periodic checkpointer's model_final: a resume starts after it as from that one
    checkpointer.save_final(cfg.train.max_iter, model=_without_term(model), **{CHECKPOINT_KEY: record})
    comm.synchronize()
    return record
