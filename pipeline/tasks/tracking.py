"""Single-object box tracking head: template vs search correlation, a centre heatmap and boxes.

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
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss


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
