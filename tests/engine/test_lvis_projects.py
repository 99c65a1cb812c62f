"""Every LVIS project (projects/*lvis*.py) runs on Detectron2's own LVIS registrations (issue #25): the built-in
``lvis_v0.5_train`` / ``lvis_v0.5_val`` / ``lvis_v1_train`` / ``lvis_v1_val`` registered again as Detectron2's
``register_all_lvis`` does with ``$DETECTRON2_DATASETS`` pointing at a folder that holds real LVIS annotations
(tests/resources/lvis_v0.5_val_100.json, 100 images, as the training file; its first images as the val file; the
same annotations with v1's categories for the v1 projects) and small dummy images. Each project trains a few
iterations per phase at short edge 64 from scratch (no init checkpoint; GroupNorm in the ResNet, as Detectron2's
from-scratch recipes, since a FrozenBN ResNet without pretrained weights makes no finite proposal) and evaluates
(bbox, and segm for Mask R-CNN) on the val file, through its derived datasets: LST's phase sets (their length in
epochs of the set built from Detectron2's registration), step-wise's scored exemplar sets.

Kept small: one project per method runs all its phases, 2 iterations each (LST: its base phase, since the 100 images
hold 190 of the 1230 classes and the first incremental phase would replay classes that have no image); the other
variants (the v1 twins, BACL's Mask R-CNN) run their first phase for one iteration. LOCE's memory warm-up (a
class-balanced pass of every class's images) is off, the memories' capacities and LST's class-agnostic mask MLP are
cut, fewer proposals, RoIs and detections; everything else is the project's own configuration."""

import json
import math
import os

import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

from ltdet2.engine import derived
from ltdet2.engine.phases import load_config, run_phases
from ltdet2.engine.project_config import has_key
from ltdet2.solver import gradient_clipping_optimizer

from fixtures.lvis_files import detectron2_builtin_lvis, write_builtin_lvis_files
from fixtures.models import ROOT

BUILTIN_NAMES = ("lvis_v0.5_train", "lvis_v0.5_val", "lvis_v1_train", "lvis_v1_val")
VAL_IMAGES = 2
# project: (the phases that run (None: all of them), iterations per phase)
PROJECTS = {
    "baseline_lvis_v1.py": (None, 2),
    "rio_lvis_v0_5.py": (None, 2),
    "rio_lvis_v1.py": (None, 1),
    "bacl_lvis_v0_5.py": (None, 2),
    "bacl_lvis_v1.py": ("representation", 1),
    "bacl_lvis_v1_mask.py": ("representation", 1),
    "crt_lvis_v1.py": (None, 2),
    "deformable_detr_lvis_v1.py": (None, 2),
    "federated_loss_lvis_v1.py": (None, 2),
    "loce_lvis_v1.py": (None, 2),
    "lst_lvis_v0_5.py": ("base", 3),
    "lst_lvis_v1.py": ("base", 3),
    "stepwise_lvis_v0_5.py": (None, 2),
    "stepwise_lvis_v1.py": ("pretrain", 1),
    "stepwise_detr_lvis_v0_5.py": (None, 2),
    "stepwise_detr_lvis_v1.py": ("pretrain", 1),
}
# overrides after TINY's: cRT's stage 2 re-initialises its classifier from the pretrain's checkpoint, as it trains
AFTER_TINY = {"crt_lvis_v1.py": ["phases.crt.train.init_reinitialize=[roi_heads.box_predictor.cls_score.]"]}
# LST's phases (10 epochs) and step-wise's head expert and transfer (1 and 2 epochs) are counted in epochs of the
# set they build (train.epochs): here this fraction of an epoch (LST's base phase set, ~100 entries at batch 2: 3
# iterations, which its two steps need)
EPOCHS = 0.06
# (key, value): set in every phase (and the root train) that has the key
TINY = (
    ("train.init_checkpoint", ""),
    ("train.init_reinitialize", "[]"),
    ("train.hooks.0.images_per_class", "0"),  # LOCE's memory warm-up (its only hook): a pass of no image
    ("train.device", "cpu"),
    ("optimizer.lr", "0.0001"),  # from scratch at 0.02, one step sends the background logit to ~400
    ("dataloader.train.total_batch_size", "2"),
    ("dataloader.train.num_workers", "0"),
    ("dataloader.test.num_workers", "0"),
    ("dataloader.train.mapper.augmentations.0.short_edge_length", "[64]"),
    ("dataloader.train.mapper.augmentations.0.max_size", "64"),
    ("dataloader.train.mapper.image_size", "64"),  # BACL's copy-paste stage
    ("dataloader.test.mapper.augmentations.0.short_edge_length", "64"),
    ("dataloader.test.mapper.augmentations.0.max_size", "64"),
    ("dataloader.evaluator.max_dets_per_image", "10"),
    ("model.backbone.bottom_up.stem.norm", "GN"),
    ("model.backbone.bottom_up.stages.norm", "GN"),
    ("model.proposal_generator.pre_nms_topk", "[200,100]"),
    ("model.proposal_generator.post_nms_topk", "[50,20]"),
    ("model.roi_heads.batch_size_per_image", "32"),
    ("model.roi_heads.box_predictor.test_score_thresh", "0.0"),  # a model 2 steps from scratch scores low
    ("model.roi_heads.box_predictor.test_topk_per_image", "10"),
    # LST's class-agnostic mask MLP: the official single layer (~157M parameters, a 630 MB checkpoint) -> the
    # two-layer option
    ("model.roi_heads.mask_head.agnostic_mlp_dim", "64"),
    ("model.roi_heads.feature_sources.0.capacity", "4"),  # RIO's replay, LOCE's MFS: 1230 x 60 / 80 entries
    ("model.roi_heads.feature_sources.0.per_class", "2"),
    # step-wise: no class is in 30 of the 100 images: head classes from 3 images, as on the tiny LT-Shapes
    ("train.derived_datasets.0.min_images", "3"),
    ("model.distillers.0.min_images", "3"),
    ("model.distillers.1.min_images", "3"),
    # Deformable DETR: its last resize (after the flip and DETR's random resize-and-crop) to the short edge 64; a
    # narrow, shallow transformer with fewer queries (two-stage mode keeps num_queries of the 85 encoder positions of
    # a 64 px image)
    ("dataloader.train.mapper.augmentations.2.short_edge_length", "[64]"),
    ("dataloader.train.mapper.augmentations.2.max_size", "64"),
    ("model.d_model", "64"),
    ("model.encoder_layers", "1"),
    ("model.decoder_layers", "2"),
    ("model.ffn_dim", "128"),
    ("model.num_queries", "50"),
    ("model.num_detections", "10"),
)


@pytest.fixture(scope="module")
def builtin_lvis(tmp_path_factory):
    """Detectron2's built-in LVIS names registered on a folder with the real annotations and dummy images."""
    root = str(tmp_path_factory.mktemp("detectron2_datasets"))
    for version in ("v0.5", "v1"):
        write_builtin_lvis_files(root, version, val_images=VAL_IMAGES)
    before = set(DatasetCatalog.list())
    with detectron2_builtin_lvis(root, BUILTIN_NAMES):
        yield root
    for name in set(DatasetCatalog.list()) - before:  # the projects' derived sets, on files of this module
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def tiny_overrides(config_file, output_dir, iterations):
    """``iterations`` per phase (:data:`EPOCHS` for a phase counted in epochs of its set) and the :data:`TINY`
    overrides whose key some phase (or the root train) of the project has."""
    cfg = load_config(config_file)
    phases = {f"phases.{name}.": cfg.phases[name] for name in cfg.phases} if "phases" in cfg else {"": cfg}
    length = []
    for prefix, phase in phases.items():
        if phase.train.get("epochs", None) is not None:
            length += [f"{prefix}train.max_iter=null", f"{prefix}train.epochs={EPOCHS}"]
        else:
            length += [f"{prefix}train.max_iter={iterations}"]
    namespaces = [*phases.values(), cfg]
    return [f"train.output_dir={output_dir}", *length] + [
        f"{key}={value}" for key, value in TINY if any(has_key(namespace, key) for namespace in namespaces)
    ]


def check_derived_sets(phase_cfg, folder, root):
    """The phase's derived sets hold the source json's annotations (ids and categories) of Detectron2's file."""
    for builder in phase_cfg.train.get("derived_datasets", None) or []:
        with open(os.path.join(root, "lvis", f"{builder.source}.json")) as f:  # lvis_<version>_train.json
            source = {a["id"]: a["category_id"] for a in json.load(f)["annotations"]}
        with open(os.path.join(folder, f"{builder.name}.json")) as f:
            derived = json.load(f)
        assert derived["annotations"]
        if "scores_from_phase" in builder:  # step-wise: the source's ids and category ids
            assert all(source[a["id"]] == a["category_id"] for a in derived["annotations"])
        else:  # LST: renumbered by rank, the source's ids kept as source_annotation_id / source_id
            source_id = {c["id"]: c["source_id"] for c in derived["categories"]}
            assert all(source[a["source_annotation_id"]] == source_id[a["category_id"]] for a in derived["annotations"])


@pytest.mark.parametrize("project", sorted(PROJECTS))
def test_lvis_project_trains_and_evaluates_on_detectron2s_lvis_registrations(
    builtin_lvis, project, tmp_path, monkeypatch
):
    config_file = os.path.join(ROOT, "projects", project)
    output = str(tmp_path / "out")
    only, iterations = PROJECTS[project]
    cfg = load_config(config_file, tiny_overrides(config_file, output, iterations) + AFTER_TINY.get(project, []))
    scored = []
    score_annotations = derived.score_annotations
    monkeypatch.setattr(derived, "score_annotations", lambda *a, **k: scored.append(a[1]) or score_annotations(*a, **k))
    results = run_phases(cfg, only=only)
    phases = dict(cfg.phases) if "phases" in cfg else {"": cfg}
    assert list(results) == ([only] if only else list(phases))
    # step-wise: D_head and D_tail come from one scoring of the training set by the pretrained model
    requests = {
        (b.scores_from_phase, b.source, b.get("score", "max_foreground"))
        for phase in results
        for b in phases[phase].train.get("derived_datasets", None) or []
        if "scores_from_phase" in b
    }
    assert len(scored) == len(requests)
    for phase, metrics in results.items():
        roi_heads = phases[phase].model.get("roi_heads", None) or {}  # Deformable DETR has none
        mask = roi_heads.get("mask_head", None) is not None  # Mask R-CNN: bbox and segm
        assert set(metrics) == ({"bbox", "segm"} if mask else {"bbox"}), (phase, metrics)
        for task in metrics.values():
            assert task["AP"] == task["AP"] and 0 <= task["AP"] <= 100  # evaluated: a number, not NaN
        assert os.path.isfile(os.path.join(output, phase, "inference", "per_class_ap_bbox.json"))
        check_derived_sets(phases[phase], os.path.join(output, phase), builtin_lvis)
        with open(os.path.join(output, phase, "metrics.json")) as f:
            trained = 1 + max(json.loads(line)["iteration"] for line in f if line.strip())
        if phases[phase].train.get("epochs", None) is None:
            assert trained == iterations
        else:  # the length in epochs of the phase set built from Detectron2's registration
            (builder,) = phases[phase].train.derived_datasets
            with open(os.path.join(output, phase, f"{builder.name}.json")) as f:
                entries = len(json.load(f)["images"])
            assert trained == max(1, round(EPOCHS * entries / 2))
            assert trained >= (3 if project.startswith("lst") else 2), (phase, entries)  # every lr step falls


def test_federated_loss_lvis_v1_has_centernet2s_lvis_setting():
    """CenterNet2's LVIS_CenterNet2_R50_Fed_1x.yaml on the shared Mask R-CNN: sigmoid CE + federated loss (50 classes,
    image_count ** 0.5 of the training set, biases at prior 0.01), RFS at 0.001, 1x at batch 16 with its warm-up,
    gradients clipped by value at 1.0, 300 detections at 0.02."""
    cfg = load_config(os.path.join(ROOT, "projects", "federated_loss_lvis_v1.py"))
    assert "phases" not in cfg
    predictor = cfg.model.roi_heads.box_predictor
    assert predictor.use_sigmoid_ce and predictor.use_fed_loss and predictor.fed_loss_num_classes == 50
    weights = predictor.get_fed_loss_cls_weights
    assert (weights.dataset_name, weights.freq_weight_power, weights.num_classes) == ("lvis_v1_train", 0.5, 1203)
    assert predictor.get("cls_loss", None) is None  # Detectron2's own loss, not one of ltdet2's
    assert predictor.cls_bias_init == pytest.approx(-math.log(99))  # CenterNet2's PRIOR_PROB 0.01
    assert (predictor.test_score_thresh, predictor.test_topk_per_image) == (0.02, 300)
    assert cfg.model.roi_heads.mask_head is not None and cfg.model.roi_heads.num_classes == 1203
    sampler = cfg.dataloader.train.sampler
    assert sampler._target_.__name__ == "repeat_factor_sampler" and (sampler.threshold, sampler.power) == (0.001, 0.5)
    assert cfg.dataloader.train.total_batch_size == 16 and cfg.optimizer.lr == 0.02
    assert cfg.train.max_iter == 90000 and cfg.train.init_checkpoint.endswith("ImageNetPretrained/MSRA/R-50.pkl")
    optimizer = cfg.optimizer  # Base-CenterNet2.yaml's CLIP_GRADIENTS: Detectron2's, by value at 1.0
    assert optimizer._target_ is gradient_clipping_optimizer and optimizer.optimizer_class == "torch.optim.sgd.SGD"
    assert (optimizer.clip_type, optimizer.clip_value) == ("value", 1.0)
    schedule = cfg.lr_multiplier
    assert list(schedule.scheduler.milestones) == [60000, 80000] and schedule.scheduler.num_updates == 90000
    assert schedule.warmup_length * 90000 == pytest.approx(4000) and schedule.warmup_factor == 0.00025


def test_crt_lvis_v1_has_the_eqlv2_codes_crt_setting():
    """The EQLv2 code's cRT (configs/decouple/crt_r50_8x2_1x.py): a 1x instance-sampled Mask R-CNN, then only the
    classifier, re-initialised, with class-aware sampling for 75000 iterations (steps 50000, 70000)."""
    cfg = load_config(os.path.join(ROOT, "projects", "crt_lvis_v1.py"))
    assert list(cfg.phases) == ["pretrain", "crt"]
    pretrain, crt = cfg.phases.pretrain, cfg.phases.crt
    # stage 1: 12 epochs of the 100170 images at batch 16, steps at epochs 8 and 11, Detectron2's instance sampling
    assert pretrain.train.max_iter == 75128 and list(pretrain.lr_multiplier.scheduler.milestones) == [50085, 68867]
    assert pretrain.dataloader.train.get("sampler", None) is None and pretrain.train.trainable is None
    assert pretrain.train.init_checkpoint.endswith("ImageNetPretrained/MSRA/R-50.pkl")
    assert pretrain.model.roi_heads.box_predictor.get("use_sigmoid_ce", False) is False  # softmax CE
    # stage 2: the classifier alone, re-initialised, class-aware sampling
    assert list(crt.train.trainable) == list(crt.train.init_reinitialize) == ["roi_heads.box_predictor.cls_score."]
    assert crt.dataloader.train.sampler._target_.__name__ == "class_aware_sampler"
    assert crt.train.max_iter == 75000 and list(crt.lr_multiplier.scheduler.milestones) == [50000, 70000]
    for phase in (pretrain, crt):
        assert phase.dataloader.train.total_batch_size == 16 and phase.optimizer.lr == 0.02
        assert phase.lr_multiplier.warmup_length * phase.train.max_iter == pytest.approx(500)
        assert phase.lr_multiplier.warmup_factor == 0.001
        assert phase.model.roi_heads.box_predictor.test_topk_per_image == 300
    assert crt.model == pretrain.model  # plain CE, the same model: only what trains and the data differ
