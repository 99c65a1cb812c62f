# RIO ablation on LT-Shapes (the paper's Tab. 5 rows, plus replay alone): one softmax-CE pretrain
# (projects/loce.py's, the baseline's schedule), then four end-to-end trainings of equal length from
# it, all with the cosine classifier (scale 48):
#   baseline   uniform image sampling
#   rfs        + repeat-factor sampling (image level)
#   replay     + object replay only (object level, OCS)
#   rio        RFS + object replay (RIO)
# RIO starts from an ImageNet-pretrained backbone; on a CPU budget a from-scratch R-18 with a
# cosine classifier learns too slowly to compare anything (about 7 AP after 400 iterations, against
# 37.5 with the linear classifier), so the CE pretrain stands in for the pretrained backbone.
# Run: python scripts/ablation_table.py --config-file projects/rio_ablation.py --seeds 0 1 \
#          --output-dir output/rio_ablation
from ltdet2.config.rio import add_cosine_classifier, add_object_replay, add_rfs
from ltdet2.config.schedules import multi_step
from ltdet2.engine import make_phase

from .loce import phases as loce_phases
from .loce import train

train.output_dir = "output/rio_ablation"
pretrain = loce_phases["pretrain"]

TRAIN_ITERS = 200
baseline = make_phase(pretrain, lr_multiplier=multi_step(TRAIN_ITERS, steps=(150, 185), warmup_iters=20))
baseline["train"].update(max_iter=TRAIN_ITERS, init_from_phase="pretrain")
add_cosine_classifier(baseline["model"])

rfs = make_phase(baseline)
add_rfs(rfs["dataloader"])

replay = make_phase(baseline)
add_object_replay(replay["model"], dataset_name=replay["dataloader"].train.dataset.names)

rio = make_phase(baseline)
add_rfs(rio["dataloader"])
add_object_replay(rio["model"], dataset_name=rio["dataloader"].train.dataset.names)

phases = dict(pretrain=pretrain, baseline=baseline, rfs=rfs, replay=replay, rio=rio)
del loce_phases, pretrain, baseline, rfs, replay, rio  # a project's root: `train` and `phases`
