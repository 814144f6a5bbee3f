"""Downstream tasks on a pretrained encoder: building blocks for `vssl finetune` and `vssl eval`.

One module per task kind (task.kind), each with its head, loss, evaluation and pictures;
kinds.py says what a kind module offers and is how finetune.py and evaluate.py reach it:
    classification.py  clip labels: linear / attentive-probe heads, mixup/cutmix, top-k accuracy
    segmentation.py    per-pixel classes of every frame: mIoU
    tracking.py        template-search correlation tracking head, box decoding and loss: OTB AUC
    propagation.py     training-free label propagation (semi-supervised DAVIS protocol): J&F

What the kinds share:
    finetune.py     `vssl finetune`: prepare + the pretraining trainer with the kind's loss
    evaluate.py     `vssl eval`: load a checkpoint, run the kind's evaluation, write eval.json
    metrics.py      top-k / per-class accuracy, multi-view aggregation, DAVIS J&F, mIoU, OTB AUC
    davis.py        DAVIS-2017 folder layout: read frames + masks, write predicted masks
    features.py     encoder tokens -> grids, per-frame feature maps
    heads.py        linear / attentive-probe / segmentation heads and TaskModel
    track_pairs.py  (template, search) frame pairs cut from clips with boxes
    mixing.py       clip-consistent mixup / cutmix, soft cross-entropy
    label_subset.py the class-balanced labelled subset (task.label_fraction)
    layer_decay.py  layer-wise lr decay parameter groups for fine-tuning
    overlays.py     pictures: boxes and masks beside the truth, confusion matrices
"""
