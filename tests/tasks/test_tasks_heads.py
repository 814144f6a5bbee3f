"""Task heads, TaskModel and the tracking head (pipeline/tasks/heads.py, tracking.py).

    python -m pytest -q tests/tasks/test_tasks_heads.py
"""

from typing import get_args

import pytest
import torch
from torch import nn

from pipeline.config import ConfigError, FinetuneConfig, HeadNorm, TaskConfig, from_dict
from pipeline.models import create_model
from pipeline.tasks.features import frame_features
from pipeline.tasks.heads import AttentiveProbe, LinearHead, LinearSegHead, SegDecoder, TaskModel
from pipeline.tasks.metrics import paired_box_iou
from pipeline.tasks.tracking import (TrackingHead, TrackingOutput, centre_cells, centre_heatmap,
                                     decode_boxes, depthwise_xcorr, tracking_loss)

TINY = {
    "mvit_tiny": dict(stem_dim=16, drop_path_rate=0.0),
    "swin3d_tiny": dict(stem_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), drop_path_rate=0.0),
}


def encoder(name="mvit_tiny"):
    torch.manual_seed(0)
    return create_model(name, num_frames=8, img_size=64, **TINY[name])


def clip(batch=2, frames=8, size=64, seed=1):
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


def test_linear_head_shapes_norm_option_and_gradients():
    pooled = torch.randn(4, 32, requires_grad=True)
    for norm in get_args(HeadNorm):
        head = LinearHead(32, 5, norm=norm, dropout=0.1)
        logits = head(pooled)
        assert logits.shape == (4, 5)
        logits.square().sum().backward()
        assert head.fc.weight.grad.abs().sum() > 0
    assert isinstance(LinearHead(32, 5).norm, nn.LayerNorm) and isinstance(LinearHead(32, 5, norm="none").norm, nn.Identity)
    with pytest.raises(ValueError, match="norm"):
        LinearHead(32, 5, norm="group")
    with pytest.raises(ConfigError, match="task.head_norm"):
        TaskConfig(head_norm="group").validate()
    with pytest.raises(ConfigError, match="task.head_norm: batch needs data.batch_size >= 2"):
        from_dict(FinetuneConfig, {"data": {"batch_size": 1}, "task": {"head_norm": "batch"}})


def test_batch_norm_head_standardises_channels_the_layer_norm_head_does_not():
    """Pooled features that share one large vector and differ by a small class signal: the batch
    norm feeds the classifier unit-variance channels, the layer norm leaves the signal small, and
    in 30 steps only the former's head fits the classes; in eval the batch norm uses its running
    statistics."""
    torch.manual_seed(0)
    labels = torch.arange(64) % 2
    pooled = 5 * torch.randn(32) + 0.05 * torch.randn(64, 32) + 0.05 * (2 * labels[:, None] - 1) * torch.randn(32).sign()
    losses, inputs = {}, {}
    for norm in ("layer", "batch"):
        head = LinearHead(32, 2, norm=norm)
        inputs[norm] = head.norm(pooled)
        opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
        for _ in range(30):
            loss = torch.nn.functional.cross_entropy(head(pooled), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses[norm] = float(loss.detach())
        if norm == "batch":
            stats = head.norm
            head.eval()
            wanted = head.fc((pooled - stats.running_mean) / (stats.running_var + stats.eps).sqrt())
            torch.testing.assert_close(head(pooled), wanted)
    torch.testing.assert_close(inputs["batch"].std(0, unbiased=False), torch.ones(32), atol=0.01, rtol=0)
    assert float(inputs["layer"].std(0).mean()) < 0.1
    assert losses["batch"] < 0.5 * losses["layer"] and losses["layer"] > 0.6  # ln 2 = 0.69: the layer head barely moved


def test_attentive_probe_ignores_token_order_and_trains():
    torch.manual_seed(0)
    probe = AttentiveProbe(32, 7, num_heads=4, num_queries=2)
    tokens = torch.randn(3, 10, 32)
    logits = probe(tokens)
    assert logits.shape == (3, 7)
    torch.testing.assert_close(probe(tokens[:, torch.randperm(10)]), logits, atol=1e-5, rtol=1e-5)
    logits.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in probe.parameters())
    with pytest.raises(ValueError, match="dim 30 is not divisible by num_heads 4"):
        AttentiveProbe(30, 2, num_heads=4)


@pytest.mark.parametrize("head_type", [LinearSegHead, SegDecoder])
def test_segmentation_heads_give_per_pixel_logits_and_train_the_encoder(head_type):
    enc = encoder()
    model = TaskModel(enc, head_type(enc.num_features, 3), freeze_encoder=False)
    logits = model(clip(batch=1, frames=4))
    assert logits.shape == (1, 3, 4, 64, 64)
    nn.functional.cross_entropy(logits, torch.randint(0, 3, (1, 4, 64, 64))).backward()
    assert enc.patch_embed.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.head.parameters())


@pytest.mark.parametrize("name,head_type", [("swin3d_tiny", LinearHead), ("mvit_tiny", AttentiveProbe)])
def test_frozen_encoder_gets_no_gradient_and_stays_in_eval(name, head_type):
    enc = encoder(name)
    model = TaskModel(enc, head_type(enc.num_features, 4), freeze_encoder=True).train()
    assert not enc.training and model.head.training
    logits = model(clip())
    assert logits.shape == (2, 4)
    logits.sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in enc.parameters())
    assert all(p.grad is not None for p in model.head.parameters())


def test_task_model_checks_head_and_inputs():
    enc = encoder()
    with pytest.raises(ValueError, match="must say what it consumes"):
        TaskModel(enc, nn.Linear(4, 4), freeze_encoder=True)
    with pytest.raises(ValueError, match="'frame_pair' head takes \\(template, search\\) frames"):
        TaskModel(enc, TrackingHead(enc.num_features), freeze_encoder=True)(torch.zeros(1, 3, 64, 64))


def test_depthwise_xcorr_same_padding_matches_explicit_sums():
    search = torch.randn(2, 3, 5, 6)
    template = torch.randn(2, 3, 2, 3)
    out = depthwise_xcorr(search, template)
    assert out.shape == search.shape
    padded = nn.functional.pad(search, (1, 1, 0, 1))  # (kw-1)//2, kw//2, (kh-1)//2, kh//2
    b, c, i, j = 1, 2, 3, 4
    expected = (padded[b, c, i:i + 2, j:j + 3] * template[b, c]).sum()
    torch.testing.assert_close(out[b, c, i, j], expected)


def test_decode_box_geometry_and_heatmap_target():
    score = torch.full((1, 4, 4), -5.0)
    score[0, 2, 1] = 5.0
    box = torch.zeros(1, 4, 4, 4)  # sigmoid(0) = 0.5: centre of the cell, size half the frame
    boxes = decode_boxes(TrackingOutput(score, box), (128, 128))
    torch.testing.assert_close(boxes, torch.tensor([[16.0, 48.0, 80.0, 112.0]]))  # centre (48, 80)
    rows, cols = centre_cells(boxes, (4, 4), (128, 128))
    assert (rows.item(), cols.item()) == (2, 1)
    heat = centre_heatmap(rows, cols, (4, 4), sigma=1.0)
    assert heat[0, 2, 1] == 1.0 and heat[0].argmax() == 2 * 4 + 1
    assert heat[0, 2, 2].item() == pytest.approx(torch.exp(torch.tensor(-0.5)).item())


def test_tracking_head_overfits_one_template_search_pair():
    enc = encoder().eval()
    model = TaskModel(enc, TrackingHead(enc.num_features, width=32), freeze_encoder=True)
    g = torch.Generator().manual_seed(0)
    template, search = torch.randn(1, 3, 64, 64, generator=g), torch.randn(1, 3, 128, 128, generator=g)
    truth = torch.tensor([[40.0, 70.0, 88.0, 110.0]])
    out = model(template, search)
    assert out.score.shape == (1, 4, 4) and out.box.shape == (1, 4, 4, 4)
    with torch.no_grad():  # the encoder is frozen: encode once, train the head on its features
        template_map, search_map = frame_features(enc, template), frame_features(enc, search)
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, logs = tracking_loss(model.head(template_map, search_map), truth, (128, 128))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert set(logs) == {"heatmap", "l1", "giou"} and losses[-1] < losses[0] / 4
    with torch.no_grad():
        predicted = decode_boxes(model(template, search), (128, 128))
    assert paired_box_iou(predicted, truth).item() > 0.8


def test_tracking_head_refuses_a_motion_input_encoder():
    enc = create_model("vit_tiny_joint", num_frames=4, img_size=32, patch_size=(2, 8, 8), depth=1,
                       input_transform="frame_diff")
    with pytest.raises(ValueError, match="compares single frames, which a motion-input encoder"):
        TaskModel(enc, TrackingHead(enc.num_features, width=32), freeze_encoder=True)


def test_task_model_freezes_the_pretraining_mask_token():
    enc = create_model("vit_tiny_joint", num_frames=4, img_size=32, patch_size=(2, 8, 8), depth=1,
                       mask_mode="mask_token")
    model = TaskModel(enc, LinearHead(enc.num_features, 3), freeze_encoder=False)
    model(torch.randn(2, 3, 4, 32, 32)).sum().backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == [] and not enc.mask_token.requires_grad
