"""Task kind `tracking` (pipeline/tasks/kinds.py): single-object boxes from a template vs search
correlation head, a centre heatmap and boxes.

    vssl finetune recipes/finetune/tracking.yaml --init runs/pretrain --eval
    from pipeline.tasks.heads import TaskModel
    from pipeline.tasks.tracking import TrackingHead, decode_boxes, tracking_loss
    model = TaskModel(encoder, TrackingHead(encoder.num_features), freeze_encoder=True)
    out = model(template, search)                # frames (B, 3, Hz, Wz), (B, 3, Hx, Wx), normalised
    loss, logs = tracking_loss(out, gt_boxes, search.shape[-2:])   # gt_boxes (B, 4) xyxy pixels
    boxes = decode_boxes(out, search.shape[-2:])                   # (B, 4) xyxy pixels

Geometry. The template's and the search frame's feature maps (stride s = encoder.output_stride)
are projected to `width` channels and correlated channel by channel (depthwise
cross-correlation, as SiamRPN++): the template map slides over the search map with "same"
padding, so response cell (i, j) is search cell (i, j), covering pixels [j*s, (j+1)*s) x
[i*s, (i+1)*s). A small conv tower then predicts per cell
    score       logit that the target centre lies in this cell
    box (4)     sigmoid -> centre offset inside the cell (x, y in cell units) and size (w, h)
                as fractions of the search frame
Decoding takes the highest-scoring cell. The loss (CenterNet-style) is a sigmoid focal loss
against a Gaussian heatmap peaking at 1 on the cell that contains the true centre (sigma =
`heatmap_sigma` cells, normalised by its mass), plus L1 (on boxes scaled by the frame size) and
GIoU loss on the box that this cell predicts - the cell decoding should pick.

Training: (template, search) pairs from batch["boxes"] (pipeline/tasks/track_pairs.py: one
random later frame per clip), tracking_loss. Evaluation (OTB one-pass): template = the first
frame's box, search = every later frame; success AUC, precision@20px; truth | prediction box strips.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from pipeline.config import ConfigError, DataConfig, FinetuneConfig, TaskConfig
from pipeline.tasks import metrics, overlays
from pipeline.tasks.heads import TaskModel
from pipeline.tasks.kinds import batch_pictures, clip_frames, eval_device, fresh_batches, zero_loss
from pipeline.tasks.overlays import PREDICTION_COLOUR, TRUTH_COLOUR, comparison_strip, draw_box
from pipeline.tasks.track_pairs import FramePairs, random_pairs, sequence_pairs

ANNOTATIONS = ("boxes",)


class TrackingOutput(NamedTuple):
    score: Tensor  # (B, h, w) centre logits
    box: Tensor  # (B, 4, h, w) raw box parameters (before sigmoid)


def depthwise_xcorr(search: Tensor, template: Tensor) -> Tensor:
    """Per-sample, per-channel correlation with "same" padding: (B, C, H, W) x (B, C, h, w) -> (B, C, H, W)."""
    batch, channels, height, width = search.shape
    kh, kw = template.shape[-2:]
    padded = F.pad(search, ((kw - 1) // 2, kw // 2, (kh - 1) // 2, kh // 2))
    out = F.conv2d(padded.reshape(1, batch * channels, *padded.shape[-2:]),
                   template.reshape(batch * channels, 1, kh, kw), groups=batch * channels)
    return out.reshape(batch, channels, height, width)


def _conv_block(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                         nn.GroupNorm(min(32, channels), channels), nn.ReLU(inplace=True))


class TrackingHead(nn.Module):
    consumes = "frame_pair"

    def __init__(self, dim: int, width: int = 64) -> None:
        super().__init__()
        self.template_proj = nn.Conv2d(dim, width, 1)
        self.search_proj = nn.Conv2d(dim, width, 1)
        self.tower = nn.Sequential(_conv_block(width), _conv_block(width))
        self.score = nn.Conv2d(width, 1, 1)
        self.box = nn.Conv2d(width, 4, 1)
        nn.init.constant_(self.score.bias, -2.0)  # start near "no centre here" (focal-loss prior)

    def forward(self, template: Tensor, search: Tensor) -> TrackingOutput:
        response = depthwise_xcorr(self.search_proj(search), self.template_proj(template))
        x = self.tower(response)
        return TrackingOutput(self.score(x)[:, 0], self.box(x))


def _cell_boxes(box: Tensor, rows: Tensor, cols: Tensor, grid: tuple[int, int],
                frame: tuple[int, int]) -> Tensor:
    """xyxy pixels of the boxes that cells (rows, cols) predict; box (B, 4) raw parameters."""
    (h, w), (height, width) = grid, frame
    p = box.sigmoid()
    cx = (cols + p[:, 0]) * (width / w)
    cy = (rows + p[:, 1]) * (height / h)
    bw, bh = p[:, 2] * width, p[:, 3] * height
    return torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=1)


def _at_cells(box: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    return box[torch.arange(box.shape[0], device=box.device), :, rows, cols]


def decode_boxes(out: TrackingOutput, frame: tuple[int, int]) -> Tensor:
    """(B, 4) xyxy pixel boxes predicted at each sample's highest-scoring cell."""
    grid = tuple(out.score.shape[-2:])
    best = out.score.flatten(1).argmax(dim=1)
    rows, cols = best // grid[1], best % grid[1]
    return _cell_boxes(_at_cells(out.box, rows, cols), rows, cols, grid, tuple(frame))


def centre_cells(boxes: Tensor, grid: tuple[int, int], frame: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """(rows, cols) of the cells that contain the centres of boxes (B, 4) xyxy pixels."""
    (h, w), (height, width) = grid, frame
    cols = ((boxes[:, 0] + boxes[:, 2]) / 2 * (w / width)).floor().long().clamp(0, w - 1)
    rows = ((boxes[:, 1] + boxes[:, 3]) / 2 * (h / height)).floor().long().clamp(0, h - 1)
    return rows, cols


def centre_heatmap(rows: Tensor, cols: Tensor, grid: tuple[int, int], sigma: float) -> Tensor:
    """(B, h, w) Gaussian around each sample's centre cell, 1 at that cell (CenterNet's target)."""
    ys = torch.arange(grid[0], device=rows.device)[None, :, None]
    xs = torch.arange(grid[1], device=rows.device)[None, None, :]
    dist2 = (ys - rows[:, None, None]) ** 2 + (xs - cols[:, None, None]) ** 2
    return torch.exp(-dist2.float() / (2 * sigma ** 2))


def tracking_loss(out: TrackingOutput, boxes: Tensor, frame: tuple[int, int], heatmap_sigma: float = 1.0,
                  box_weight: float = 5.0, giou_weight: float = 2.0) -> tuple[Tensor, dict[str, float]]:
    """Focal heatmap loss + L1 + GIoU on the box at the true centre's cell; boxes (B, 4) xyxy pixels."""
    grid, frame = tuple(out.score.shape[-2:]), tuple(frame)
    boxes = boxes.to(out.box.dtype)
    rows, cols = centre_cells(boxes, grid, frame)
    target = centre_heatmap(rows, cols, grid, heatmap_sigma).to(out.score.dtype)
    heat = sigmoid_focal_loss(out.score, target, reduction="sum") / target.sum().clamp(min=1.0)
    predicted = _cell_boxes(_at_cells(out.box, rows, cols), rows, cols, grid, frame)
    scale = torch.tensor([frame[1], frame[0], frame[1], frame[0]], dtype=boxes.dtype, device=boxes.device)
    l1 = F.l1_loss(predicted / scale, boxes / scale)
    giou = generalized_box_iou_loss(predicted, boxes, reduction="mean")
    loss = heat + box_weight * l1 + giou_weight * giou
    return loss, {"heatmap": heat.item(), "l1": l1.item(), "giou": giou.item()}


def build_head(cfg: FinetuneConfig, dim: int) -> nn.Module:
    return TrackingHead(dim, width=cfg.task.head_width)


def settle(task: TaskConfig, data: DataConfig) -> TaskConfig:
    return task


class TrackingLoss(nn.Module):
    def __init__(self, model: TaskModel, cfg: FinetuneConfig) -> None:
        super().__init__()
        self.model, self.cfg = model, cfg

    def pairs(self, batch: dict) -> FramePairs:
        if "boxes" not in batch:
            raise ConfigError(f"data.shards: tracking needs samples with boxes ({batch['key'][:1]} has none)")
        boxes = batch["boxes"].to(batch["video"].device)
        return random_pairs(batch["video"], boxes, self.cfg.task.template_size, self.cfg.task.template_context)

    def forward(self, batch: dict) -> tuple[Tensor, dict]:
        pairs = self.pairs(batch)
        if not len(pairs.boxes):  # no clip with two known boxes: a zero loss that still has a graph
            return zero_loss(self.model), {"pairs": 0.0}
        out = self.model(pairs.template, pairs.search)
        loss, logs = tracking_loss(out, pairs.boxes, tuple(pairs.search.shape[-2:]))
        return loss, {**logs, "pairs": float(len(pairs.boxes))}

    @torch.no_grad()
    def visualize(self, batch: dict) -> np.ndarray:
        """Up to 8 search frames: truth box (top) and predicted box (bottom)."""
        pairs = self.pairs(batch)
        if not len(pairs.boxes):
            return batch_pictures(batch["video"][:1].float(), self.cfg)[0, 0]
        pairs = FramePairs(*(x[:8] for x in pairs))
        predicted = decode_boxes(self.model(pairs.template, pairs.search), tuple(pairs.search.shape[-2:]))
        frames = batch_pictures(pairs.search[:, :, None].float(), self.cfg)[:, 0]
        truth = np.stack([draw_box(f, b, TRUTH_COLOUR) for f, b in zip(frames, pairs.boxes.cpu().numpy())])
        guess = np.stack([draw_box(f, b, PREDICTION_COLOUR) for f, b in zip(frames, predicted.cpu().numpy())])
        return np.asarray(comparison_strip(truth, guess))


LOSS = TrackingLoss


@torch.no_grad()
def evaluate(model: TaskModel, cfg: FinetuneConfig, out: Path) -> dict:
    device, task = eval_device(), cfg.task
    predicted_all, truth_all, pictures, clips = [], [], [], 0
    for batch, keep in fresh_batches(cfg.data, model.encoder.patch_size, cfg.task.eval_split, ANNOTATIONS):
        if "boxes" not in batch:
            raise ConfigError(f"data.shards: tracking needs samples with boxes ({batch['key'][0]} has none)")
        for i in keep.tolist():
            clip, boxes = batch["video"][i].to(device), batch["boxes"][i].to(device)
            pairs = sequence_pairs(clip, boxes, task.template_size, task.template_context)
            if not len(pairs.boxes):
                continue
            guess = decode_boxes(model(pairs.template, pairs.search), tuple(clip.shape[-2:])).cpu()
            predicted_all.append(guess)
            truth_all.append(pairs.boxes.cpu())
            clips += 1
            if len(pictures) < task.pictures:
                shown = boxes.cpu().nan_to_num(0.0)  # the template frame shows its given box
                track = shown.clone()
                track[pairs.frame.cpu()] = guess
                pictures.append(str(overlays.save_box_comparison(
                    out / "eval" / f"tracking-{len(pictures)}.png", clip_frames(clip, cfg), track.numpy(),
                    shown.numpy())))
    if not predicted_all:
        raise ConfigError(f"data.shards: no {task.eval_split} clip has two frames with known boxes")
    predicted, truth = torch.cat(predicted_all), torch.cat(truth_all)
    return {"metrics": {"success_auc": metrics.success_auc(predicted, truth),
                        "precision_20px": metrics.precision_at(predicted, truth, 20.0)},
            "pairs": len(truth), "clips": clips, "pictures": pictures}
