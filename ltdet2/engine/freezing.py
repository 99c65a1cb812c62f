"""Which parameters train in a phase (decoupled fine-tuning freezes the feature extractor)."""

import logging
import re
from collections import OrderedDict
from collections.abc import Sequence

from tabulate import tabulate
from torch import nn

from detectron2.layers import FrozenBatchNorm2d

logger = logging.getLogger("detectron2")


def training_terms(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's loss and distillation terms, by name: each entry of a ``distillers`` list
    (:class:`~ltdet2.modeling.TeacherStudentRCNN`) and each module held under a name that ends in ``loss``
    (e.g. ``roi_heads.box_predictor.cls_loss``). These are what :func:`check_frozen_terms` looks at."""
    terms = []
    for name, module in model.named_modules():
        last = name.rpartition(".")[2]
        if isinstance(module, nn.ModuleList) and last == "distillers":
            terms.extend((f"{name}.{index}", term) for index, term in enumerate(module))
        elif last.endswith("loss"):
            terms.append((name, module))
    return terms


def check_frozen_terms(model: nn.Module, allowed: Sequence[str] = ()):
    """Refuses a model whose loss or distillation term (:func:`training_terms`) has parameters of which none
    trains: the term would run every step with its parameters at their initial values (the mistake that left
    LST's meta weight generator untrained when ``train.trainable`` did not name ``distillers.``). A term that is
    frozen on purpose is named in ``allowed`` (``train.frozen_terms``); a name there that is no frozen term is
    refused too, so the list cannot go stale."""
    frozen = [
        name
        for name, term in training_terms(model)
        if any(True for _ in term.parameters()) and not any(p.requires_grad for p in term.parameters())
    ]
    stale = sorted(set(allowed) - set(frozen))
    if stale:
        raise ValueError(
            f"train.frozen_terms names {stale}, which are not frozen loss or distillation terms of the model "
            f"(its frozen terms: {frozen})"
        )
    refused = [name for name in frozen if name not in set(allowed)]
    if refused:
        details = ", ".join(f"{name} ({type(model.get_submodule(name)).__name__})" for name in refused)
        raise ValueError(
            f"train.trainable freezes every parameter of the training terms {details}: they would train nothing. "
            f"Add a pattern that matches them to train.trainable (e.g. r'{re.escape(refused[0])}\\.'), or, if "
            f"they are meant to stay at their initial values, list them in train.frozen_terms"
        )


def freeze_all_but(model: nn.Module, trainable: Sequence[str] | None, *, key: str = "train.trainable"):
    """Freezes every parameter whose name matches none of the regexes in ``trainable`` (matched at
    the start of the name, e.g. ``"roi_heads.box_predictor."``); ``None`` trains everything. A pattern that
    matches nothing is logged (a mask-head pattern on a model without one); patterns that all match nothing raise.
    ``key``: the config key the patterns come from, as the messages name it (``MODEL.LTDET2.TRAINABLE`` for a YAML
    config).

    BatchNorm layers left with no trainable parameter become ``FrozenBatchNorm2d``, so their running
    statistics stay fixed too. Logs trainable / frozen parameter counts per top-level module and
    returns ``(num_trainable, num_frozen)`` element counts.
    """
    if trainable is not None:
        patterns = [re.compile(p) for p in trainable]
        matched = {p.pattern: 0 for p in patterns}
        for name, param in model.named_parameters():
            hits = [p for p in patterns if p.match(name)]
            param.requires_grad_(bool(hits))
            for p in hits:
                matched[p.pattern] += 1
        unmatched = [p for p, n in matched.items() if n == 0]
        if patterns and len(unmatched) == len(patterns):  # a typo, not a head this model lacks: nothing trains
            top_level = sorted({name.split(".")[0] for name, _ in model.named_parameters()})
            raise ValueError(
                f"{key}: no pattern of {list(trainable)} matches a parameter of the model, so nothing "
                f"would train (patterns match at the start of names such as {top_level[0]}.*; top-level modules: "
                f"{top_level})"
            )
        if unmatched:  # e.g. a mask-head pattern on a model without a mask head
            logger.warning(f"{key}: patterns {unmatched} match no parameter of the model")
        _freeze_batch_norms(model, key)
    return _report(model)


def _freeze_batch_norms(model, key="train.trainable"):
    frozen = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in module.parameters())
    ]
    other = [n for n in frozen if not isinstance(model.get_submodule(n), (nn.BatchNorm2d, nn.SyncBatchNorm))]
    if other:  # FrozenBatchNorm2d replaces 2-D BatchNorm only
        raise ValueError(
            f"{key} freezes {other}, BatchNorm layers that are not 2-D; "
            "ltdet2 can only freeze BatchNorm2d / SyncBatchNorm statistics"
        )
    for name in frozen:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child_name, FrozenBatchNorm2d.convert_frozen_batchnorm(getattr(parent, child_name)))
    return frozen


def _report(model):
    per_module = OrderedDict()
    for name, param in model.named_parameters():
        top = name.split(".")[0] if "." in name else name
        counts = per_module.setdefault(top, [0, 0])
        counts[0 if param.requires_grad else 1] += param.numel()
    num_trainable = sum(c[0] for c in per_module.values())
    num_frozen = sum(c[1] for c in per_module.values())
    table = tabulate(
        [[k, v[0], v[1]] for k, v in per_module.items()] + [["total", num_trainable, num_frozen]],
        headers=["module", "trainable", "frozen"],
        tablefmt="pipe",
    )
    logger.info("Trainable / frozen parameters:\n" + table)
    return num_trainable, num_frozen
