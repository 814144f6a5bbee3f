"""Downstream tasks on a pretrained encoder: building blocks for `vssl finetune` and `vssl eval`.

    metrics.py      top-k / per-class accuracy, multi-view aggregation, DAVIS J&F, mIoU, OTB AUC
    davis.py        DAVIS-2017 folder layout: read frames + masks, write predicted masks
    features.py     encoder tokens -> grids, per-frame feature maps
    propagation.py  training-free label propagation (semi-supervised DAVIS protocol)
    heads.py        linear / attentive-probe / segmentation heads and TaskModel
    tracking.py     template-search correlation tracking head, box decoding and loss
    layer_decay.py  layer-wise lr decay parameter groups for fine-tuning
    overlays.py     pictures: boxes and masks beside the truth, confusion matrices
"""
