"""The video ViT family: positions, masks, attention paths, checkpointing, layers, FLOPs, sizes.

    python -m pytest -q tests/models/test_models_vit.py
"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.models import create_model
from pipeline.data.masking import tube_mask
from pipeline.models.attention import MIXERS, TokenLayout, fit_window
from pipeline.models.backbones.vit import ATTENTIONS
from pipeline.models.base import VideoBackbone, is_tube_mask
from pipeline.models.checkpoint import load_backbone, save_backbone
from pipeline.models.layers import resize_pos_grid

TINY = dict(embed_dim=32, depth=2, num_heads=2, num_frames=4, img_size=32, patch_size=(2, 8, 8))


def tiny(attention: str, **kw):
    torch.manual_seed(0)
    return create_model(f"vit_tiny_{attention}", **{**TINY, **kw}).eval()


def clip(frames: int = 4, size: int = 32, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("pos_embed", ["sincos", "learned"])
def test_position_table_resamples_for_another_input_size(pos_embed):
    model = tiny("joint", pos_embed=pos_embed)
    base = model.position_embedding(model.base_grid)
    assert torch.equal(base, model.pos_embed)
    out = model(clip(frames=8, size=48))
    assert out.grid == (4, 6, 6) and out.tokens.shape == (2, 144, 32)
    # a resampled table keeps values where old and new grid points coincide (time, nearest corners)
    doubled_time = model.position_embedding((4, 4, 4)).view(4, 16, 32)
    table = model.pos_embed.view(2, 16, 32)
    torch.testing.assert_close(doubled_time[0], table[0], atol=0, rtol=0)
    torch.testing.assert_close(doubled_time[-1], table[-1], atol=0, rtol=0)
    assert not torch.allclose(doubled_time[1], table[0])


def test_resize_pos_grid_is_identity_on_same_grid_and_rejects_wrong_size():
    pos = torch.randn(1, 2 * 3 * 3, 8)
    assert resize_pos_grid(pos, (2, 3, 3), (2, 3, 3)) is pos
    assert resize_pos_grid(pos, (2, 3, 3), (3, 5, 4)).shape == (1, 60, 8)
    with pytest.raises(ValueError, match="pos_embed"):
        resize_pos_grid(pos, (2, 4, 4), (2, 3, 3))


def test_learned_positions_resampled_on_load(tmp_path):
    model = tiny("joint", pos_embed="learned")
    save_backbone(model, tmp_path / "b")
    longer = load_backbone(tmp_path / "b", num_frames=8, img_size=48).eval()
    assert longer.pos_embed.shape == (1, 4 * 6 * 6, 32)
    torch.testing.assert_close(longer.pos_embed, resize_pos_grid(model.pos_embed, (2, 4, 4), (4, 6, 6)))
    # at forward time the original model resamples the same way: identical outputs
    video = clip(frames=8, size=48)
    with torch.no_grad():
        torch.testing.assert_close(longer(video).tokens, model(video).tokens)


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_grad_checkpointing_gives_same_outputs_and_grads(attention):
    video = clip()
    results = []
    for enable in (False, True):
        model = tiny(attention).train()
        model.set_grad_checkpointing(enable)
        out = model(video)
        (out.tokens.square().sum() + out.pooled.sum()).backward()
        results.append((out.tokens.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], rtol=1e-5, atol=1e-6, msg=name)


def test_intermediate_layers_are_block_outputs():
    model = tiny("joint", cls_token=True, depth=3)
    video = clip()
    seen = []
    hooks = [blk.register_forward_hook(lambda m, i, o: seen.append(o)) for blk in model.blocks]
    out = model(video, return_layers=(0, -1, 1))
    for h in hooks:
        h.remove()
    assert len(out.layers) == 3
    for layer, block in zip(out.layers, (0, 2, 1)):
        assert torch.equal(layer, seen[block][:, 1:])  # patch tokens only, cls dropped
    with pytest.raises(ValueError, match="return_layers: index 3 out of range"):
        model(video, return_layers=(3,))


def test_feature_map_puts_tokens_on_their_grid():
    out = tiny("factorised")(clip())
    fmap = out.feature_map()
    assert fmap.shape == (2, 32, 2, 4, 4)
    assert torch.equal(fmap[1, :, 1, 2, 3], out.tokens[1, 16 + 2 * 4 + 3])
    with pytest.raises(ValueError, match="visible-only output"):
        tiny("joint")(clip(), mask=tube_mask(2, (2, 4, 4), 0.5)).feature_map()


def test_factorised_layers_span_spatial_then_temporal_blocks():
    model = tiny("factorised", temporal_depth=2)
    out = model(clip(), return_layers=(1, 2, 3))
    assert [tuple(x.shape) for x in out.layers] == [(2, 32, 32), (2, 2, 32), (2, 2, 32)]


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("masked", [False, True])
def test_flop_count_matches_flop_counter_mode(attention, masked):
    model = tiny(attention, cls_token=attention in ("joint", "divided"))
    grid = model.token_grid(4, 32, 32)
    mask = tube_mask(1, grid, 0.75) if masked else None
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(clip(batch=1), mask=mask)
    assert model.flops(4, 32, 32, mask=mask) == counter.get_total_flops()


def test_measured_default_flops_of_the_base_class_agree_with_the_analytic_count():
    model = tiny("sparse")
    mask = tube_mask(1, (2, 4, 4), 0.5)
    assert VideoBackbone.flops(model, 4, 32, 32, mask=mask) == model.flops(4, 32, 32, mask=mask)


def test_tube_mask_hides_the_same_positions_in_every_frame():
    mask = tube_mask(3, (4, 5, 6), 0.9, torch.Generator().manual_seed(0))
    assert mask.shape == (3, 120) and is_tube_mask(mask, (4, 5, 6))
    assert mask.sum(1).tolist() == [4 * 27] * 3 and not torch.equal(mask[0], mask[1])


def test_flops_of_masked_joint_encoding_shrink_with_the_visible_tokens():
    model = create_model("vit_small_joint")
    mask = tube_mask(1, model.base_grid, 0.9)
    ratio = model.flops(16, 224, 224) / model.flops(16, 224, 224, mask=mask)
    assert ratio > 9  # attention is quadratic, projections linear: more than 1 / 0.1 after the embedding


def test_masks_that_a_model_cannot_encode_raise():
    video = clip()
    grid = (2, 4, 4)
    random = torch.zeros(2, 2, 16, dtype=torch.bool)
    random[:, 0, :8] = True
    random[:, 1, 8:] = True  # 8 hidden per row, but not the same positions in both frames
    random = random.view(2, 32)
    for attention in ("divided", "factorised", "axial"):
        with pytest.raises(ValueError, match=r"needs a tube mask"):
            tiny(attention)(video, mask=random)
    for attention in ("joint", "sparse"):
        assert tiny(attention)(video, mask=random).tokens.shape == (2, 16, 32)
    uneven = tube_mask(2, grid, 0.5)
    uneven[0, 0] = ~uneven[0, 0]
    with pytest.raises(ValueError, match="same number of hidden tokens"):
        tiny("joint")(video, mask=uneven)
    with pytest.raises(ValueError, match=r"expected a \(2, 32\) bool tensor"):
        tiny("joint")(video, mask=torch.zeros(2, 31, dtype=torch.bool))
    with pytest.raises(ValueError, match="hides every token"):
        tiny("joint")(video, mask=torch.ones(2, 32, dtype=torch.bool))


def test_visible_only_tokens_match_encoding_the_visible_tokens_directly():
    """Joint attention over the visible tokens = running the blocks on the gathered tokens."""
    model = tiny("joint")
    video = clip()
    mask = tube_mask(2, (2, 4, 4), 0.5)
    out = model(video, mask=mask)
    x = (model.patch_embed(video) + model.pos_embed)[~mask].view(2, -1, 32)
    for blk in model.blocks:
        x = blk(x, TokenLayout((2, 4, 4)))
    torch.testing.assert_close(out.tokens, model.norm(x))


@pytest.mark.parametrize("kind", ["axial", "sparse"])
def test_masked_attention_path_equals_dense_path_when_all_tokens_are_kept(kind):
    torch.manual_seed(0)
    mixer = MIXERS[kind](32, 2, window=(2, 2, 2)) if kind == "sparse" else MIXERS[kind](32, 2)
    prefix = 3 if kind == "sparse" else 0
    grid = (2, 4, 4)
    x = torch.randn(2, prefix + 32, 32)
    dense = mixer(x, TokenLayout(grid, prefix))
    everything = torch.arange(32).expand(2, 32)
    masked = mixer(x, TokenLayout(grid, prefix, everything))
    torch.testing.assert_close(dense, masked, rtol=1e-5, atol=1e-6)


def test_sparse_attention_is_local_plus_global():
    torch.manual_seed(0)
    mixer = MIXERS["sparse"](16, 2, window=(1, 2, 2))
    grid, globals_ = (1, 4, 4), 2
    x = torch.randn(1, globals_ + 16, 16)
    y = x.clone()
    y[0, globals_ + 0] += torch.randn(16)  # token (0, 0, 0): window {0, 1, 4, 5}
    a, b = mixer(x, TokenLayout(grid, globals_)), mixer(y, TokenLayout(grid, globals_))
    changed = (a - b).abs().amax(-1)[0] > 1e-6
    window = {globals_ + i for i in (0, 1, 4, 5)}
    assert set(changed.nonzero().flatten().tolist()) == set(range(globals_)) | window
    assert fit_window((8, 14, 14), (2, 7, 7)) == (2, 7, 7)
    assert fit_window((3, 6, 5), (2, 4, 7)) == (1, 3, 5)


@pytest.mark.parametrize("size, params_m", [("tiny", 5.6), ("small", 22.0), ("base", 86.2),
                                            ("large", 303.4), ("huge", 631.9)])
def test_full_sizes_have_the_published_parameter_counts(size, params_m):
    with torch.device("meta"):
        model = create_model(f"vit_{size}_joint")
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params_m, rel=0.01)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(attention="windowed"), "attention: must be one of"),
    (dict(cls_token=True, attention="axial"), "cls_token: supported by joint and divided"),
    (dict(window=(2, 2, 2)), "window: applies to sparse attention only"),
    (dict(pos_embed="rope"), "pos_embed: must be one of"),
    (dict(num_heads=5), "num_heads: 5 does not divide embed_dim 32"),
    (dict(act="relu"), "act: must be one of"),
])
def test_bad_arguments_raise_one_line_errors(kwargs, needle):
    with pytest.raises(ValueError) as e:
        create_model("vit_tiny_joint", **{**TINY, **kwargs})
    assert needle in str(e.value) and "\n" not in str(e.value)
