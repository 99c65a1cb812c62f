"""What MODEL.LTDET2 refuses: the multi-phase methods (LST, step-wise: LazyConfig-only, the message names the project
files), methods that cannot go together, and methods turned on for heads that would not build them."""

import argparse
import os

import pytest

from detectron2.config import get_cfg
from detectron2.modeling import build_model

from ltdet2.config.yaml_config import add_ltdet2_config, check_ltdet2_config
from ltdet2.config.yaml_trainer import check_yaml_config

from fixtures.models import ROOT, load_repo_module

BASE = os.path.join(ROOT, "configs", "yaml", "Base-LT-Shapes.yaml")


def base_cfg(*opts):
    cfg = get_cfg()
    add_ltdet2_config(cfg)
    cfg.merge_from_file(BASE)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


@pytest.mark.parametrize(
    "method,project",
    [("lst", "projects/lst.py"), ("LST", "projects/lst.py"), ("stepwise", "projects/stepwise.py"),
     ("step-wise", "projects/stepwise.py")],
)  # fmt: skip
def test_multi_phase_methods_are_lazyconfig_only(method, project):
    cfg = base_cfg("MODEL.LTDET2.METHOD", method)
    with pytest.raises(ValueError, match="LazyConfig") as error:
        check_ltdet2_config(cfg)
    message = str(error.value)
    assert project in message and "scripts/lazyconfig_train_net.py" in message and "lvis_v1" in message
    with pytest.raises(ValueError, match=project):  # Detectron2's own build_model refuses it too
        build_model(cfg)


def test_train_net_refuses_lst_before_writing_anything(tmp_path):
    config = tmp_path / "lst.yaml"
    output_dir = tmp_path / "out"
    config.write_text(f'_BASE_: "{BASE}"\nMODEL:\n  LTDET2:\n    METHOD: "lst"\nOUTPUT_DIR: "{output_dir}"\n')
    train_net = load_repo_module("scripts/train_net.py")
    args = argparse.Namespace(config_file=str(config), opts=[], eval_only=False, resume=False)
    with pytest.raises(ValueError, match=r"projects/lst\.py"):
        train_net.setup(args)
    assert not output_dir.exists()


@pytest.mark.parametrize(
    "opts,match",
    [
        (["MODEL.LTDET2.METHOD", "seesaw"], "expected one of"),
        (["MODEL.LTDET2.EBL.ENABLED", True, "MODEL.LTDET2.FCBL.ENABLED", True,
          "MODEL.LTDET2.CLASS_SCORING", "sigmoid_background"], "both classification losses"),
        (["MODEL.LTDET2.FCBL.ENABLED", True], "CLASS_SCORING to 'sigmoid_background'"),
        (["MODEL.LTDET2.FHM.ENABLED", True], "CLASS_SCORING to 'sigmoid_background'"),
        (["MODEL.LTDET2.EBL.ENABLED", True, "MODEL.LTDET2.CLASS_SCORING", "sigmoid_background"], "softmax"),
        (["MODEL.LTDET2.MEMORY_WARMUP.ENABLED", True], "needs MFS.ENABLED or EBL.ENABLED"),
        (["MODEL.LTDET2.CLASSIFIER.NAME", "cosine"], "CLASSIFIER.NAME"),
        (["MODEL.LTDET2.MFS.STORAGE_DTYPE", "half"], "MFS.STORAGE_DTYPE"),
        (["MODEL.LTDET2.RFS.ENABLED", True, "DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler"],
         "choose one sampler"),
    ],
)  # fmt: skip
def test_refused_combinations(opts, match):
    with pytest.raises(ValueError, match=match):
        check_ltdet2_config(base_cfg(*opts))


def test_methods_need_long_tail_heads():
    cfg = base_cfg("MODEL.ROI_HEADS.NAME", "StandardROIHeads", "MODEL.LTDET2.MFS.ENABLED", True)
    with pytest.raises(ValueError, match="ROI_HEADS.NAME: LongTailROIHeads"):
        check_yaml_config(cfg)
    check_yaml_config(base_cfg("MODEL.LTDET2.MFS.ENABLED", True))  # LongTailROIHeads: fine


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(ROOT, "configs", "yaml"))))
def test_shipped_configs_pass_the_checks(name):
    cfg = get_cfg()
    add_ltdet2_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "yaml", name))
    check_yaml_config(cfg)
