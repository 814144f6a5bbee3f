"""The interface every video backbone implements, and the masking conventions they share.

Input: `video` (B, C, T, H, W) float. The tubelet embedding cuts it into a token grid
(t, h, w) = (T/pt, H/ph, W/pw); token n of the flattened grid is (n // (h*w), (n // w) % h, n % w).

Masks are (B, N) bool over that embedding grid, True = hidden (N = t*h*w). How a backbone
honours a mask is stated by its `mask_mode`:

    "visible_only"  hidden tokens are dropped before the blocks; every row must hide the same
                    number of tokens. Factorised attentions (divided, ViViT, axial) additionally
                    need a tube mask (the same spatial positions hidden in every frame) and
                    raise ValueError otherwise - nothing silently falls back to dense.
    "mask_token"    hidden tokens are replaced by a learned mask token (hierarchical backbones).

With visible_only, `BackboneOutput.tokens` holds the visible tokens in ascending grid order;
`restore_order(mask)` gives the permutation that puts [visible..., hidden...] back on the grid.
`requires_tube_mask` says whether a backbone takes only tube masks.

Every backbone also answers `flops(num_frames, height, width, mask=None)`: forward FLOPs for one
clip, counting 2 per multiply-add (the default measures them with FlopCounterMode; backbones
may override it with an analytic count that agrees). `remap_state_dict(state, source_config)`
adapts saved weights made for another input size (checkpoint.load_backbone calls it).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

MaskMode = Literal["visible_only", "mask_token"]


class BackboneOutput(NamedTuple):
    """A named tuple, so hooks that walk a module's outputs find its tensors (DeepSpeed ZeRO-3
    re-gathers a module's weights for its backward through them)."""

    tokens: Tensor  # (B, N_out, D): final tokens (visible ones only in visible_only mode)
    grid: tuple[int, int, int]  # (t, h, w) of the final stage's full token grid
    pooled: Tensor  # (B, D): mean of the final tokens (a cls token's output where the model has one)
    mask: Tensor | None = None  # the (B, N) mask applied, None when unmasked
    layers: tuple[Tensor, ...] = ()  # intermediate outputs asked for

    def feature_map(self) -> Tensor:
        """(B, D, t, h, w): the tokens laid out on their grid, for dense heads."""
        t, h, w = self.grid
        b, n, d = self.tokens.shape
        if n != t * h * w:
            raise ValueError(f"tokens: {n} tokens do not cover the {t}x{h}x{w} grid (a visible-only "
                             f"output); encode without a mask for a feature map")
        return self.tokens.transpose(1, 2).reshape(b, d, t, h, w)


class VideoBackbone(nn.Module):
    """Base class: subclasses set the attributes in __init__ and implement `forward`."""

    mask_mode: MaskMode = "visible_only"
    requires_tube_mask: bool = False
    motion_input: bool = False  # sees changes between frames only: a still frame carries nothing
    embed_dim: int
    patch_size: tuple[int, int, int]  # (pt, ph, pw)
    num_frames: int
    img_size: int
    config: dict  # constructor arguments (with "name"), enough to rebuild the model

    @property
    def num_features(self) -> int:
        """Width of `BackboneOutput.tokens` (hierarchical backbones: the last stage's width)."""
        return self.embed_dim

    @property
    def output_stride(self) -> tuple[int, int, int]:
        """Pixels (frames, rows, cols) covered by one final token; the tubelet for plain ViTs."""
        return self.patch_size

    def token_grid(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        pt, ph, pw = self.patch_size
        if num_frames % pt or height % ph or width % pw:
            raise ValueError(
                f"input {num_frames}x{height}x{width} is not divisible by the tubelet {pt}x{ph}x{pw}")
        return num_frames // pt, height // ph, width // pw

    def forward(self, video: Tensor, mask: Tensor | None = None,
                return_layers: tuple[int, ...] = ()) -> BackboneOutput:  # pragma: no cover
        raise NotImplementedError

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def freeze_unused(self, *, masked: bool, pooled: bool) -> None:
        """requires_grad_(False) on what a caller's training step never uses, so that every
        trainable parameter gets a gradient in every step (DistributedDataParallel refuses the step
        after one that left a parameter out). `masked`: the caller passes masks (else the mask
        token, the one parameter used only for hidden tokens, is frozen); `pooled`: the caller reads
        `BackboneOutput.pooled` (subclasses freeze what only the pooled vector passes through)."""
        if not masked and isinstance(getattr(self, "mask_token", None), nn.Parameter):
            self.mask_token.requires_grad_(False)

    def flops(self, num_frames: int, height: int, width: int, mask: Tensor | None = None) -> int:
        """Forward FLOPs of one clip, measured (subclasses may count analytically)."""
        from torch.utils.flop_counter import FlopCounterMode

        param = next(self.parameters())
        channels = getattr(self, "in_chans", 3)
        video = torch.zeros(1, channels, num_frames, height, width, device=param.device, dtype=param.dtype)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            self(video, mask=mask)
        return counter.get_total_flops()

    def remap_state_dict(self, state: dict[str, Tensor], source_config: dict) -> dict[str, Tensor]:
        return state


def restore_order(mask: Tensor) -> Tensor:
    """ids_restore: index into [visible tokens..., hidden tokens...] for each grid position.

    Sorting positions by (hidden, index) lists visible ones first in grid order; inverting that
    permutation maps each grid position to its slot. Pure function of the mask.
    """
    ids_shuffle = torch.argsort(mask.to(torch.int8), dim=1, stable=True)
    return torch.argsort(ids_shuffle, dim=1)


def is_tube_mask(mask: Tensor, grid: tuple[int, int, int]) -> bool:
    """True when every frame of every row hides the same spatial positions."""
    t, h, w = grid
    m = mask.view(mask.shape[0], t, h * w)
    return bool((m == m[:, :1]).all())
