"""The hierarchical backbones: mvit.py (MViTv2-style) and swin3d.py (Video-Swin-style).

    python -m pytest -q tests/models/test_models_multiscale.py
"""

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.models import create_model
from pipeline.models.backbones.mvit import decomposed_position_bias, relative_offsets
from pipeline.models.backbones.swin3d import (SwinBlock3d, effective_window, padded_grid,
                                              window_attention_mask, window_partition,
                                              window_reverse)

TINY = {
    "mvit_tiny": dict(stem_dim=16, drop_path_rate=0.0),
    "swin3d_tiny": dict(stem_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), drop_path_rate=0.0),
}
CLIP = (8, 64, 64)  # embedding grid (4, 16, 16) for both stems


def tiny(name, **overrides):
    torch.manual_seed(0)
    return create_model(name, **{**TINY[name], **overrides})


def clip(batch=2, frames=CLIP[0], height=CLIP[1], width=CLIP[2]):
    return torch.randn(batch, 3, frames, height, width, generator=torch.Generator().manual_seed(1))


def random_mask(batch, tokens, ratio=0.75, seed=2):
    noise = torch.rand(batch, tokens, generator=torch.Generator().manual_seed(seed))
    return noise.argsort(dim=1).argsort(dim=1) < int(tokens * ratio)


def projected_loss(out):
    """A loss with a non-zero gradient through the final LayerNorm (a plain sum has none)."""
    weights = torch.randn(out.tokens.shape, generator=torch.Generator().manual_seed(3))
    return (out.tokens * weights).sum()


# --------------------------------------------------------------------------------------------
# both backbones


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("masked", [False, True])
def test_forward_backward_shapes_and_gradients(name, masked):
    model = tiny(name)
    assert model.mask_mode == "mask_token"
    grid = model.token_grid(*CLIP)
    mask = random_mask(2, math.prod(grid)) if masked else None
    out = model(clip(), mask=mask, return_layers=(0, 1, 2, 3))

    stage_grids = [(4, 16, 16), (4, 8, 8), (4, 4, 4), (4, 2, 2)]
    assert out.grid == stage_grids[-1]
    assert out.tokens.shape == (2, 16, model.embed_dim)
    assert out.pooled.shape == (2, model.embed_dim)
    torch.testing.assert_close(out.pooled, out.tokens.mean(dim=1))
    assert [tuple(x.shape) for x in out.layers] == [
        (2, math.prod(g), d) for g, d in zip(stage_grids, model.stage_dims)]
    assert model.stage_dims == tuple(model.stem_dim * 2 ** i for i in range(4))
    assert out.mask is mask

    projected_loss(out).backward()
    assert torch.isfinite(out.tokens).all()
    for param_name, param in model.named_parameters():
        if param_name == "mask_token" and not masked:
            assert param.grad is None
            continue
        assert param.grad is not None, param_name
        assert torch.isfinite(param.grad).all(), param_name
        assert param.grad.abs().sum() > 0, param_name


@pytest.mark.parametrize("name", list(TINY))
def test_return_layers_follow_the_requested_order(name):
    model = tiny(name).eval()
    with torch.no_grad():
        out = model(clip(batch=1), return_layers=(-1, 1))
    assert [x.shape[-1] for x in out.layers] == [model.stage_dims[3], model.stage_dims[1]]
    with pytest.raises(ValueError, match="return_layers: stage index 4"):
        model(clip(batch=1), return_layers=(4,))


@pytest.mark.parametrize("name", list(TINY))
def test_mask_tokens_change_the_output(name):
    model = tiny(name).eval()
    mask = random_mask(2, math.prod(model.token_grid(*CLIP)))
    with torch.no_grad():
        plain, masked = model(clip()).tokens, model(clip(), mask=mask).tokens
        no_hidden = model(clip(), mask=torch.zeros_like(mask)).tokens
    assert (plain - masked).abs().max() > 1e-3
    torch.testing.assert_close(no_hidden, plain)


def test_swin_output_ignores_hidden_pixels():
    """Swin's patch partition does not overlap, so pixels under hidden tokens cannot leak."""
    model = tiny("swin3d_tiny").eval()
    grid = model.token_grid(*CLIP)
    mask = random_mask(1, math.prod(grid))
    video = clip(batch=1)
    hidden_pixels = mask.view(1, 1, *grid).repeat_interleave(2, 2).repeat_interleave(
        4, 3).repeat_interleave(4, 4).expand_as(video)
    scrambled = torch.where(hidden_pixels, torch.randn_like(video), video)
    with torch.no_grad():
        torch.testing.assert_close(model(scrambled, mask=mask).tokens, model(video, mask=mask).tokens)


@pytest.mark.parametrize("name", list(TINY))
def test_grad_checkpointing_gives_identical_outputs_and_grads(name):
    results = []
    for checkpointing in (False, True):
        model = tiny(name)
        model.set_grad_checkpointing(checkpointing)
        out = model(clip(), mask=random_mask(2, math.prod(model.token_grid(*CLIP))))
        projected_loss(out).backward()
        results.append((out.tokens.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (tokens_a, grads_a), (tokens_b, grads_b) = results
    torch.testing.assert_close(tokens_a, tokens_b)
    for param_name, grad in grads_a.items():
        torch.testing.assert_close(grad, grads_b[param_name], msg=param_name)


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("size", [CLIP, (4, 32, 32), (6, 48, 40)])
def test_flops_match_torch_flop_counter(name, size):
    model = tiny(name).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(clip(1, *size))
    measured = counter.get_total_flops()
    assert abs(model.flops(*size) - measured) <= 0.01 * measured


@pytest.mark.parametrize("name, params_m, gmacs", [
    ("mvit_small", 34.5, 64), ("mvit_base", 51.2, 225),
    ("swin3d_tiny", 28.2, 88), ("swin3d_small", 49.8, 166), ("swin3d_base", 88.1, 282),
])
def test_paper_configs_match_published_size_and_cost(name, params_m, gmacs):
    """Papers count a 400-class head in params and report multiply-adds (fvcore) per clip."""
    with torch.device("meta"):
        model = create_model(name)
    params = sum(p.numel() for p in model.parameters()) + 401 * model.embed_dim
    assert abs(params / 1e6 - params_m) <= 0.02 * params_m
    macs = model.flops(model.num_frames, 224, 224) / 2
    assert abs(macs / 1e9 - gmacs) <= 0.02 * gmacs


@pytest.mark.parametrize("name", list(TINY))
def test_config_rebuilds_the_same_model(name):
    model = tiny(name).eval()
    assert model.config["name"] == name
    rebuilt = create_model(**model.config).eval()
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(clip(1)).tokens, model(clip(1)).tokens)


@pytest.mark.parametrize("name", list(TINY))
def test_bf16_autocast_forward_tracks_fp32(name):
    model = tiny(name).eval()
    mask = random_mask(1, math.prod(model.token_grid(*CLIP)))
    with torch.no_grad():
        reference = model(clip(1), mask=mask).tokens
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(clip(1), mask=mask).tokens.float()
    assert torch.isfinite(low).all()
    assert torch.nn.functional.cosine_similarity(low.flatten(), reference.flatten(), dim=0) > 0.99


@pytest.mark.parametrize("name", list(TINY))
def test_bad_inputs_raise_one_line_errors(name):
    model = tiny(name)
    with pytest.raises(ValueError, match=r"mask: expected a bool tensor of shape \(2, 1024\)"):
        model(clip(), mask=torch.zeros(2, 1000, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask: expected a bool"):
        model(clip(), mask=torch.zeros(2, 1024))
    with pytest.raises(ValueError, match="not divisible by the tubelet"):
        model(clip(1, 8, 62, 64))
    with pytest.raises(ValueError, match=r"video: expected \(B, 3, T, H, W\)"):
        model(torch.zeros(1, 8, 64, 64))
    with pytest.raises(TypeError, match="unknown argument"):
        create_model(name, window=3)


# --------------------------------------------------------------------------------------------
# MViT


def test_mvit_pooling_shapes_per_stage():
    """Q pooled (1,2,2) at each stage's first block; K/V stride starts at (1,8,8), adapts down."""
    model = tiny("mvit_tiny")
    grid, seen = model.token_grid(*CLIP), []
    for stage in model.stages:
        for block in stage:
            q_grid, kv_grid = block.attn.pooled_grids(grid)
            seen.append((block.attn.q_stride, block.attn.kv_stride, q_grid, kv_grid))
            grid = q_grid
    assert seen == [
        ((1, 1, 1), (1, 8, 8), (4, 16, 16), (4, 2, 2)),
        ((1, 2, 2), (1, 4, 4), (4, 8, 8), (4, 4, 4)),
        ((1, 2, 2), (1, 2, 2), (4, 4, 4), (4, 4, 4)),
        ((1, 1, 1), (1, 2, 2), (4, 4, 4), (4, 2, 2)),
        ((1, 2, 2), (1, 1, 1), (4, 2, 2), (4, 4, 4)),
    ]
    assert [block.dim_out for stage in model.stages for block in stage] == [16, 32, 64, 64, 128]
    assert [block.attn.num_heads for stage in model.stages for block in stage] == [1, 2, 4, 4, 8]


def test_mvit_relative_offsets_measure_pooled_axes_at_the_finer_resolution():
    same = relative_offsets(4, 4, torch.device("cpu"))
    assert same.tolist() == [[3 + i - j for j in range(4)] for i in range(4)]
    pooled = relative_offsets(4, 2, torch.device("cpu"))  # key j sits at fine position 2j
    assert pooled.tolist() == [[2 + i - 2 * j for j in range(2)] for i in range(4)]
    assert pooled.max() < 2 * 4 - 1 and pooled.min() >= 0


def test_mvit_position_bias_is_q_dot_the_three_axis_tables():
    """Every (query, key) logit gets q . (R_t[dt] + R_h[dh] + R_w[dw]), offsets shifted to >= 0."""
    grid, head_dim = (2, 3, 4), 5
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, math.prod(grid), head_dim, generator=gen)
    tables = tuple(torch.randn(2 * g - 1, head_dim, generator=gen) for g in grid)
    bias = decomposed_position_bias(q, grid, grid, tables)
    coords = torch.stack(torch.meshgrid(*(torch.arange(g) for g in grid), indexing="ij"), -1)
    coords = coords.view(-1, 3).tolist()
    expected = torch.empty_like(bias)
    for i, ci in enumerate(coords):
        for j, cj in enumerate(coords):
            r = sum(t[a - b + g - 1] for t, a, b, g in zip(tables, ci, cj, grid))
            expected[0, :, i, j] = q[0, :, i] @ r
    torch.testing.assert_close(bias, expected)


# --------------------------------------------------------------------------------------------
# Swin


def test_window_partition_round_trip_and_layout():
    x = torch.randn(2, 4, 6, 8, 3)
    windows = window_partition(x, (2, 3, 4))
    assert windows.shape == (2, 2 * 2 * 2, 2 * 3 * 4, 3)
    torch.testing.assert_close(windows[:, 0], x[:, :2, :3, :4].reshape(2, -1, 3))
    torch.testing.assert_close(windows[:, -1], x[:, 2:, 3:, 4:].reshape(2, -1, 3))
    torch.testing.assert_close(window_reverse(windows, (2, 3, 4), (4, 6, 8)), x)


def true_window(coords, window, shift):
    """Shifted windows start at `shift` on each axis (the first one is partial): label per axis."""
    return tuple((c - s) // w for c, w, s in zip(coords, window, shift))


@pytest.mark.parametrize("grid, window, shift", [
    ((4, 8, 8), (2, 4, 4), (1, 2, 2)),   # shifted, no padding
    ((3, 10, 9), (2, 4, 4), (1, 2, 2)),  # shifted and padded
    ((3, 10, 9), (2, 4, 4), (0, 0, 0)),  # padded only
])
def test_window_mask_allows_exactly_the_true_windows(grid, window, shift):
    padded = padded_grid(grid, window)
    coords = torch.stack(torch.meshgrid(*(torch.arange(p) for p in padded), indexing="ij"), -1)
    rolled = torch.roll(coords, shifts=tuple(-s for s in shift), dims=(0, 1, 2))
    in_windows = window_partition(rolled[None], window)[0].tolist()  # (nW, Wn, 3) original coords
    allowed = window_attention_mask(grid, window, shift) == 0
    for w, members in enumerate(in_windows):
        for i, query in enumerate(members):
            if any(c >= g for c, g in zip(query, grid)):
                continue  # a padded query's output is cropped away
            for j, key in enumerate(members):
                key_real = all(c < g for c, g in zip(key, grid))
                expected = key_real and true_window(query, window, shift) == true_window(key, window, shift)
                assert bool(allowed[w, i, j]) == expected, (query, key)


def test_window_mask_is_none_when_nothing_is_forbidden():
    assert window_attention_mask((4, 8, 8), (2, 4, 4), (0, 0, 0)) is None


@pytest.mark.parametrize("grid", [(4, 8, 8), (3, 6, 7)])
def test_shifted_block_never_mixes_tokens_across_window_boundaries(grid):
    """A token's output depends on exactly the tokens of its true shifted window (its gradient
    is exactly zero elsewhere: masked logits underflow to zero weight)."""
    torch.manual_seed(0)
    window = (2, 4, 4)
    block = SwinBlock3d(8, 2, window, shifted=True, mlp_ratio=2.0, drop_path=0.0).double()
    shift = effective_window(grid, window, block.shift)[1]
    assert shift == (1, 2, 2)
    coords = torch.stack(torch.meshgrid(*(torch.arange(g) for g in grid), indexing="ij"), -1)
    coords = coords.view(-1, 3).tolist()
    x = torch.randn(1, math.prod(grid), 8, dtype=torch.float64, requires_grad=True)
    out = block(x, grid)[0]
    for target in (0, 5, 40, math.prod(grid) - 1):
        (grad,) = torch.autograd.grad(out[0, target].sum(), x, retain_graph=True)
        depends = grad[0].abs().amax(-1) > 0
        label = true_window(coords[target], window, shift)
        expected = torch.tensor([true_window(c, window, shift) == label for c in coords])
        assert torch.equal(depends, expected), coords[target]


def test_windows_larger_than_the_grid_are_clamped_and_unshifted():
    assert effective_window((4, 8, 8), (8, 7, 7), (4, 3, 3)) == ((4, 7, 7), (0, 3, 3))
    assert effective_window((2, 4, 4), (16, 14, 14), (8, 7, 7)) == ((2, 4, 4), (0, 0, 0))
    torch.manual_seed(0)
    shifted = SwinBlock3d(8, 2, (16, 14, 14), shifted=True, mlp_ratio=2.0, drop_path=0.0)
    plain = SwinBlock3d(8, 2, (16, 14, 14), shifted=False, mlp_ratio=2.0, drop_path=0.0)
    plain.load_state_dict(shifted.state_dict())
    x = torch.randn(2, 2 * 4 * 4, 8)
    torch.testing.assert_close(shifted(x, (2, 4, 4))[0], plain(x, (2, 4, 4))[0])

    model = tiny("swin3d_tiny", window_size=(16, 14, 14))
    out = model(clip(1, 4, 32, 32))
    assert out.grid == (2, 1, 1) and torch.isfinite(out.tokens).all()
