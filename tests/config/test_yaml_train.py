"""A YAML LOCE fine-tune (configs/yaml/loce_lt_shapes.yaml) trained by Detectron2's DefaultTrainer
(LongTailTrainer) for a few iterations on the tiny LT-Shapes: the memory warm-up fills the memory and mean scores
before the first iteration, EBL and MFS train with finite losses, the feature extractor is frozen, the LVIS
evaluator runs at the end, and a resumed run is not warmed up again."""

import math
import os

import torch

from detectron2.config import get_cfg
from detectron2.engine import HookBase

from ltdet2.config.yaml_config import add_ltdet2_config
from ltdet2.config.yaml_trainer import LongTailTrainer, YAMLMemoryWarmup
from ltdet2.modeling.feature_sources import MemoryFeatureSampler
from ltdet2.modeling.losses import EquilibriumLoss

from fixtures.models import ROOT, TEST_DEVICE, TINY_LT_SHAPES


def tiny_loce_cfg(tiny_dataset, output_dir):
    train_name, val_name = tiny_dataset
    cfg = get_cfg()
    add_ltdet2_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "yaml", "loce_lt_shapes.yaml"))
    cfg.merge_from_list(
        [
            "MODEL.WEIGHTS", "",  # no pretrain here: the fine-tune's mechanics only
            "MODEL.DEVICE", TEST_DEVICE,
            "MODEL.ROI_HEADS.NUM_CLASSES", TINY_LT_SHAPES.num_classes,
            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32,
            "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 200, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 100,
            "MODEL.RPN.PRE_NMS_TOPK_TEST", 100, "MODEL.RPN.POST_NMS_TOPK_TEST", 50,
            "MODEL.LTDET2.MEMORY_WARMUP.IMAGES_PER_CLASS", 1,
            "DATASETS.TRAIN", (train_name,),
            "DATASETS.TEST", (val_name,),
            "DATALOADER.NUM_WORKERS", 0,
            "SOLVER.IMS_PER_BATCH", 2,
            "SOLVER.MAX_ITER", 3,
            "SOLVER.STEPS", (2,),
            "SOLVER.WARMUP_ITERS", 1,
            "TEST.DETECTIONS_PER_IMAGE", 50,
            "OUTPUT_DIR", output_dir,
        ]
    )  # fmt: skip
    return cfg


class MemoryProbe(HookBase):
    """Records, before the first iteration (after the warm-up hook's ``before_train``), what the memories hold."""

    def __init__(self, mfs, mean_score):
        self.mfs, self.mean_score = mfs, mean_score
        self.filled = self.scores = None

    def before_train(self):
        self.filled = self.mfs.queue.fill_counts.clone()
        self.scores = self.mean_score.mean_scores.clone()


def test_yaml_loce_trains_with_default_trainer(tiny_dataset, tmp_path):
    cfg = tiny_loce_cfg(tiny_dataset, str(tmp_path / "loce"))
    trainer = LongTailTrainer(cfg)
    model = trainer.model
    heads = model.roi_heads
    (mfs,) = heads.feature_sources
    assert isinstance(mfs, MemoryFeatureSampler)
    assert isinstance(heads.box_predictor.cls_loss, EquilibriumLoss)
    mean_score = heads.indicators["mean_score"]
    assert [type(h) for h in trainer._hooks].count(YAMLMemoryWarmup) == 1
    # the decoupled fine-tune: backbone, FPN and box-head FCs frozen; predictor and RPN train
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith(("roi_heads.box_predictor.", "proposal_generator.")) for name in trainable)
    assert any(name.startswith("roi_heads.box_predictor.") for name in trainable)

    probe = MemoryProbe(mfs, mean_score)
    trainer.register_hooks([probe])  # after the warm-up
    trainer.resume_or_load(resume=False)
    assert trainer.resumed_from is None
    trainer.train()

    # warmed up before the first iteration: every class of the tiny set has entries, mean scores moved off 0.01
    assert bool((probe.filled > 0).all()), probe.filled
    assert not torch.allclose(probe.scores[:-1], torch.full_like(probe.scores[:-1], 0.01))
    assert int(mfs.queue.fill_counts.sum()) >= int(probe.filled.sum())
    for key in ("loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc", "total_loss"):
        values = [value for value, _ in trainer.storage.history(key).values()]
        assert len(values) == 3 and all(math.isfinite(v) for v in values), (key, values)
    assert os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    assert (
        "APr" in trainer._last_eval_results["bbox"]
    )  # the end-of-training evaluation: LTLVISEvaluator's frequency groups (NaN here: 3 steps from random weights)

    # a resumed run gets its memories from the checkpoint: the warm-up does not run again
    resumed = LongTailTrainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.resumed_from and resumed.resumed_from.endswith("model_final.pth")
    (resumed_mfs,) = resumed.model.roi_heads.feature_sources
    filled = resumed_mfs.queue.fill_counts.clone()
    assert torch.equal(filled, mfs.queue.fill_counts)
    (warmup,) = [h for h in resumed._hooks if isinstance(h, YAMLMemoryWarmup)]
    warmup.before_train()
    assert torch.equal(resumed_mfs.queue.fill_counts, filled)
