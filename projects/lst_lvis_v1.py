# LST on LVIS v1 (no paper or official setting exists; ours): projects/lst_lvis_v0_5.py's settings on the v1 data
# (COCO Mask R-CNN init, batch 8 at scale 800, every phase 10 epochs of its set), base 270 classes then the
# remaining 933 in 6 near-equal phases (156, 156, 156, 155, 155, 155).
from ltdet2.config.lst import lvis_lst_phases

from ..configs.lvis_v1_defaults import NUM_CLASSES, dataloader, model, optimizer, train

train.output_dir = "output/lst_lvis_v1"
phases = lvis_lst_phases(
    model,
    dataloader,
    optimizer,
    train,
    num_classes=NUM_CLASSES,
    source="lvis_v1_train",
    source_val="lvis_v1_val",
    init="coco",
)
del model, dataloader, optimizer  # a project's root: `train` and `phases`
