# Your own dataset (README "Your own dataset"): an LVIS- or COCO-format json registered with one call,
# then the LT-Shapes baseline trained on it. The data here is a subset of LT-Shapes (every 3rd class,
# json ids 1, 4, ..., 70) written by:  python scripts/make_lt_shapes_subset.py --out datasets/lt_shapes_subset
# Run:  python scripts/lazyconfig_train_net.py --config-file docs/examples/own_dataset.py
from ltdet2.data import register_lvis_format_dataset

from ...configs.lt_shapes_defaults import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

DATA = "datasets/lt_shapes_subset"  # the json files' folder is also the image root
register_lvis_format_dataset("shapes_subset_train", f"{DATA}/train.json", DATA)
# evaluation split: AP_r / AP_c / AP_f groups from the training counts
register_lvis_format_dataset("shapes_subset_val", f"{DATA}/val.json", DATA, train_json=f"{DATA}/train.json")

dataloader.train.dataset.names = "shapes_subset_train"
dataloader.test.dataset.names = "shapes_subset_val"  # the evaluator follows dataloader.test
model.roi_heads.num_classes = 24  # set before adding any method piece (configs/loce.py, configs/rio.py)
train.output_dir = "output/own_dataset"
