# BACL (Qi et al., TMM 2023): decoupled training on LT-Shapes for a CPU.
#   "representation": the sigmoid classifier with a background channel, 2x the proposals kept in training,
#       weight decay 5e-5, simple copy-paste at the native 128 px (LSJ-lite 0.8-1.25 + flip); everything
#       trains from scratch on the LT-Shapes schedule (400 iterations at batch 8, as the baseline).
#   "classifier": from its final checkpoint, backbone, FPN and box-head FCs frozen; FCBL (alpha 0.85,
#       p_t 0.7) guided by the global soft confusion matrix + FHM (c=8 classes x m=12 rows, beta 0.9);
#       the stage-1 data pipeline of the baseline (flip), weight decay 1e-4.
# Paper: 12 + 12 epochs; here the classifier stage is half the representation's length (a frozen
# feature extractor converges in fewer steps).
# LVIS with the paper's settings: projects/bacl_lvis_v0_5.py, bacl_lvis_v1.py, bacl_lvis_v1_mask.py;
# ablation: projects/bacl_ablation.py.
from ltdet2.config.bacl import add_classifier_learning, add_representation_learning
from ltdet2.config.schedules import multi_step
from ltdet2.engine import make_phase

from ..configs.lt_shapes_defaults import MAX_ITER, dataloader, lr_multiplier, model, optimizer, train

IMAGE_SIZE = 128  # LT-Shapes' images; LVIS: 1280
train.output_dir = "output/bacl"  # the phases train in output/bacl/<phase>

representation = make_phase(
    model=model, dataloader=dataloader, optimizer=optimizer, lr_multiplier=lr_multiplier, train=train
)
add_representation_learning(
    representation,
    image_size=IMAGE_SIZE,
    # the small model keeps 1000 / 500 proposals before / after NMS in training (LVIS: 2000 / 1000): both 1000
    train_proposals=1000,
    # the occlusion rule's 10 px / 300 px^2 at 1280 px, scaled to the 128 px images (x 0.1, area x 0.01)
    box_shift_threshold=1,
    mask_area_threshold=3,
)

CLASSIFIER_ITERS = MAX_ITER // 2
classifier = make_phase(representation, dataloader=dataloader, optimizer=optimizer)  # stage-1 pipeline undone
add_classifier_learning(classifier)
classifier["train"].max_iter = CLASSIFIER_ITERS
classifier["train"].checkpointer.period = 50
classifier["lr_multiplier"] = multi_step(  # steps at 8/12 and 11/12 of the stage (paper: epochs 8, 11 of 12)
    CLASSIFIER_ITERS, steps=(CLASSIFIER_ITERS * 2 // 3, CLASSIFIER_ITERS * 11 // 12), warmup_iters=10
)

phases = dict(representation=representation, classifier=classifier)
del model, dataloader, optimizer, lr_multiplier, representation, classifier  # a project's root: `train` and `phases`
