"""Every registered backbone: forward + backward with and without a mask, and a save/load roundtrip.

    python -m pytest -q tests/models/test_models_generic.py

Models too big for a CPU test register shrinking overrides (registry.generic_test_overrides), e.g.
ViT-B/L/H run at their real width with two blocks. A parameter used only for hidden tokens must be
named *mask_token* (it gets no gradient from an unmasked clip).
"""

import math

import pytest
import torch

from pipeline.data.masking import tube_mask
from pipeline.models import create_model, list_models
from pipeline.models.base import BackboneOutput, VideoBackbone
from pipeline.models.checkpoint import load_backbone, save_backbone
from pipeline.models.registry import generic_test_overrides

BATCH, FRAMES, SIZE = 2, 8, 64


def _loss(out: BackboneOutput) -> torch.Tensor:
    """Random projections of every output (a plain sum of squares is blind behind a LayerNorm)."""
    g = torch.Generator().manual_seed(1)
    parts = [out.tokens, out.pooled, *out.layers]
    return sum((p * torch.randn(p.shape, generator=g)).sum() for p in parts)


def _check_output(model: VideoBackbone, out: BackboneOutput, mask: torch.Tensor | None) -> None:
    full = math.prod(out.grid)
    if mask is not None and model.mask_mode == "visible_only":
        expected = int((~mask[0]).sum())
        assert out.mask is mask
    else:
        expected = full
    assert out.tokens.shape[:2] == (BATCH, expected)
    assert out.pooled.shape == (BATCH, out.tokens.shape[-1])
    assert len(out.layers) == 2 and all(layer.shape[0] == BATCH for layer in out.layers)
    for tensor in (out.tokens, out.pooled, *out.layers):
        assert torch.isfinite(tensor).all()


def _check_grads(model: VideoBackbone, masked: bool) -> None:
    for name, p in model.named_parameters():
        if not masked and "mask_token" in name:
            continue
        assert p.grad is not None, f"{name}: no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient"


@pytest.mark.parametrize("name", list_models())
def test_every_model_forward_backward_and_roundtrip(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, **generic_test_overrides(name))
    assert isinstance(model, VideoBackbone) and model.config["name"] == name
    video = torch.randn(BATCH, 3, FRAMES, SIZE, SIZE)
    grid = model.token_grid(FRAMES, SIZE, SIZE)
    mask = tube_mask(BATCH, grid, 0.5, torch.Generator().manual_seed(0))
    for m in (None, mask):
        model.zero_grad(set_to_none=True)
        out = model(video, mask=m, return_layers=(0, -1))
        _check_output(model, out, m)
        _loss(out).backward()
        _check_grads(model, masked=m is not None)

    model.eval()
    save_backbone(model, tmp_path / "backbone")
    loaded = load_backbone(tmp_path / "backbone").eval()
    with torch.no_grad():
        a, b = model(video, mask=mask), loaded(video, mask=mask)
    torch.testing.assert_close(a.tokens, b.tokens, rtol=0, atol=0)
    torch.testing.assert_close(a.pooled, b.pooled, rtol=0, atol=0)
