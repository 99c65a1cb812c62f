# Two-stage Deformable DETR with iterative box refinement on LVIS v1 with the paper's settings (Zhu et al., ICLR 2021;
# the baseline of the step-wise paper, Dong et al., ICCV 2023: box AP 25.1 / APr 11.9 on v1 with R-50): ResNet-50
# from ImageNet weights (Detectron2's, as the R-CNN projects; stem and res2 frozen, FrozenBN, as the official code's
# torchvision backbone) at strides 8/16/32 plus the stride-64 level, 6 encoder and 6 decoder layers at width 256
# (8 heads, 4 points, FFN 1024, dropout 0.1), 300 queries, focal loss with the official weights (cls 2, L1 5, GIoU 2,
# alpha 0.25; the step-wise code pre-trains with cls 3) on every decoder layer and the encoder's proposals, AdamW lr
# 2e-4 (backbone, sampling offsets and reference points 2e-5), weight decay 1e-4, gradient norm clipped to 0.1,
# batch 16, 50 epochs with lr x0.1 after epoch 40, 300 detections per image for the LVIS evaluation.
#
# DETR's augmentation from Detectron2's pieces: horizontal flip; then with probability 0.5 a resize to short edge
# 400/500/600 and a random crop of 384-600 px on each side (DETR's RandomSizeCrop); then a resize to short edge
# 480-800 (step 32, long edge <= 1333). Evaluation at short edge 800. Boxes cut by the crop are clipped and empty ones
# dropped (Detectron2's DatasetMapper), as DETR's crop does.
#
# The length is counted in iterations (50 epochs of the 100170 training images at batch 16: 313031, the drop at
# 250425), so the file also runs with Detectron2's own script. Needs the data under $DETECTRON2_DATASETS and GPUs.
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import BasicStem, ResNet

from ltdet2.config.schedules import epochs_to_iters, multi_step

from ..configs.common.optim import DeformableDETRAdamW
from ..configs.lvis_v1_defaults import BATCH_SIZE, NUM_CLASSES, NUM_TRAIN_IMAGES, dataloader, train
from ..configs.models.deformable_detr_r18_small import model


def iters(epochs):
    return epochs_to_iters(epochs, NUM_TRAIN_IMAGES, BATCH_SIZE)


model.backbone = L(ResNet)(
    stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
    stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=True, norm="FrozenBN"),
    out_features=["res3", "res4", "res5"],
    freeze_at=2,
)
model.num_classes = NUM_CLASSES
model.d_model = 256
model.encoder_layers = 6
model.decoder_layers = 6
model.ffn_dim = 1024
model.num_queries = 300

DETR_SCALES = [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800]
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    L(T.RandomApply)(
        tfm_or_aug=L(T.AugmentationList)(
            augs=[
                L(T.ResizeShortestEdge)(short_edge_length=[400, 500, 600], sample_style="choice"),
                L(T.RandomCrop)(crop_type="absolute_range", crop_size=(384, 600)),
            ]
        ),
        prob=0.5,
    ),
    L(T.ResizeShortestEdge)(short_edge_length=DETR_SCALES, max_size=1333, sample_style="choice"),
]
dataloader.train.mapper.use_instance_mask = False  # boxes only
dataloader.train.total_batch_size = BATCH_SIZE

optimizer = DeformableDETRAdamW

train.max_iter = iters(50)
lr_multiplier = multi_step(iters(50), steps=(iters(40),), warmup_iters=0)
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.output_dir = "output/deformable_detr_lvis_v1"
