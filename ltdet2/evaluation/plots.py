"""
Per-class AP (and per-class mean score) against training image count, coloured by LVIS
frequency group. Reads the ``per_class_ap_<task>.json`` written by
:class:`ltdet2.evaluation.LTLVISEvaluator`.
"""

import logging
import math
import os

import numpy as np
import torch

from ltdet2.utils.json_io import read_json

__all__ = ["agg_figure", "load_per_class_ap", "load_mean_scores", "plot_per_class_ap"]

logger = logging.getLogger(__name__)

_GROUP_COLORS = {"r": "tab:red", "c": "tab:orange", "f": "tab:blue"}
_GROUP_NAMES = {"r": "rare", "c": "common", "f": "frequent"}


def load_per_class_ap(path_or_records):
    """
    Args:
        path_or_records (str | list[dict]): per-class AP json (list of records with keys
            id, name, frequency, image_count, AP) or the records.
    Returns:
        list[dict]: the records, sorted by category id; AP None -> NaN.
    """
    if isinstance(path_or_records, (str, os.PathLike)):
        path = os.fspath(path_or_records)
        records = read_json(path, "per-class AP")
    else:
        path, records = "<records>", path_or_records
    if not isinstance(records, list):
        raise ValueError(f"per-class AP {path} must be a list of records, got {type(records).__name__}")
    out = []
    for i, r in enumerate(records):
        missing = [k for k in ("id", "name", "frequency", "image_count", "AP") if k not in r]
        if missing:
            raise ValueError(f"per-class AP {path}: record {i} lacks {missing}")
        r = dict(r)
        r["AP"] = float("nan") if r["AP"] is None else float(r["AP"])
        out.append(r)
    return sorted(out, key=lambda r: r["id"])


def load_mean_scores(path_or_obj, records):
    """
    Per-class mean score aligned with ``records``.

    Args:
        path_or_obj: a json file / dict mapping category name or id (as int or str) to score,
            or a ``.npy`` / ``.pt`` file / array-like vector of length C (contiguous order =
            records sorted by id); a vector of length C+1 (background last, as LOCE's mean
            score) is accepted and its last entry dropped.
        records (list[dict]): per-class records from :func:`load_per_class_ap`.
    Returns:
        ndarray [C]: float scores, NaN for classes missing from a mapping.
    """
    obj, src = path_or_obj, "<scores>"
    if isinstance(path_or_obj, (str, os.PathLike)):
        src = os.fspath(path_or_obj)
        if not src.endswith((".npy", ".pt", ".pth")):
            obj = read_json(src, "mean-score")
        elif not os.path.isfile(src):
            raise FileNotFoundError(f"mean-score file not found: {src}")
        elif src.endswith(".npy"):
            obj = np.load(src)
        else:
            obj = torch.load(src, map_location="cpu")
            if isinstance(obj, dict) and not all(isinstance(k, (str, int)) for k in obj):
                raise ValueError(f"mean-score file {src}: unsupported content")
    C = len(records)
    if isinstance(obj, dict):
        by_name = {r["name"]: i for i, r in enumerate(records)}
        by_id = {int(r["id"]): i for i, r in enumerate(records)}
        out = np.full(C, np.nan)
        unknown = []
        for k, v in obj.items():
            if isinstance(k, str) and k in by_name:
                out[by_name[k]] = float(v)
            elif str(k).lstrip("-").isdigit() and int(k) in by_id:
                out[by_id[int(k)]] = float(v)
            else:
                unknown.append(k)
        if unknown:
            raise ValueError(f"mean scores {src}: keys not in the per-class AP file: {unknown[:10]}")
        return out
    vec = np.asarray(obj.detach().cpu().numpy() if hasattr(obj, "detach") else obj, dtype=np.float64)
    vec = vec.reshape(-1)
    if len(vec) == C + 1:
        vec = vec[:C]
    if len(vec) != C:
        raise ValueError(f"mean scores {src}: vector of length {len(vec)}, expected {C} (or {C + 1})")
    return vec


def agg_figure(width, height):
    """A matplotlib ``Figure`` (inches) on an Agg canvas: no pyplot, no global backend switch."""
    # lazy: matplotlib is heavy to import and only needed to draw
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def plot_per_class_ap(per_class_ap, out, *, mean_scores=None, title=None, min_image_count=1):
    """
    Plot per-class AP (percent) against training image count (log x axis), one point per
    class coloured by frequency group (r/c/f); with ``mean_scores`` a second panel shows
    the per-class mean score on the same x axis. Classes with undefined AP are left out of
    the AP panel.

    Args:
        per_class_ap (str | list[dict]): evaluator's per_class_ap_<task>.json or its records.
        out (str): PNG path to write.
        mean_scores: see :func:`load_mean_scores`; optional.
        title (str): figure title.
        min_image_count (int): image counts are clipped below at this value for the log axis.
    Returns:
        str: ``out``.
    """
    records = load_per_class_ap(per_class_ap)
    x = np.array([max(r["image_count"] or 0, min_image_count) for r in records], dtype=np.float64)
    ap = np.array([r["AP"] for r in records], dtype=np.float64)
    freq = np.array([r["frequency"] for r in records])
    scores = None if mean_scores is None else load_mean_scores(mean_scores, records)

    nrows = 1 if scores is None else 2
    fig = agg_figure(8, 3.6 * nrows)
    axes = fig.subplots(nrows, 1, sharex=True, squeeze=False)
    axes = axes[:, 0]
    panels = [(axes[0], ap, "AP (%)")]
    if scores is not None:
        panels.append((axes[1], scores, "mean score"))
    for ax, y, label in panels:
        for g in ("r", "c", "f"):
            sel = (freq == g) & np.isfinite(y)
            n_group = int((freq == g).sum())
            mean = float(np.mean(y[sel])) if sel.any() else math.nan
            ax.scatter(
                x[sel], y[sel], s=10, alpha=0.7, color=_GROUP_COLORS[g],
                label=f"{_GROUP_NAMES[g]} ({int(sel.sum())}/{n_group}, mean {mean:.1f})"
                if label.startswith("AP") else f"{_GROUP_NAMES[g]} (mean {mean:.3f})",
            )  # fmt: skip
        ax.set_xscale("log")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[-1].set_xlabel("training images per class (log)")
    if title:
        axes[0].set_title(title)
    fig.tight_layout()
    d = os.path.dirname(os.path.abspath(out))
    os.makedirs(d, exist_ok=True)
    fig.savefig(out, dpi=120)
    logger.info("Saved per-class AP plot to %s", out)
    return out
