# Your own dataset (docs/tutorials/datasets.md): an LVIS- or COCO-format json registered with one call, then the
# LT-Shapes baseline trained on it. Copy this file anywhere: it imports only the installed ltdet2, and its data path
# is relative to the file. The data here is a subset of LT-Shapes (every 3rd class, json ids 1, 4, ..., 70), written
# next to this file by (from an ltdet2 checkout):
#   python scripts/make_lt_shapes_subset.py --out <this file's folder>/lt_shapes_subset
# Run:  python scripts/lazyconfig_train_net.py --config-file <this file>
import os

from ltdet2.data import register_lvis_format_dataset
from ltdet2.model_zoo import get_config

# the LT-Shapes defaults (projects' shared pieces), loaded from the installed package
defaults = get_config("configs/lt_shapes_defaults.py")
dataloader = defaults.dataloader
lr_multiplier = defaults.lr_multiplier
model = defaults.model
optimizer = defaults.optimizer
train = defaults.train
del defaults

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lt_shapes_subset")  # json files and image root
register_lvis_format_dataset("shapes_subset_train", f"{DATA}/train.json", DATA)
# evaluation split: AP_r / AP_c / AP_f groups from the training counts
register_lvis_format_dataset("shapes_subset_val", f"{DATA}/val.json", DATA, train_json=f"{DATA}/train.json")

dataloader.train.dataset.names = "shapes_subset_train"
dataloader.test.dataset.names = "shapes_subset_val"  # the evaluator follows dataloader.test
model.roi_heads.num_classes = 24  # set before adding any method piece (ltdet2.config.loce, ltdet2.config.rio)
train.output_dir = "output/own_dataset"
