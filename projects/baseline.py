# Baseline: plain softmax cross-entropy Faster R-CNN, one phase ("baseline").
# Defaults: LT-Shapes on a CPU. For LVIS, import the model/data/schedule from projects/baseline_lvis.py.
from ltdet2.engine import make_phase

from ..configs.lt_shapes_defaults import dataloader, lr_multiplier, model, optimizer, train

train.output_dir = "output/baseline"

phases = dict(
    baseline=make_phase(
        model=model, dataloader=dataloader, optimizer=optimizer, lr_multiplier=lr_multiplier, train=train
    ),
)
