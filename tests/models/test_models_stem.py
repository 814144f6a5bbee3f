"""ViT input options: the conv stem (stem="conv") and frame-difference input (input_transform).

    python -m pytest -q tests/models/test_models_stem.py
"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.models import create_model
from pipeline.data.masking import random_mask, tube_mask
from pipeline.models.checkpoint import load_backbone, save_backbone
from pipeline.models.layers import ConvStem, TubeletEmbed, frame_differences

TINY = dict(embed_dim=32, depth=2, num_heads=2, num_frames=4, img_size=32, patch_size=(2, 8, 8))


def tiny(attention: str = "joint", **kw):
    torch.manual_seed(0)
    return create_model(f"vit_tiny_{attention}", **{**TINY, **kw}).eval()


def clip(frames: int = 4, size: int = 32, batch: int = 2, seed: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("patch, strides", [((2, 8, 8), [(1, 2, 2), (2, 2, 2), (1, 2, 2)]),
                                            ((2, 16, 16), [(1, 2, 2), (2, 2, 2), (1, 2, 2), (1, 2, 2)]),
                                            ((1, 4, 4), [(1, 2, 2), (1, 2, 2)]),
                                            ((4, 4, 4), [(2, 2, 2), (2, 2, 2)])])
def test_conv_stem_lands_on_the_tubelet_grid(patch, strides):
    stem, embed = ConvStem(3, 24, patch), TubeletEmbed(3, 24, patch)
    video = clip(frames=8, size=32, batch=1)
    assert stem.strides == strides
    assert stem(video).shape == embed(video).shape == (1, (8 // patch[0]) * (32 // patch[1]) ** 2, 24)


@pytest.mark.parametrize("patch", [(2, 8, 4), (2, 12, 12), (3, 8, 8), (16, 8, 8)])
def test_conv_stem_rejects_tubelets_it_cannot_build(patch):
    with pytest.raises(ValueError, match="patch_size: the conv stem needs") as e:
        ConvStem(3, 24, patch)
    assert "\n" not in str(e.value)


def test_conv_stem_mixes_neighbouring_tubelets_when_unmasked():
    """Its receptive field overlaps: changing one tubelet's pixels moves its neighbours' tokens."""
    model = tiny(stem="conv")
    video = clip(batch=1)
    edited = video.clone()
    edited[:, :, 0:2, 0:8, 0:8] += 1.0  # tubelet (0, 0, 0)
    with torch.no_grad():
        a, b = model.patch_embed(video), model.patch_embed(edited)
    assert not torch.allclose(a[0, 1], b[0, 1])  # token (0, 0, 1), a neighbour


@pytest.mark.parametrize("attention, stem, input_transform, masking, mask_mode", [
    ("joint", "conv", "none", "tube", "visible_only"), ("joint", "conv", "frame_diff", "tube", "visible_only"),
    ("divided", "conv", "frame_diff", "tube", "visible_only"), ("joint", "conv", "none", "random", "visible_only"),
    ("joint", "conv", "frame_diff", "random", "visible_only"), ("joint", "tubelet", "frame_diff", "random", "visible_only"),
    ("joint", "conv", "frame_diff", "tube", "mask_token"), ("divided", "conv", "frame_diff", "random", "mask_token"),
    ("joint", "tubelet", "none", "random", "mask_token")])
def test_masked_encoding_never_sees_hidden_pixels(attention, stem, input_transform, masking, mask_mode):
    """Masked encoding: rewriting every hidden tubelet's pixels leaves every output token
    unchanged, also where a frame difference or a 3x3x3 conv reaches across a tubelet border.
    Visible-only encoding returns the visible tokens; mask_token encoding returns all of them."""
    model = tiny(attention, stem=stem, input_transform=input_transform, mask_mode=mask_mode)
    grid = model.token_grid(4, 32, 32)
    generator = torch.Generator().manual_seed(1)
    mask = (tube_mask(2, grid, 0.75, generator) if masking == "tube"
            else random_mask(2, grid, 0.75, generator))
    video = clip()
    hidden = mask.view(2, 1, *grid, 1, 1, 1).float()  # (B, 1, t, h, w, 1, 1, 1)
    noise = clip(seed=9).view(2, 3, grid[0], 2, grid[1], 8, grid[2], 8).permute(0, 1, 2, 4, 6, 3, 5, 7)
    edited = video + (noise * hidden).permute(0, 1, 2, 5, 3, 6, 4, 7).reshape(video.shape)
    assert not torch.equal(edited, video)
    with torch.no_grad():
        a, b = model(video, mask=mask), model(edited, mask=mask)
    torch.testing.assert_close(a.tokens, b.tokens, rtol=0, atol=1e-6)
    assert a.tokens.shape == ((2, 8, 32) if mask_mode == "visible_only" else (2, 32, 32))
    assert torch.equal(a.mask, mask)


def test_mask_token_encoding_is_the_plain_model_when_unmasked_and_learns_its_token():
    plain, tokened = tiny(stem="conv"), tiny(stem="conv", mask_mode="mask_token")
    assert tokened.load_state_dict(plain.state_dict(), strict=False).missing_keys == ["mask_token"]
    video = clip()
    with torch.no_grad():
        torch.testing.assert_close(tokened(video).tokens, plain(video).tokens)
    mask = tube_mask(2, tokened.token_grid(4, 32, 32), 0.5)
    tokened(video, mask=mask).tokens.square().mean().backward()
    assert tokened.mask_token.grad.abs().sum() > 0


def test_frame_diff_input_ignores_what_does_not_move():
    """x_t - x_(t-1) is blind to a still image added to every frame."""
    model = tiny(stem="conv", input_transform="frame_diff")
    video = clip()
    still = torch.randn(2, 3, 1, 32, 32).expand_as(video)
    with torch.no_grad():
        torch.testing.assert_close(model(video).tokens, model(video + still).tokens, rtol=0, atol=1e-5)
        assert not torch.allclose(tiny(stem="conv")(video).tokens, tiny(stem="conv")(video + still).tokens)


def test_frame_differences_by_hand_and_too_short_clips():
    video = torch.tensor([0.0, 1.0, 3.0, 6.0]).view(1, 1, 4, 1, 1)
    assert frame_differences(video).flatten().tolist() == [1.0, 1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="need >= 2 frames"):
        frame_differences(video[:, :, :1])


@pytest.mark.parametrize("masked, mask_mode", [(False, "visible_only"), (True, "visible_only"), (True, "mask_token")])
def test_conv_stem_flops_match_flop_counter_mode(masked, mask_mode):
    model = tiny(stem="conv", input_transform="frame_diff", mask_mode=mask_mode)
    mask = tube_mask(1, model.token_grid(4, 32, 32), 0.75) if masked else None
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(clip(batch=1), mask=mask)
    assert model.flops(4, 32, 32, mask=mask) == counter.get_total_flops()


def test_stem_options_survive_a_checkpoint(tmp_path):
    model = tiny(stem="conv", input_transform="frame_diff")
    save_backbone(model, tmp_path / "enc")
    loaded = load_backbone(tmp_path / "enc").eval()
    assert loaded.config["stem"] == "conv" and loaded.config["input_transform"] == "frame_diff"
    with torch.no_grad():
        torch.testing.assert_close(loaded(clip()).tokens, model(clip()).tokens)


@pytest.mark.parametrize("kwargs, needle", [(dict(stem="patchify"), "stem: must be one of"),
                                            (dict(input_transform="flow"), "input_transform: must be one of"),
                                            (dict(mask_mode="drop"), "mask_mode: must be one of")])
def test_bad_input_options_raise_one_line_errors(kwargs, needle):
    with pytest.raises(ValueError, match=needle) as e:
        tiny(**kwargs)
    assert "\n" not in str(e.value)
