"""scripts/class_group_ap.py: group means of per-class AP, classes matched by name, ranges of one phase's order."""

import math

from fixtures.models import load_repo_module


def record(seed, order_aps, other_aps):
    def per_class(names, aps):
        return [{"name": n, "AP": ap} for n, ap in zip(names, aps)]

    return {
        "seed": seed,
        "phases": {
            "order": {"per_class_ap_segm": per_class(["a", "b", "c"], order_aps)},
            "other": {"per_class_ap_segm": per_class(["c", "a", "b"], other_aps)},  # another class order
        },
    }


def test_group_means_match_classes_by_name_and_skip_undefined_ap():
    script = load_repo_module("scripts/class_group_ap.py")
    records = [record(0, [10.0, 20.0, 30.0], [90.0, 50.0, None]), record(1, [12.0, 22.0, 32.0], [70.0, 60.0, 40.0])]
    means = script.group_means(
        records, order_phase="order", groups={"ab": (0, 2), "c": (2, 3)}, phases=["order", "other"], task="segm"
    )
    assert means["order"] == {"ab": [15.0, 17.0], "c": [30.0, 32.0]}
    # seed 0: a=50, b undefined -> 50; c=90. seed 1: a=60, b=40 -> 50; c=70
    assert means["other"] == {"ab": [50.0, 50.0], "c": [90.0, 70.0]}
    records[0]["phases"]["other"]["per_class_ap_segm"][1]["AP"] = None  # a and b undefined: no mean
    assert math.isnan(script.group_means(records, order_phase="order", groups={"ab": (0, 2)}, phases=["other"],
                                         task="segm")["other"]["ab"][0])  # fmt: skip
