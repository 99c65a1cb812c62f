"""cRT's stage-2 pieces (classifier re-training; Kang et al., ICLR 2020, "Decoupling representation and classifier
for long-tailed recognition"), to apply to the re-training phase of any R-CNN project (``projects/crt_lvis_v1.py``).

cRT keeps the representation learnt with instance sampling, re-initialises the classifier and re-trains only it with
class-balanced sampling. For detection, as the EQLv2 code's cRT baseline (tztztztztz/eqlv2,
configs/decouple/crt_r50_8x2_1x.py): only the box predictor's classification layer trains (its ``freeze`` of the bbox
head keeps ``fc_cls`` alone trainable; backbone, FPN, RPN, box-head FCs, box regressor and mask head frozen), it
starts re-initialised (tools/ckpt_surgery.py ``--method remove`` drops ``fc_cls`` from the stage-1 checkpoint), and
images are drawn class-aware (its ``CASDataset``: :class:`ltdet2.data.samplers.ClassAwareSampler`).
"""

from detectron2.config import LazyCall as L

from ltdet2.data.samplers import class_aware_sampler

# only the classifier (Detectron2's FastRCNNOutputLayers.cls_score: the C+1 logits) trains and is re-initialised
CRT_TRAINABLE = ["roi_heads.box_predictor.cls_score."]


def add_class_aware_sampling(dataloader, seed=None):
    """Class-aware (class-balanced) image sampling on ``dataloader.train``: each draw a class, every class with an
    image equally often, then one of its images (:func:`ltdet2.data.samplers.class_aware_sampler`).

    The sampler's dataset dicts are its sibling ``dataloader.train.dataset`` (an interpolation one level up, as
    :func:`ltdet2.config.rio.add_rfs`), so an override of the training dataset reaches the sampler too."""
    dataloader.train.sampler = L(class_aware_sampler)(dataset_dicts="${..dataset}", seed=seed)
    return dataloader


def add_crt(phase, trainable=CRT_TRAINABLE, reinitialize=True, seed=None):
    """cRT's re-training on a phase that starts from the instance-sampled model: ``train.trainable`` (the
    classifier), ``train.init_reinitialize`` (the same entries dropped from the start checkpoint, so the classifier
    starts from the model's fresh initialisation; ``reinitialize=False`` fine-tunes it instead) and class-aware
    sampling."""
    phase["train"].trainable = list(trainable)
    phase["train"].init_reinitialize = list(trainable) if reinitialize else []
    add_class_aware_sampling(phase["dataloader"], seed=seed)
    return phase
