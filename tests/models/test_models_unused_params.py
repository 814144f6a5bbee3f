"""Every trainable parameter gets a gradient in every training step, for every backbone family
under every objective and task head.

    python -m pytest -q tests/models/test_models_unused_params.py

DistributedDataParallel (without find_unused_parameters) refuses the step after one that left a
parameter with requires_grad=True out of the loss: "Expected to have finished reduction in the
prior iteration". A parameter a configuration never uses must not exist or must be frozen
(VideoBackbone.freeze_unused). Each case runs one training forward + backward on a tiny batch.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from pipeline.config import DataConfig, FinetuneConfig, ModelConfig, ObjectiveConfig, PretrainConfig, TaskConfig, to_dict
from pipeline.data.masking import tube_mask
from pipeline.models import create_model
from pipeline.models.build import load_encoder
from pipeline.objectives.predictive import NextFramePredictive
from pipeline.objectives.videomae import VideoMAE
from pipeline.tasks.finetune import build_task_model, make_task_loss
from pipeline.train import checkpoint as ck
from pipeline.train.build import build_objective

FRAMES = 8
VIT = dict(embed_dim=32, depth=1, num_heads=2, patch_size=(2, 8, 8), num_frames=FRAMES, img_size=32)
MULTISCALE = dict(num_frames=FRAMES, img_size=64)
BACKBONES = {  # case -> (registered name, overrides)
    "vit_joint": ("vit_tiny_joint", VIT),
    "vit_joint_cls": ("vit_tiny_joint", dict(VIT, cls_token=True)),
    "vit_divided_cls": ("vit_tiny_divided", dict(VIT, cls_token=True)),
    "vit_factorised": ("vit_tiny_factorised", VIT),
    "vit_axial": ("vit_tiny_axial", VIT),
    "vit_sparse": ("vit_tiny_sparse", dict(VIT, num_global_tokens=2)),
    "vit_mask_token": ("vit_tiny_joint", dict(VIT, mask_mode="mask_token")),
    "vit_conv_stem": ("vit_tiny_joint", dict(VIT, stem="conv", pos_embed="learned")),
    "vit_fc_norm": ("vit_tiny_joint", dict(VIT, final_norm="pooled")),  # a converted fine-tuned VideoMAE
    "mvit": ("mvit_tiny", MULTISCALE),
    "swin3d": ("swin3d_tiny", dict(MULTISCALE, depths=(2, 1, 1, 1), stem_dim=16, num_heads=(1, 1, 2, 2))),
}
MULTISCALE_CASES = ("mvit", "swin3d")
DEC = dict(decoder_dim=32, decoder_depth=1, decoder_heads=2)
OBJECTIVES = {  # case -> (objective class, config)
    "videomae": (VideoMAE, ObjectiveConfig(**DEC)),
    "videomae_precision": (VideoMAE, ObjectiveConfig(**DEC, precision_weighted=True)),
    "videomae_decoder_mask": (VideoMAE, ObjectiveConfig(**DEC, decoder_mask_ratio=0.5)),
    "videomae_latent": (VideoMAE, ObjectiveConfig(**DEC, latent_target=True, precision_weighted=True)),
    "predictive": (NextFramePredictive, ObjectiveConfig(**DEC, name="predictive")),
    "predictive_latent": (NextFramePredictive, ObjectiveConfig(**DEC, name="predictive", latent_target=True)),
}
HEADS = [("classification", "linear"), ("classification", "attentive"), ("segmentation", "linear"),
         ("segmentation", "decoder"), ("tracking", "correlation")]


def _encoder(case: str):
    torch.manual_seed(0)
    name, overrides = BACKBONES[case]
    return create_model(name, **overrides)


def _untrained(module: torch.nn.Module, loss: torch.Tensor) -> list[str]:
    loss.backward()
    return [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]


def _objective_cases():
    for backbone in BACKBONES:
        for objective in OBJECTIVES:
            if objective == "videomae_latent" and backbone in MULTISCALE_CASES:
                continue  # refused: a coarser final grid has no token per latent target
            if objective == "videomae_decoder_mask" and backbone in MULTISCALE_CASES + ("vit_mask_token",):
                continue  # refused: a mask-token encoder's decoder sees its whole final grid
            yield backbone, objective


@pytest.mark.parametrize("backbone,objective", list(_objective_cases()))
def test_pretraining_objectives_train_every_parameter(backbone, objective):
    encoder = _encoder(backbone)
    cls, cfg = OBJECTIVES[objective]
    model = cls(encoder, cfg).train()
    size = encoder.img_size
    grid = encoder.token_grid(FRAMES, size, size)
    batch = {"video": torch.randn(2, 3, FRAMES, size, size),
             "mask": tube_mask(2, grid, 0.75, torch.Generator().manual_seed(0))}
    loss, _ = model(batch)
    untrained = _untrained(model, loss)
    assert not untrained, f"{backbone} + {objective}: no gradient for {untrained}"


@pytest.mark.parametrize("freeze", [False, True], ids=["finetune", "probe"])
@pytest.mark.parametrize("kind,head", HEADS, ids=[f"{k}-{h}" for k, h in HEADS])
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_task_heads_train_every_parameter(backbone, kind, head, freeze):
    encoder = _encoder(backbone)
    size = encoder.img_size
    task = TaskConfig(kind=kind, head=head, freeze_encoder=freeze, num_classes=3,
                      template_size=encoder.output_stride[1])
    cfg = FinetuneConfig(data=DataConfig(num_frames=FRAMES, crop_size=size, mask_type="none"), task=task)
    model = make_task_loss(cfg, build_task_model(cfg, encoder)).train()
    video = torch.randn(2, 3, FRAMES, size, size)
    batch = {"video": video, "label": torch.tensor([0, 2]), "key": ["a", "b"],
             "masks": torch.randint(0, 3, (2, FRAMES, size, size)),
             "boxes": torch.tensor([4.0, 4.0, size / 2, size / 2]).expand(2, FRAMES, 4).clone()}
    loss, _ = model(batch)
    untrained = _untrained(model, loss)
    assert not untrained, f"{backbone} + {kind}/{head} (freeze_encoder={freeze}): no gradient for {untrained}"


def test_old_videomae_checkpoints_of_mask_token_backbones_still_initialise_a_finetune(tmp_path):
    """VideoMAE on a mask-token encoder has no decoder mask token any more; checkpoints made before
    hold one (`mask_token`): it is reported as unused and the encoder loads whole."""
    cfg = PretrainConfig(model=ModelConfig(name="mvit_tiny"), data=DataConfig(num_frames=FRAMES, crop_size=64),
                         objective=ObjectiveConfig(**DEC))
    objective = build_objective(cfg)
    assert objective.mask_token is None and objective.encoder.mask_token.requires_grad  # VideoMAE masks
    old = {**objective.state_dict(), "mask_token": torch.zeros(1, 1, DEC["decoder_dim"])}
    tmp = ck.begin_save(tmp_path / "checkpoints", 3)
    save_file(old, str(tmp / "model.safetensors"))
    ck.finish_save(tmp, 3, {"config": to_dict(cfg)}, keep_last=0)
    encoder, report = load_encoder(tmp_path)
    assert "mask_token" in report.unused
    assert all(torch.equal(v, old[f"encoder.{k}"]) for k, v in encoder.state_dict().items())
