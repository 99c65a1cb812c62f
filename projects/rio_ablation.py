# RIO ablation on LT-Shapes (the paper's Tab. 5 rows on LVIS v1, plus replay alone): four independent
# runs from scratch with the same model, schedule and cosine classifier, as phases of one project:
#   baseline   cosine classifier, uniform sampling
#   rfs        + repeat-factor sampling (image level)
#   replay     + object replay only (object level, OCS)
#   rio        RFS + object replay (RIO)
# Every phase starts from its own train.init_checkpoint (train.init_from_phase=""), not from the
# previous phase. Run: python scripts/lazyconfig_train_net.py --config-file projects/rio_ablation.py
from ltdet2.engine import make_phase

from ..configs.lt_shapes_defaults import dataloader, lr_multiplier, model, optimizer, train
from ..configs.rio import add_cosine_classifier, add_object_replay, add_rfs

train.output_dir = "output/rio_ablation"
train.init_from_phase = ""  # independent runs
add_cosine_classifier(model)

baseline = make_phase(model=model, dataloader=dataloader, optimizer=optimizer, lr_multiplier=lr_multiplier,
                      train=train)

rfs = make_phase(baseline)
add_rfs(rfs["dataloader"])

replay = make_phase(baseline)
add_object_replay(replay["model"])

rio = make_phase(baseline)
add_rfs(rio["dataloader"])
add_object_replay(rio["model"])

phases = dict(baseline=baseline, rfs=rfs, replay=replay, rio=rio)
