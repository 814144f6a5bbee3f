"""Task heads on a pretrained encoder, and `TaskModel`, which feeds each head what it consumes.

    from pipeline.models import create_model
    from pipeline.tasks.heads import AttentiveProbe, LinearHead, SegDecoder, TaskModel
    from pipeline.tasks.tracking import TrackingHead
    encoder = create_model("vit_small_joint", num_frames=16, img_size=224)
    model = TaskModel(encoder, AttentiveProbe(encoder.num_features, num_classes=400), freeze_encoder=True)
    logits = model(video)                       # (B, 400) from video (B, 3, T, H, W)
    seg = TaskModel(encoder, SegDecoder(encoder.num_features, num_classes=21), freeze_encoder=False)
    seg(video).shape                            # (B, 21, T, H, W)
    tracker = TaskModel(encoder, TrackingHead(encoder.num_features), freeze_encoder=True)
    out = tracker(template, search)             # frames (B, 3, h, w); see pipeline/tasks/tracking.py

Each head says what it consumes (`head.consumes`):
    "pooled"      BackboneOutput.pooled (B, D)                           LinearHead
    "tokens"      BackboneOutput.tokens (B, N, D), any order             AttentiveProbe
    "grid"        tokens on their grid (B, D, t, h, w) + the clip size   LinearSegHead, SegDecoder
    "frame_pair"  per-frame feature maps of a template and a search      TrackingHead
                  frame (pipeline/tasks/features.py: frame_features)
A frozen encoder runs without autograd and stays in eval mode whatever `train()` is called with,
so dropout / stochastic depth never touch linear-probe features. Encoder parameters no head
reaches (the mask token; a norm of the pooled vector alone, for heads that read tokens) are
frozen (VideoBackbone.freeze_unused).
"""

from __future__ import annotations

from typing import get_args

import torch
import torch.nn.functional as F
from timm.layers import Mlp, trunc_normal_
from torch import Tensor, nn

from pipeline.config import HeadNorm
from pipeline.models.base import VideoBackbone
from pipeline.tasks.features import frame_features, tokens_to_grid

CONSUMES = ("pooled", "tokens", "grid", "frame_pair")


class LinearHead(nn.Module):
    """Affine-free normalisation (task.head_norm) -> dropout -> Linear on pooled features.

    "layer" standardises each sample over its channels; "batch" standardises each channel over
    the batch (running statistics in eval), as MAE / VideoMAE put a BatchNorm before a linear
    probe. Mean-pooled tokens share most of their value across clips, so after a LayerNorm the
    channels barely vary across clips and a head on them learns slowly (docs/EXPERIMENTS.md,
    "Measurements behind design choices"); "batch" gives it unit-variance inputs. "batch" needs training batches of 2 or more; its statistics are per
    process.
    """

    consumes = "pooled"

    def __init__(self, dim: int, num_classes: int, norm: HeadNorm = "layer", dropout: float = 0.0) -> None:
        super().__init__()
        if norm not in get_args(HeadNorm):
            raise ValueError(f"LinearHead: norm must be one of {get_args(HeadNorm)}, got {norm!r}")
        self.norm = {"layer": lambda: nn.LayerNorm(dim, elementwise_affine=False),
                     "batch": lambda: nn.BatchNorm1d(dim, affine=False), "none": nn.Identity}[norm]()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_classes)
        trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.fc(self.dropout(self.norm(pooled)))


class AttentiveProbe(nn.Module):
    """V-JEPA's attentive probe: learned queries cross-attend over all tokens, then an MLP and a
    Linear classifier. It has no position information, so the order of tokens does not matter."""

    consumes = "tokens"

    def __init__(self, dim: int, num_classes: int, num_heads: int = 0, num_queries: int = 1,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.num_heads = num_heads or max(1, dim // 64)
        if dim % self.num_heads:
            raise ValueError(f"AttentiveProbe: dim {dim} is not divisible by num_heads {self.num_heads}")
        self.query = nn.Parameter(torch.zeros(1, num_queries, dim))
        self.norm_tokens = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_out = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)
        trunc_normal_(self.query, std=0.02)
        for layer in (self.q, self.kv, self.proj, self.fc):
            trunc_normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        batch, _, dim = tokens.shape
        heads = self.num_heads
        query = self.query.expand(batch, -1, -1)
        k, v = self.kv(self.norm_tokens(tokens)).reshape(batch, -1, 2, heads, dim // heads).permute(2, 0, 3, 1, 4)
        q = self.q(query).reshape(batch, -1, heads, dim // heads).transpose(1, 2)
        # explicit attention (a few queries: as cheap as SDPA), which torch.func.vmap batches over a
        # grid of probes (pipeline/probe/attentive.py); SDPA has no batching rule on the CPU
        weights = (q @ k.transpose(-2, -1) * (dim // heads) ** -0.5).softmax(dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(batch, -1, dim)
        x = query + self.proj(attended)
        x = x + self.mlp(self.norm_mlp(x))
        return self.fc(self.norm_out(x).mean(dim=1))


class LinearSegHead(nn.Module):
    """A Linear classifier per token (1x1x1 conv on the grid), upsampled trilinearly to the clip."""

    consumes = "grid"

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Conv3d(dim, num_classes, 1)

    def forward(self, grid: Tensor, size: tuple[int, int, int]) -> Tensor:
        return F.interpolate(self.classifier(grid), size=size, mode="trilinear", align_corners=False)


class SegDecoder(nn.Module):
    """A light decoder on the per-frame token grid: per stage a 3x3 conv within each frame
    (kernel 1x3x3), GroupNorm, GELU and x2 spatial upsampling; then a 1x1 classifier and
    trilinear upsampling to the clip size (B, classes, T, H, W)."""

    consumes = "grid"

    def __init__(self, dim: int, num_classes: int, widths: tuple[int, ...] = (128, 64)) -> None:
        super().__init__()
        stages, width_in = [], dim
        for width in widths:
            stages.append(nn.Sequential(
                nn.Conv3d(width_in, width, (1, 3, 3), padding=(0, 1, 1), bias=False),
                nn.GroupNorm(min(32, width), width), nn.GELU(),
                nn.Upsample(scale_factor=(1, 2, 2), mode="trilinear", align_corners=False)))
            width_in = width
        self.stages = nn.Sequential(*stages)
        self.classifier = nn.Conv3d(width_in, num_classes, 1)

    def forward(self, grid: Tensor, size: tuple[int, int, int]) -> Tensor:
        logits = self.classifier(self.stages(grid))
        return F.interpolate(logits, size=size, mode="trilinear", align_corners=False)


class TaskModel(nn.Module):
    """An encoder and a head; `forward(video)`, or `forward(template, search)` for a "frame_pair" head."""

    def __init__(self, encoder: VideoBackbone, head: nn.Module, freeze_encoder: bool) -> None:
        super().__init__()
        if getattr(head, "consumes", None) not in CONSUMES:
            raise ValueError(f"TaskModel: head {type(head).__name__} must say what it consumes "
                             f"(consumes = one of {CONSUMES})")
        if head.consumes == "frame_pair" and encoder.motion_input:
            raise ValueError(f"TaskModel: {type(head).__name__} compares single frames, which a motion-input "
                             "encoder (input_transform=frame_diff) cannot see; use an appearance encoder")
        self.encoder, self.head, self.freeze_encoder = encoder, head, freeze_encoder
        if freeze_encoder:
            encoder.requires_grad_(False)
            encoder.eval()
        encoder.freeze_unused(masked=False, pooled=head.consumes == "pooled")  # tasks never mask

    def train(self, mode: bool = True) -> TaskModel:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def forward(self, video: Tensor, search: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        kind = self.head.consumes
        if (kind == "frame_pair") != (search is not None):
            raise ValueError(f"TaskModel: a {kind!r} head takes "
                             f"{'(template, search) frames' if kind == 'frame_pair' else 'one video'}")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            if kind == "frame_pair":
                template, search = frame_features(self.encoder, video), frame_features(self.encoder, search)
            else:
                out = self.encoder(video)
        if kind == "frame_pair":
            return self.head(template, search)
        if kind == "pooled":
            return self.head(out.pooled)
        if kind == "tokens":
            return self.head(out.tokens)
        return self.head(tokens_to_grid(out), tuple(video.shape[2:]))
