"""Pieces both objectives use: patchify, per-patch targets, a light transformer, an EMA target
encoder, pictures.

Patches are tubelets (pt, ph, pw) flattened as (pt, ph, pw, C), listed in token-grid order
(t, h, w) - the same order as the backbone's tokens and masks (pipeline/models/base.py).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from einops import rearrange
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor, nn

from pipeline.config import LatentNorm, ObjectiveConfig, Target
from pipeline.models.base import VideoBackbone
from pipeline.models.layers import frame_differences


def patchify(video: Tensor, patch: tuple[int, int, int]) -> Tensor:
    """(B, C, T, H, W) -> (B, N, pt*ph*pw*C) in (t, h, w) grid order."""
    pt, ph, pw = patch
    return rearrange(video, "b c (t pt) (h ph) (w pw) -> b (t h w) (pt ph pw c)", pt=pt, ph=ph, pw=pw)


def unpatchify(x: Tensor, patch: tuple[int, int, int], grid: tuple[int, int, int], channels: int) -> Tensor:
    """Inverse of `patchify`: (B, N, pt*ph*pw*C) -> (B, C, T, H, W)."""
    (pt, ph, pw), (t, h, w) = patch, grid
    return rearrange(x, "b (t h w) (pt ph pw c) -> b c (t pt) (h ph) (w pw)",
                     t=t, h=h, w=w, pt=pt, ph=ph, pw=pw, c=channels)


def normalize_patches(patches: Tensor, channels: int, eps: float = 1e-6) -> tuple[Tensor, Tensor, Tensor]:
    """Per-patch, per-channel standardisation (VideoMAE's norm_pix_loss target).

    Returns (normalised, mean, std) with mean/std broadcastable to (B, N, P, C) for undoing it.
    """
    b, n, d = patches.shape
    x = patches.reshape(b, n, d // channels, channels)
    mean = x.mean(dim=2, keepdim=True)
    std = (x.var(dim=2, unbiased=True, keepdim=True) + eps).sqrt()
    return ((x - mean) / std).reshape(b, n, d), mean, std


def sincos_pos_embed(grid: tuple[int, int, int], dim: int, device: torch.device | str | None = None) -> Tensor:
    """Fixed 3D sine-cosine position embedding (1, t*h*w, dim) float32: dim split over t, h, w.
    Computed where it is used (a handful of small kernels; no host -> device copy)."""
    t, h, w = grid
    per_axis = [dim // 3 // 2 * 2] * 3
    per_axis[0] += dim - sum(per_axis)
    parts = []
    for size, d_axis in zip((t, h, w), per_axis):
        pos = torch.arange(size, dtype=torch.float32, device=device)
        half = torch.arange(d_axis // 2, dtype=torch.float32, device=device)
        omega = 1.0 / (10000 ** (half / max(d_axis // 2, 1)))
        angles = pos[:, None] * omega[None]
        emb = torch.cat([angles.sin(), angles.cos()], dim=1)
        if emb.shape[1] < d_axis:
            emb = torch.cat([emb, emb.new_zeros(size, d_axis - emb.shape[1])], 1)
        parts.append(emb)
    et, eh, ew = parts
    full = torch.cat([
        et[:, None, None].expand(t, h, w, -1),
        eh[None, :, None].expand(t, h, w, -1),
        ew[None, None, :].expand(t, h, w, -1)], dim=-1)
    return full.reshape(1, t * h * w, dim)


def transformer(dim: int, depth: int, heads: int) -> nn.TransformerEncoder:
    """A pre-norm GELU transformer stack (torch's, so SDPA fast paths apply)."""
    layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


def init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def to_uint8_frames(video: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(C, T, H, W) normalised -> (T, H, W, C) uint8 for pictures."""
    m = torch.tensor(mean, dtype=video.dtype, device=video.device).view(-1, 1, 1, 1)
    s = torch.tensor(std, dtype=video.dtype, device=video.device).view(-1, 1, 1, 1)
    x = (video.float() * s + m).clamp(0, 1)
    return (x.permute(1, 2, 3, 0).cpu().numpy() * 255).round().astype(np.uint8)


def target_video(video: Tensor, target: Target) -> Tensor:
    """What an objective reconstructs or predicts (objective.target), as a (B, C, T, H, W) video:
    the clip, its frame differences x_t - x_(t-1), or their magnitude |x_t - x_(t-1)|
    (motion_energy). Frame 0 repeats frame 1's difference."""
    if target == "pixels":
        return video
    diff = frame_differences(video)
    return diff.abs() if target == "motion_energy" else diff


def display_stats(target: Target, mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[tuple, tuple]:
    """(mean, std) that to_uint8_frames should undo for a target video: the clip's own; for
    objective.target=frame_diff mid-grey = no change, a difference of +-1 pixel unit = white/black;
    for motion_energy black = no change, a change of 1 pixel unit = white."""
    if target == "frame_diff":
        return (0.5,) * len(mean), tuple(0.5 * s for s in std)
    if target == "motion_energy":
        return (0.0,) * len(mean), tuple(std)
    return mean, std


def heat_rgb(values: np.ndarray) -> np.ndarray:
    """(..., ) float -> (..., 3) uint8 'hot' colour map scaled to the array's own range."""
    v = values.astype(np.float64)
    v = (v - v.min()) / (v.max() - v.min() + 1e-12)
    rgb = np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], -1)
    return (rgb * 255).astype(np.uint8)


def picture_rows(rows: list[np.ndarray], max_frames: int = 8, gap: int = 2) -> np.ndarray:
    """Stack rows of frames (each (T, H, W, 3) uint8) into one grid image, T subsampled evenly."""
    t = rows[0].shape[0]
    idx = np.linspace(0, t - 1, min(t, max_frames)).round().astype(int)
    h, w = rows[0].shape[1:3]
    canvas = np.full((len(rows) * (h + gap) - gap, len(idx) * (w + gap) - gap, 3), 255, np.uint8)
    for r, frames in enumerate(rows):
        for c, i in enumerate(idx):
            canvas[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = frames[min(i, len(frames) - 1)]
    return canvas


def upsample_tokens(values: Tensor, grid: tuple[int, int, int], size: tuple[int, int, int]) -> np.ndarray:
    """Per-token scalars (N,) on `grid` -> (T, H, W) array by nearest repetition."""
    t, h, w = grid
    v = values.reshape(1, 1, t, h, w).float()
    return torch.nn.functional.interpolate(v, size=size, mode="nearest")[0, 0].cpu().numpy()


def gaussian_nll(err2: Tensor, log_precision: Tensor) -> Tensor:
    """Precision-weighted prediction error: 0.5*exp(s)*err^2 - 0.5*s, elementwise."""
    return 0.5 * torch.exp(log_precision) * err2 - 0.5 * log_precision


def log_precision(head: nn.Module, x: Tensor, cfg) -> Tensor:
    """(B, L) learned log precision of each token, `head`'s one output clamped to
    [objective.log_precision_min, objective.log_precision_max]."""
    return head(x).squeeze(-1).clamp(cfg.log_precision_min, cfg.log_precision_max)


def ema_copy(encoder: nn.Module) -> nn.Module:
    """A frozen copy of the encoder, to be moved towards it by ema_update (objective.latent_target)."""
    return copy.deepcopy(encoder).requires_grad_(False)


_ZERO3_GATHER_ELEMENTS = 1 << 26  # ema_update under ZeRO-3: weights gathered at once (256 MiB fp32)


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, parameter by parameter.

    Under DeepSpeed ZeRO-3 a rank holds only its partition of each parameter (the module's
    tensors are empty): parameters are gathered in chunks of about 64M elements, every rank
    computes the same update, and rank 0's result is partitioned back. Every rank must call it
    there (the gathers are collective)."""
    pairs = list(zip(target.parameters(), online.parameters()))
    if not any(hasattr(t, "ds_id") for t, _ in pairs):
        torch._foreach_lerp_([t for t, _ in pairs], [s.detach() for _, s in pairs], 1 - momentum)
        return
    import deepspeed

    chunks, size = [[]], 0
    for t, s in pairs:
        chunks[-1].append((t, s))
        size += t.ds_numel
        if size >= _ZERO3_GATHER_ELEMENTS:
            chunks, size = chunks + [[]], 0
    for chunk in filter(None, chunks):
        ts, ss = [t for t, _ in chunk], [s for _, s in chunk]
        with deepspeed.zero.GatheredParameters(ss, modifier_rank=None), \
                deepspeed.zero.GatheredParameters(ts, modifier_rank=0):
            torch._foreach_lerp_(ts, ss, 1 - momentum)


class PretrainObjective(nn.Module):
    """What both objectives start from: the encoder, their config section, the clip's channels and
    the normalisation the loader applied (mean, std: to turn predictions back into pictures), and
    `after_step` for an EMA target encoder (objective.latent_target): the trainer calls it after
    each optimizer update, on every rank, and `self.target_encoder` moves towards the encoder."""

    def __init__(self, encoder: VideoBackbone, cfg: ObjectiveConfig, channels: int = 3,
                 mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
                 std: tuple[float, ...] = IMAGENET_DEFAULT_STD) -> None:
        super().__init__()
        self.encoder, self.cfg, self.channels = encoder, cfg, channels
        self.mean, self.std = tuple(mean), tuple(std)

    @torch.no_grad()
    def after_step(self) -> None:
        if self.cfg.latent_target:
            ema_update(self.target_encoder, self.encoder, self.cfg.ema_momentum)


def transformer_flops(tokens: int, dim: int, depth: int, mlp_ratio: float = 4.0) -> int:
    """Forward FLOPs (2 per multiply-add) of `depth` transformer layers on `tokens` tokens of width
    `dim`: per layer the qkv, output and two MLP Linears, 2*(4 + 2*mlp_ratio)*n*d^2, and the two
    attention matmuls (scores and weighted sum), 4*n^2*d. Norms, softmax and adds are left out."""
    return int(depth * (2 * (4 + 2 * mlp_ratio) * tokens * dim * dim + 4 * tokens * tokens * dim))


def linear_flops(tokens: int, d_in: int, d_out: int) -> int:
    return 2 * tokens * d_in * d_out


def step_flops(trained: int, frozen: int) -> int:
    """FLOPs of one training step from forward FLOPs: a module that learns costs its forward and
    a backward of about twice that; a no-grad module (the EMA target encoder) its forward only."""
    return 3 * trained + frozen


@torch.no_grad()
def latent_targets(target: nn.Module, video: Tensor, norm: LatentNorm = "layer") -> Tensor:
    """(B, N, D) float32: the target encoder's final tokens of the whole clip, normalised
    (objective.latent_norm): "layer" standardises each token over its channels (no affine), as
    V-JEPA does; "instance" standardises each channel over the clip's tokens, as data2vec does, so
    what every token shares (a near-constant direction an EMA encoder drifts into early on) is
    taken out and only what tells the positions apart is left to predict."""
    tokens = target(video).tokens.float()
    if norm == "instance":
        return nn.functional.instance_norm(tokens.transpose(1, 2)).transpose(1, 2)
    return nn.functional.layer_norm(tokens, (tokens.shape[-1],))
