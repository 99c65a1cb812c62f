# Shared by the method pieces (configs/loce.py, configs/rio.py, ...): switch a Detectron2 R-CNN
# config to ltdet2's heads. With nothing else added they compute exactly what the stock heads do.
from ltdet2.modeling import LongTailOutputLayers, LongTailROIHeads


def use_long_tail_heads(model):
    model.roi_heads._target_ = LongTailROIHeads
    model.roi_heads.box_predictor._target_ = LongTailOutputLayers
    return model
