# RIO on LVIS v0.5 with the paper's settings (sec. 4.1) on configs/lvis_v0_5_defaults.py (90k
# iterations with steps at 60k / 80k); the method pieces as in projects/rio_lvis_v1.py. One phase.
from ltdet2.config.rio import add_rio

from ..configs.lvis_v0_5_defaults import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

add_rio(model, dataloader)
train.output_dir = "output/rio_lvis_v0_5"
