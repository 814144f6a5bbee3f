"""Objectives: targets, decoders on both mask modes, causality, precision weighting, guided masks."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import ObjectiveConfig
from pipeline.data.masking import tube_mask
from pipeline.models import create_model
from pipeline.objectives.common import gaussian_nll, normalize_patches, patchify, target_video, unpatchify
from pipeline.objectives.guided_masking import guided_tube_mask
from pipeline.objectives.predictive import NextFramePredictive, causal_time_mask
from pipeline.models.layers import frame_differences
from pipeline.objectives.videomae import VideoMAE

TINY = dict(embed_dim=32, depth=1, num_heads=2, patch_size=(2, 8, 8), num_frames=8, img_size=32)
DEC = dict(decoder_dim=32, decoder_depth=1, decoder_heads=2)


def _mask(encoder, batch=2, ratio=0.75, seed=0):
    grid = encoder.token_grid(encoder.num_frames, encoder.img_size, encoder.img_size)
    return tube_mask(batch, grid, ratio, torch.Generator().manual_seed(seed))


def test_patchify_roundtrip_and_normalisation():
    video = torch.randn(2, 3, 8, 32, 32)
    patches = patchify(video, (2, 8, 8))
    assert patches.shape == (2, 4 * 4 * 4, 2 * 8 * 8 * 3)
    assert torch.equal(unpatchify(patches, (2, 8, 8), (4, 4, 4), 3), video)
    normed, _, _ = normalize_patches(patches, 3)
    per_channel = normed.reshape(2, 64, -1, 3)
    torch.testing.assert_close(per_channel.mean(2), torch.zeros(2, 64, 3), atol=1e-5, rtol=0)


def test_videomae_predicts_only_hidden_tubelets_and_learns():
    torch.manual_seed(0)
    encoder = create_model("vit_tiny_joint", **TINY)
    obj = VideoMAE(encoder, ObjectiveConfig(**DEC))
    video, mask = torch.randn(2, 3, 8, 32, 32), _mask(encoder)
    loss, _, full = obj.reconstruct(video, mask)
    assert (full[~mask] == 0).all() and (full[mask] != 0).any()
    opt = torch.optim.AdamW(obj.parameters(), lr=3e-3)
    first = float(loss.detach())
    for _ in range(30):
        loss, _ = obj({"video": video, "mask": mask})
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.9 * first
    assert obj.visualize({"video": video, "mask": mask}).shape[2] == 3


def test_frame_difference_target_is_motion_only():
    video = torch.arange(4.0).view(1, 1, 4, 1, 1).expand(1, 1, 4, 2, 2) ** 2  # frames 0, 1, 4, 9
    assert frame_differences(video)[0, 0, :, 0, 0].tolist() == [1.0, 1.0, 3.0, 5.0]
    encoder = create_model("vit_tiny_joint", **TINY)
    obj = VideoMAE(encoder, ObjectiveConfig(**DEC, target="frame_diff"))
    still = torch.randn(2, 3, 1, 32, 32).expand(2, 3, 8, 32, 32)  # no motion: nothing to reconstruct
    assert obj.targets(still).abs().max() == 0
    moving = torch.stack([torch.randn(2, 3, 32, 32).roll(2 * t, dims=-1) for t in range(8)], dim=2)
    target, pixels = obj.targets(moving), VideoMAE(encoder, ObjectiveConfig(**DEC)).targets(moving)
    assert target.shape == pixels.shape and target.abs().max() > 0 and not torch.allclose(target, pixels)
    # pictures: input, then masked and reconstructed differences (mid-grey = no change)
    picture = obj.visualize({"video": still.contiguous(), "mask": _mask(encoder)})
    assert picture.shape == (3 * 34 - 2, 8 * 34 - 2, 3) and (picture[34:66, :32] == 128).all()  # row 2, frame 1
    with pytest.raises(Exception, match="objective.target"):
        ObjectiveConfig(target="flow").validate()


def test_motion_energy_target_is_the_magnitude_of_change_for_both_objectives():
    video = -(torch.arange(4.0).view(1, 1, 4, 1, 1).expand(1, 1, 4, 2, 2) ** 2)  # frames 0, -1, -4, -9
    assert target_video(video, "motion_energy")[0, 0, :, 0, 0].tolist() == [1.0, 1.0, 3.0, 5.0]
    assert target_video(video, "frame_diff")[0, 0, :, 0, 0].tolist() == [-1.0, -1.0, -3.0, -5.0]
    encoder = create_model("vit_tiny_joint", **TINY)
    cfg = ObjectiveConfig(**DEC, target="motion_energy", norm_pix_loss=False)
    moving = torch.stack([torch.randn(2, 3, 32, 32).roll(2 * t, dims=-1) for t in range(8)], dim=2)
    mae = VideoMAE(encoder, cfg)
    # the sign of a change is not part of the target: a negated clip has the same one
    torch.testing.assert_close(mae.targets(moving), mae.targets(-moving))
    torch.testing.assert_close(mae.targets(moving), patchify(frame_differences(moving).abs(), (2, 8, 8)))
    predictive = NextFramePredictive(encoder, cfg)
    torch.testing.assert_close(predictive.future_target(moving), frame_differences(moving).abs()[:, :, 6:])
    # pictures: no change is black in the masked and reconstructed rows
    still = torch.randn(2, 3, 1, 32, 32).expand(2, 3, 8, 32, 32).contiguous()
    picture = mae.visualize({"video": still, "mask": _mask(encoder)})
    assert (picture[34:66, :32] == 0).all()


def test_decoder_masking_reconstructs_a_fixed_share_of_hidden_tokens():
    encoder = create_model("vit_tiny_joint", **TINY)
    obj = VideoMAE(encoder, ObjectiveConfig(**DEC, decoder_mask_ratio=0.5))
    video, mask = torch.randn(2, 3, 8, 32, 32), _mask(encoder)
    out = encoder(video, mask)
    pred, ids = obj._decode_visible_only(out.tokens, mask, encoder.token_grid(8, 32, 32))
    hidden = int(mask[0].sum())
    assert pred.shape[1] == ids.shape[1] == round(0.5 * hidden)
    assert mask.gather(1, ids).all()  # only hidden positions are reconstructed


@pytest.mark.parametrize("name", ["mvit_tiny", "swin3d_tiny"])
def test_videomae_on_mask_token_backbones(name):
    encoder = create_model(name, num_frames=8, img_size=64)
    obj = VideoMAE(encoder, ObjectiveConfig(**DEC))
    grid = encoder.token_grid(8, 64, 64)
    mask = tube_mask(2, grid, 0.75, torch.Generator().manual_seed(0))
    loss, _ = obj({"video": torch.randn(2, 3, 8, 64, 64), "mask": mask})
    loss.backward()
    assert torch.isfinite(loss) and encoder.patch_embed.weight.grad.abs().sum() > 0


def test_videomae_with_a_mask_token_vit_scores_hidden_tubelets_only():
    """mask_mode=mask_token: the loss is the mean error over hidden tokens; visible ones count for nothing."""
    torch.manual_seed(0)
    encoder = create_model("vit_tiny_joint", **TINY, stem="conv", mask_mode="mask_token")
    obj = VideoMAE(encoder, ObjectiveConfig(**DEC))
    video, mask = torch.randn(2, 3, 8, 32, 32), _mask(encoder)
    loss, _, full = obj.reconstruct(video, mask)
    per_token = ((full - obj.targets(video)) ** 2).mean(-1)
    torch.testing.assert_close(loss, per_token[mask].mean())
    loss.backward()
    assert encoder.mask_token.grad.abs().sum() > 0


@pytest.mark.parametrize("mask_mode,latent_norm", [("visible_only", "layer"), ("mask_token", "layer"),
                                                   ("visible_only", "instance"), ("mask_token", "instance")])
def test_videomae_latent_target_regresses_the_ema_tokens_of_hidden_positions(mask_mode, latent_norm):
    """latent_target: loss = pixel MSE + latent_weight x MSE between the decoder's latent head and
    the EMA encoder's tokens of the unmasked clip, over hidden positions only; latent_norm=layer
    standardises each token over its channels, instance each channel over the clip's tokens."""
    torch.manual_seed(0)
    encoder = create_model("vit_tiny_joint", **TINY, stem="conv", mask_mode=mask_mode)
    obj = VideoMAE(encoder, ObjectiveConfig(**DEC, latent_target=True, latent_weight=0.5, ema_momentum=0.5,
                                            latent_norm=latent_norm))
    video, mask = torch.randn(2, 3, 8, 32, 32), _mask(encoder)
    loss, logs, _ = obj.reconstruct(video, mask)
    torch.testing.assert_close(float(loss.detach()), float(logs["pixel_mse"] + 0.5 * logs["latent_mse"]),
                               rtol=1e-5, atol=1e-6)
    grid = encoder.token_grid(8, 32, 32)
    with torch.no_grad():
        tokens = obj.target_encoder(video).tokens  # (B, N, D), all positions
        axis = -1 if latent_norm == "layer" else 1
        wanted = (tokens - tokens.mean(axis, keepdim=True)) / (tokens.var(axis, unbiased=False, keepdim=True)
                                                               + 1e-5).sqrt()
        out = encoder(video, mask)
        if mask_mode == "mask_token":
            err2 = ((obj.latent_head(obj._decode_mask_token(out.tokens, grid)) - wanted) ** 2).mean(-1)[mask]
        else:
            dec, ids = obj._decode_visible_only(out.tokens, mask, grid)
            assert mask.gather(1, ids).all()  # the regressed positions are the hidden ones
            err2 = ((obj.latent_head(dec) - wanted.gather(1, ids[..., None].expand(-1, -1, wanted.shape[-1]))) ** 2)
    torch.testing.assert_close(float(logs["latent_mse"]), float(err2.mean()), rtol=1e-4, atol=1e-6)
    # each optimizer step's after_step moves the EMA encoder towards the online one (the trainer
    # calls it); it never gets a gradient, and a forward alone does not move it
    opt = torch.optim.AdamW([p for p in obj.parameters() if p.requires_grad], lr=3e-3)
    before = [t.clone() for t in obj.target_encoder.parameters()]
    for _ in range(3):
        loss, _ = obj({"video": video, "mask": mask})
        opt.zero_grad()
        loss.backward()
        opt.step()
        obj.after_step()
    assert all(t.grad is None for t in obj.target_encoder.parameters())
    moved = sum((t - b).abs().sum() for t, b in zip(obj.target_encoder.parameters(), before))
    gap = sum((t - s).abs().sum() for t, s in zip(obj.target_encoder.parameters(), encoder.parameters()))
    assert moved > 0 and 0 < gap < sum(s.abs().sum() for s in encoder.parameters())
    frozen = [t.clone() for t in obj.target_encoder.parameters()]
    obj({"video": video, "mask": mask})  # a forward does not update the EMA encoder
    assert all(torch.equal(t, f) for t, f in zip(obj.target_encoder.parameters(), frozen))
    with pytest.raises(Exception, match="objective.latent_norm"):
        ObjectiveConfig(latent_norm="batch").validate()


@pytest.mark.parametrize("name,mask_mode", [("vit_tiny_joint", "visible_only"), ("vit_tiny_joint", "mask_token"),
                                            ("mvit_tiny", "mask_token")])
def test_videomae_precision_weighting_is_the_gaussian_nll_of_hidden_tokens(name, mask_mode):
    """precision_weighted: loss = mean over hidden tokens of 0.5*exp(s)*err^2 - 0.5*s, s from the
    precision head (on a coarser final grid, each final token's s covers its region)."""
    torch.manual_seed(0)
    kwargs = dict(TINY, mask_mode=mask_mode) if name == "vit_tiny_joint" else dict(num_frames=8, img_size=64)
    encoder = create_model(name, **kwargs)
    obj = VideoMAE(encoder, ObjectiveConfig(**DEC, norm_pix_loss=False, precision_weighted=True)).eval()
    size = kwargs["img_size"]
    grid = encoder.token_grid(8, size, size)
    video, mask = torch.randn(2, 3, 8, size, size), tube_mask(2, grid, 0.5, torch.Generator().manual_seed(0))
    loss, logs, full = obj.reconstruct(video, mask)
    err2 = ((full - obj.targets(video)) ** 2).mean(-1)[mask].detach()
    # the head starts at precision 1 (s = 0): the loss is half the hidden tokens' mean squared error
    torch.testing.assert_close(float(loss.detach()), 0.5 * float(err2.mean()), rtol=1e-5, atol=1e-7)
    assert float(logs["precision"]) == 1.0 and float(logs["pixel_mse"]) == pytest.approx(float(err2.mean()), rel=1e-5)
    torch.nn.init.normal_(obj.precision_head.weight, std=0.5)
    loss, _, full = obj.reconstruct(video, mask)
    with torch.no_grad():
        out = encoder(video, mask)
        if mask_mode == "visible_only":
            dec, ids = obj._decode_visible_only(out.tokens, mask, grid)
            s = torch.zeros(mask.shape).scatter(1, ids, obj.precision_head(dec).squeeze(-1))
        else:
            s_final = obj.precision_head(obj._decode_mask_token(out.tokens, out.grid)).view(2, 1, *out.grid)
            scale = [g // f for g, f in zip(grid, out.grid)]
            for dim, factor in zip((2, 3, 4), scale):
                s_final = s_final.repeat_interleave(factor, dim=dim)
            s = s_final.flatten(1)
    err2 = ((full - obj.targets(video)) ** 2).mean(-1)
    torch.testing.assert_close(loss, gaussian_nll(err2, s.clamp(-6, 6))[mask].mean(), rtol=1e-4, atol=1e-6)


def test_videomae_precision_is_high_where_hidden_content_is_predictable():
    """Left half of every frame: fresh noise (unpredictable); right half: still. The learned
    precision of hidden tokens ends far higher on the right."""
    torch.manual_seed(0)
    encoder = create_model("vit_tiny_joint", **TINY)
    obj = VideoMAE(encoder, ObjectiveConfig(**DEC, norm_pix_loss=False, precision_weighted=True))
    video = torch.zeros(2, 3, 8, 32, 32)
    video[..., :16] = torch.randn(2, 3, 8, 32, 16)
    mask = _mask(encoder, ratio=0.5)
    opt = torch.optim.AdamW(obj.parameters(), lr=3e-3)
    for _ in range(40):
        loss, _ = obj({"video": video, "mask": mask})
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        grid = encoder.token_grid(8, 32, 32)
        dec, ids = obj._decode_visible_only(encoder(video, mask).tokens, mask, grid)
        s = obj.precision_head(dec).squeeze(-1)
        left = (ids % grid[2]) < grid[2] // 2  # token column in the left half
    assert float(s[~left].mean()) > float(s[left].mean()) + 2.0  # precision ratio > e^2


def test_videomae_latent_target_refuses_a_coarser_final_grid():
    with pytest.raises(ValueError, match="objective.latent_target"):
        VideoMAE(create_model("mvit_tiny", num_frames=8, img_size=64), ObjectiveConfig(**DEC, latent_target=True))


def test_videomae_decoder_masking_is_refused_where_it_would_do_nothing():
    with pytest.raises(ValueError, match="objective.decoder_mask_ratio: decoder masking needs a visible-only"):
        VideoMAE(create_model("mvit_tiny", num_frames=8, img_size=64), ObjectiveConfig(**DEC, decoder_mask_ratio=0.5))


def test_causal_mask_and_no_peeking_at_the_future():
    allowed = causal_time_mask(torch.tensor([0, 0, 1, 2])) == 0
    assert allowed.tolist() == [[True, True, False, False], [True, True, False, False],
                                [True, True, True, False], [True, True, True, True]]
    torch.manual_seed(0)
    obj = NextFramePredictive(create_model("vit_tiny_joint", **TINY), ObjectiveConfig(**DEC, predict_steps=1)).eval()
    video = torch.randn(1, 3, 8, 32, 32)
    changed = video.clone()
    changed[:, :, -2:] = torch.randn_like(changed[:, :, -2:])  # only the predicted future differs
    a, b = obj.predict(video), obj.predict(changed)
    torch.testing.assert_close(a["pred"], b["pred"])
    assert not torch.allclose(a["err2"], b["err2"])


def test_precision_weighting_is_a_gaussian_nll():
    err2 = torch.tensor([0.25, 4.0])
    s = torch.linspace(-5, 5, 2001)[:, None]
    best = s[gaussian_nll(err2, s).argmin(0), 0]
    torch.testing.assert_close(best, -torch.log(err2), atol=0.01, rtol=0)  # optimum precision = 1/err^2


def test_predictive_learns_and_ema_target_follows():
    torch.manual_seed(0)
    obj = NextFramePredictive(create_model("vit_tiny_joint", **TINY),
                              ObjectiveConfig(**DEC, latent_target=True, ema_momentum=0.5))
    video = torch.randn(2, 3, 8, 32, 32)
    opt = torch.optim.AdamW([p for p in obj.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(25):
        loss, logs = obj({"video": video})
        opt.zero_grad()
        loss.backward()
        opt.step()
        obj.after_step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] and "latent_mse" in logs
    with torch.no_grad():
        gap = sum((t - s).abs().sum() for t, s in zip(obj.target_encoder.parameters(), obj.encoder.parameters()))
        assert 0 < float(gap) < sum(p.abs().sum() for p in obj.encoder.parameters())
    assert obj.visualize({"video": video}).ndim == 3


def test_predictive_frame_difference_target_is_the_change_to_come():
    torch.manual_seed(0)
    cfg = ObjectiveConfig(**DEC, target="frame_diff", norm_pix_loss=False)
    obj = NextFramePredictive(create_model("vit_tiny_joint", **TINY), cfg).eval()
    moving = torch.stack([torch.randn(1, 3, 32, 32).roll(2 * t, dims=-1) for t in range(8)], dim=2)
    torch.testing.assert_close(obj.future_target(moving), moving[:, :, -2:] - moving[:, :, -3:-1])
    still = torch.randn(1, 3, 1, 32, 32).expand(1, 3, 8, 32, 32).contiguous()
    assert obj.future_target(still).abs().max() == 0  # nothing moves: the target is all zeros
    r = obj.predict(still)
    torch.testing.assert_close(r["err2"], (r["pred"] ** 2).mean(-1))
    picture = obj.visualize({"video": still})  # rows: future differences, prediction, surprise
    assert (picture[:32, :32] == 128).all()  # mid-grey = no change


def test_motion_guided_mask_keeps_moving_tubes_visible():
    video = torch.zeros(64, 3, 8, 32, 32)
    video[:, :, 1::2, :16, :16] = 1.0  # only the top-left quadrant flickers
    mask = guided_tube_mask(video, (2, 8, 8), num_visible=4, strength=5.0)
    grid = (4, 4, 4)
    spatial = mask.view(64, 4, 16)
    assert (spatial == spatial[:, :1]).all()  # a tube mask
    assert ((~mask).view(64, *grid).sum((1, 2, 3)) == 4 * 4).all()  # visible count unchanged
    quadrant = (~spatial[:, 0]).view(64, 4, 4)[:, :2, :2].sum()
    assert quadrant / (64 * 4) > 0.8  # uniform would give 0.25
    uniform = guided_tube_mask(video, (2, 8, 8), num_visible=4, strength=0.0)
    assert (~uniform.view(64, 4, 16)[:, 0]).view(64, 4, 4)[:, :2, :2].sum() / (64 * 4) < 0.5
