"""The standard metrics of the downstream tasks: classification, DAVIS J&F, mIoU, OTB tracking.

    from pipeline.tasks import metrics as M
    M.topk_accuracy(logits, labels, ks=(1, 5))               # {"top1": .., "top5": ..} in [0, 1]
    keys, probs = M.aggregate_views(view_logits, view_keys)  # multi-view test: mean softmax per video
    conf = M.confusion_matrix(pred, target, num_classes)     # rows = truth, columns = prediction
    M.per_class_accuracy(conf), M.mean_iou(conf)
    seq = M.davis_sequence_scores(pred_masks, gt_masks)      # per object, per evaluated frame
    M.davis_summary([seq, ...])                              # {"J": .., "F": .., "J&F": ..}
    M.success_auc(pred_boxes, gt_boxes), M.precision_at(pred_boxes, gt_boxes, 20)

Conventions (what the README quotes):
- Classification: top-k counts a sample right when its label is among the k highest scores.
  Per-class accuracy is the recall of each class (diagonal / row sum); classes with no sample are
  NaN and left out of the mean. Multi-view: softmax of every view (temporal clips x spatial
  crops), averaged per video key.
- DAVIS (semi-supervised, as the davis2017-evaluation toolkit): objects are ids 1..N where N is
  the largest id in the first ground-truth frame; every other value (0, 255 void) is background
  for that object. The first and last frames are not evaluated. J is the IoU of the object's
  masks (1 when both are empty); F is the boundary F-measure: 1-pixel boundary maps
  (`boundary_map`), a prediction boundary pixel matches when a truth boundary pixel lies within
  a disk of radius ceil(0.008 * image diagonal) px (and vice versa for recall). A sequence's
  object scores are means over its evaluated frames; the dataset J and F are means over all
  objects of all sequences; J&F is their average.
- Segmentation mIoU: IoU = TP / (TP + FP + FN) per class over all pixels of the dataset (class 0
  is background and counts), pixels whose truth is `ignore_index` are skipped, classes absent
  from both truth and prediction are NaN and left out of the mean.
- Tracking (OTB one-pass evaluation): boxes xyxy in pixels. Success at threshold θ is the
  fraction of frames with IoU > θ, for θ = 0, 0.05, ..., 1 (21 points); AUC is their mean.
  Precision@20px is the fraction of frames whose centre error is <= 20 px. Frames whose truth
  box is missing (any NaN) are skipped.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

DAVIS_BOUNDARY_FRACTION = 0.008  # boundary tolerance as a fraction of the image diagonal
OTB_THRESHOLDS = 21  # IoU thresholds 0, 0.05, ..., 1


def _tensor(x: Tensor | np.ndarray) -> Tensor:
    return torch.as_tensor(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x


# ---------------------------------------------------------------------------------------------
# classification


def topk_accuracy(scores: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """{"top1": fraction, ...} for scores (N, C) and integer labels (N,); k is capped at C."""
    if scores.ndim != 2 or labels.shape != scores.shape[:1]:
        raise ValueError(f"topk_accuracy: expected scores (N, C) and labels (N,), got "
                         f"{tuple(scores.shape)} and {tuple(labels.shape)}")
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return {f"top{k}": hits[:, :k].any(dim=1).float().mean().item() for k in ks}


def aggregate_views(view_scores: Tensor, view_keys: list[str]) -> tuple[list[str], Tensor]:
    """Average the softmax of every view of a video: (V, C) logits + V keys -> (keys, (N, C)).

    Keys come back in order of first appearance, so labels can be gathered the same way.
    """
    if len(view_keys) != view_scores.shape[0]:
        raise ValueError(f"aggregate_views: {view_scores.shape[0]} views but {len(view_keys)} keys")
    keys = list(dict.fromkeys(view_keys))
    index = {k: i for i, k in enumerate(keys)}
    group = torch.tensor([index[k] for k in view_keys], device=view_scores.device)
    probs = view_scores.float().softmax(dim=1)
    sums = torch.zeros(len(keys), probs.shape[1], device=probs.device).index_add_(0, group, probs)
    counts = torch.bincount(group, minlength=len(keys)).to(probs.dtype)
    return keys, sums / counts[:, None]


def confusion_matrix(pred: Tensor | np.ndarray, target: Tensor | np.ndarray, num_classes: int,
                     ignore_index: int | None = None) -> Tensor:
    """(C, C) int64 counts, rows = truth, columns = prediction, over any shape of integer labels.

    Targets equal to `ignore_index` are skipped; any other label outside [0, C) is an error.
    """
    pred, target = _tensor(pred).reshape(-1).long(), _tensor(target).reshape(-1).long()
    if pred.shape != target.shape:
        raise ValueError(f"confusion_matrix: {pred.numel()} predictions for {target.numel()} targets")
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    for name, labels in (("target", target), ("prediction", pred)):
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"confusion_matrix: {name} label outside [0, {num_classes}): "
                             f"{int(labels.min())}..{int(labels.max())}")
    flat = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def per_class_accuracy(conf: Tensor) -> Tensor:
    """(C,) recall of each class: correct / samples of that class; NaN where a class has none."""
    conf = conf.double()
    return conf.diagonal() / conf.sum(dim=1)


def mean_class_accuracy(conf: Tensor) -> float:
    return per_class_accuracy(conf).nanmean().item()


def class_iou(conf: Tensor) -> Tensor:
    """(C,) IoU = TP / (TP + FP + FN) per class; NaN where the class is in neither truth nor prediction."""
    conf = conf.double()
    tp = conf.diagonal()
    return tp / (conf.sum(dim=0) + conf.sum(dim=1) - tp)


def mean_iou(conf: Tensor) -> float:
    return class_iou(conf).nanmean().item()


# ---------------------------------------------------------------------------------------------
# DAVIS J & F


def region_iou(pred: Tensor, truth: Tensor) -> Tensor:
    """J per frame: IoU of boolean masks (..., H, W) -> (...); 1 where both are empty."""
    inter = (pred & truth).sum(dim=(-2, -1)).double()
    union = (pred | truth).sum(dim=(-2, -1)).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def boundary_map(mask: Tensor) -> Tensor:
    """1-pixel boundaries of boolean masks (..., H, W): a pixel is on the boundary when it differs
    from its right, lower or lower-right neighbour (pixels outside count as background on those
    sides), the half-pixel-towards-the-origin convention of the DAVIS toolkit's seg2bmap."""
    east, south, south_east = (torch.zeros_like(mask) for _ in range(3))
    east[..., :, :-1] = mask[..., :, 1:]
    south[..., :-1, :] = mask[..., 1:, :]
    south_east[..., :-1, :-1] = mask[..., 1:, 1:]
    edges = (mask ^ east) | (mask ^ south) | (mask ^ south_east)
    edges[..., -1, :] = mask[..., -1, :] ^ east[..., -1, :]
    edges[..., :, -1] = mask[..., :, -1] ^ south[..., :, -1]
    edges[..., -1, -1] = False
    return edges


def disk_dilate(mask: Tensor, radius: int) -> Tensor:
    """Binary dilation of (N, H, W) boolean maps by the disk {x^2 + y^2 <= r^2}.

    The disk is a stack of rows: row dy spans |x| <= isqrt(r^2 - dy^2). So the maps are dilated
    along x once per distinct half-width (a 1-D max pool) and each result is OR-ed in shifted by
    its dy: 2r + 1 cheap passes instead of a (2r+1)^2 convolution.
    """
    height, width = mask.shape[-2:]
    rows_1d = mask.reshape(-1, 1, width).float()
    along_x: dict[int, Tensor] = {}
    out = torch.zeros_like(mask)
    for dy in range(-radius, radius + 1):
        half = math.isqrt(radius * radius - dy * dy)
        if half not in along_x:
            pooled = F.max_pool1d(rows_1d, 2 * half + 1, stride=1, padding=half)
            along_x[half] = pooled.view_as(mask) > 0
        rows = along_x[half]
        if dy >= 0:
            out[:, :height - dy] |= rows[:, dy:]
        else:
            out[:, -dy:] |= rows[:, :height + dy]
    return out


def boundary_tolerance(height: int, width: int, fraction: float = DAVIS_BOUNDARY_FRACTION) -> int:
    """Pixels of boundary tolerance: ceil(fraction * image diagonal) (8 px at 480x854)."""
    return math.ceil(fraction * math.hypot(height, width))


def boundary_f(pred: Tensor, truth: Tensor, tolerance: int | None = None) -> Tensor:
    """F per frame for boolean masks (N, H, W) -> (N,): boundary precision/recall within `tolerance` px.

    An empty boundary has precision (prediction) or recall (truth) 1 and matches nothing, so
    one empty map gives F = 0 and both empty F = 1, as in the DAVIS toolkit.
    """
    radius = boundary_tolerance(*pred.shape[-2:]) if tolerance is None else tolerance
    pred_edges, truth_edges = boundary_map(pred), boundary_map(truth)
    pred_hits = (pred_edges & disk_dilate(truth_edges, radius)).sum(dim=(-2, -1)).double()
    truth_hits = (truth_edges & disk_dilate(pred_edges, radius)).sum(dim=(-2, -1)).double()
    n_pred = pred_edges.sum(dim=(-2, -1)).double()
    n_truth = truth_edges.sum(dim=(-2, -1)).double()
    precision = torch.where(n_pred > 0, pred_hits / n_pred.clamp(min=1), torch.ones_like(n_pred))
    recall = torch.where(n_truth > 0, truth_hits / n_truth.clamp(min=1), torch.ones_like(n_truth))
    total = precision + recall
    return torch.where(total > 0, 2 * precision * recall / total.clamp(min=1e-12), torch.zeros_like(total))


def davis_sequence_scores(pred: Tensor | np.ndarray, truth: Tensor | np.ndarray,
                          skip_first_last: bool = True) -> dict[str, Tensor]:
    """{"J": (objects, frames), "F": (objects, frames)} for index masks (T, H, W) of one sequence.

    Objects are 1..N with N the largest id in truth[0]; frames are 1..T-2 unless
    `skip_first_last` is False (then all T).
    """
    pred, truth = _tensor(pred).long(), _tensor(truth).long()
    if pred.shape != truth.shape or pred.ndim != 3:
        raise ValueError(f"davis_sequence_scores: prediction {tuple(pred.shape)} and truth "
                         f"{tuple(truth.shape)} must be the same (T, H, W)")
    first = truth[0][truth[0] != 255]
    num_objects = int(first.max()) if first.numel() else 0
    if skip_first_last:
        if pred.shape[0] < 3:
            raise ValueError(f"davis_sequence_scores: {pred.shape[0]} frames; the protocol "
                             f"evaluates frames 1..T-2 and needs at least 3")
        pred, truth = pred[1:-1], truth[1:-1]
    j_rows, f_rows = [], []
    for obj in range(1, num_objects + 1):
        p, t = pred == obj, truth == obj
        j_rows.append(region_iou(p, t))
        f_rows.append(boundary_f(p, t))
    empty = torch.zeros(0, pred.shape[0], dtype=torch.float64)
    return {"J": torch.stack(j_rows) if j_rows else empty, "F": torch.stack(f_rows) if f_rows else empty}


def davis_summary(sequences: list[dict[str, Tensor]]) -> dict[str, float]:
    """Dataset J, F (means over every object of every sequence of its mean over frames) and J&F."""
    j = torch.cat([s["J"].mean(dim=1) for s in sequences])
    f = torch.cat([s["F"].mean(dim=1) for s in sequences])
    if not j.numel():
        raise ValueError("davis_summary: no objects to score")
    j_mean, f_mean = j.mean().item(), f.mean().item()
    return {"J": j_mean, "F": f_mean, "J&F": (j_mean + f_mean) / 2, "objects": int(j.numel())}


# ---------------------------------------------------------------------------------------------
# tracking (OTB one-pass evaluation)


def paired_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of row i of `a` with row i of `b`, boxes (N, 4) xyxy -> (N,)."""
    wh = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = _box_area(a) + _box_area(b) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


def _box_area(box: Tensor) -> Tensor:
    return (box[:, 2] - box[:, 0]).clamp(min=0) * (box[:, 3] - box[:, 1]).clamp(min=0)


def _box_centre(box: Tensor) -> Tensor:
    return (box[:, :2] + box[:, 2:]) / 2


def _valid_frames(pred: Tensor | np.ndarray, truth: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    pred, truth = _tensor(pred).double(), _tensor(truth).double()
    if pred.shape != truth.shape or pred.ndim != 2 or pred.shape[1] != 4:
        raise ValueError(f"tracking metrics: expected boxes (N, 4) xyxy for both, got "
                         f"{tuple(pred.shape)} and {tuple(truth.shape)}")
    keep = ~truth.isnan().any(dim=1)
    return pred[keep], truth[keep]


def success_curve(pred: Tensor | np.ndarray, truth: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """(thresholds (21,), fraction of frames with IoU > threshold (21,))."""
    pred, truth = _valid_frames(pred, truth)
    thresholds = torch.linspace(0, 1, OTB_THRESHOLDS, dtype=torch.float64)
    iou = paired_box_iou(pred, truth)
    return thresholds, (iou[None, :] > thresholds[:, None]).double().mean(dim=1)


def success_auc(pred: Tensor | np.ndarray, truth: Tensor | np.ndarray) -> float:
    return success_curve(pred, truth)[1].mean().item()


def precision_at(pred: Tensor | np.ndarray, truth: Tensor | np.ndarray, pixels: float = 20.0) -> float:
    """Fraction of frames whose box centres are at most `pixels` apart."""
    pred, truth = _valid_frames(pred, truth)
    error = (_box_centre(pred) - _box_centre(truth)).norm(dim=1)
    return (error <= pixels).double().mean().item()
