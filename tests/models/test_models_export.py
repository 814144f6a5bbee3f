"""vssl export: our encoders as transformers folders compute what ours compute (fp32, max abs error
< 1e-4), `vssl convert` brings back the same weights, and anything else is refused in one line.

    python -m pytest -q tests/models/test_models_export.py
"""

import json
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import (AutoConfig, AutoModel, AutoModelForVideoClassification, TimesformerConfig,
                          TimesformerModel, VideoMAEModel)
from transformers.models.videomae.modeling_videomae import get_sinusoid_encoding_table

from pipeline.cli import main
from pipeline.config import PretrainConfig, load_config
from pipeline.data.masking import tube_mask
from pipeline.models import create_model
from pipeline.models.build import load_encoder
from pipeline.models.checkpoint import load_backbone, save_backbone
from pipeline.models.convert import import_checkpoint
from pipeline.models.export_cli import export_hf
from pipeline.objectives.common import sincos_pos_embed
from pipeline.train.build import build_objective, build_train_loader
from pipeline.train.trainer import train
from pipeline.testing.tiny_train import ROOT, env, tiny_recipe, tiny_shards

ATOL = 1e-4
TINY = dict(embed_dim=32, depth=2, num_heads=2, num_frames=4, img_size=32, patch_size=(2, 8, 8))
HF_FILES = {"config.json", "model.safetensors", "README.md"}


def perturbed(model):
    """Random init with biases, norms and zero-initialised tables made non-trivial, in eval mode."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1 or not p.any():
                p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def backbone(tmp_path, name="vit_tiny_joint", **kw):
    folder = tmp_path / "backbone"
    save_backbone(perturbed(create_model(name, **{**TINY, **kw})), folder)
    return folder


def clip(frames=4, batch=2):
    return torch.randn(batch, 3, frames, 32, 32, generator=torch.Generator().manual_seed(5))


def max_error(got, expected):
    error = float((got - expected).abs().max())
    print(f"max abs error {error:.2e}")
    return error


def same_weights(a, b, *, key_bias_zeroed=False, close=()):
    """torch.equal per tensor; the key third of a qkv bias comes back zero from VideoMAE (it has none)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if key in close:
            torch.testing.assert_close(sb[key], sa[key], rtol=0, atol=1e-6, msg=key)
        elif key_bias_zeroed and key.endswith("qkv.bias"):
            q, k, v = sa[key].chunk(3)
            assert torch.equal(sb[key], torch.cat([q, torch.zeros_like(k), v])), key
        else:
            assert torch.equal(sa[key], sb[key]), key


def round_trip(folder, tmp_path):
    assert main(["convert", str(folder), str(tmp_path / "back")]) == 0
    return load_backbone(tmp_path / "back").eval()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real tiny `vssl pretrain` run (VideoMAE, joint ViT, 2 steps)."""
    tmp = tmp_path_factory.mktemp("run")
    recipe = tiny_recipe(tmp / "r.yaml", tiny_shards(tmp / "shards"), tmp / "out")
    cfg = load_config(PretrainConfig, recipe, ["train.max_steps=2", "train.checkpoint_every=2",
                                               "model.overrides.depth=2"])
    train(cfg, build_objective, build_train_loader)
    return tmp / "out"


def test_videomae_run_exports_encoder_and_matches(run_dir, tmp_path, capsys):
    out = tmp_path / "hf"
    assert main(["export", str(run_dir), str(out), "--format", "hf"]) == 0
    printed = capsys.readouterr().out
    assert "VideoMAEModel (transformers videomae)" in printed
    assert [line for line in printed.splitlines() if "encoder only" in line and "decoder" in line], printed
    assert {p.name for p in out.iterdir()} == HF_FILES
    assert AutoConfig.from_pretrained(out).model_type == "videomae"
    hf = AutoModel.from_pretrained(out).eval()
    assert isinstance(hf, VideoMAEModel) and hf.layernorm is not None  # final_norm tokens
    assert not [k for k in load_file(out / "model.safetensors") if "decoder" in k]
    ours = load_encoder(run_dir)[0].eval()
    video = clip(frames=8)
    mask = tube_mask(2, (4, 4, 4), 0.75, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for m in (None, mask):
            got = hf(pixel_values=video.transpose(1, 2), bool_masked_pos=m).last_hidden_state
            assert max_error(got, ours(video, mask=m).tokens) < ATOL
    # why the decoder stays behind: its positions are not transformers' VideoMAE decoder positions
    assert not torch.allclose(sincos_pos_embed((4, 4, 4), 32), get_sinusoid_encoding_table(64, 32), atol=1e-3)
    card = (out / "README.md").read_text()
    run_info = json.loads((run_dir / "run.json").read_text())
    assert run_info["manifest_sha256"] in card and "| steps | 2 |" in card
    assert "| objective | videomae (tube mask, ratio 0.75) |" in card
    assert f'AutoModel.from_pretrained("{out}")' in card and '"embed_dim": 32' in card


def test_videomae_round_trip_gives_the_same_weights_and_config(run_dir, tmp_path):
    ours = load_encoder(run_dir)[0].eval()
    export_hf(run_dir, tmp_path / "hf")
    back = round_trip(tmp_path / "hf", tmp_path)
    assert back.config == ours.config
    same_weights(ours, back, key_bias_zeroed=True)
    export_hf(tmp_path / "back", tmp_path / "hf2")  # the transformers side round-trips bit for bit
    first, second = load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "hf2" / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("final_norm, extra", [("none", dict(qkv_bias=False, act="gelu_tanh")),
                                               ("pooled", dict(norm_eps=1e-5))])
def test_videomae_final_norm_conventions(tmp_path, final_norm, extra):
    src = backbone(tmp_path, final_norm=final_norm, **extra)
    ours = load_backbone(src).eval()
    export_hf(src, tmp_path / "hf")
    video = clip()
    with torch.no_grad():
        out = ours(video)
        hf = AutoModel.from_pretrained(tmp_path / "hf").eval()
        assert max_error(hf(pixel_values=video.transpose(1, 2)).last_hidden_state, out.tokens) < ATOL
        if final_norm == "pooled":  # fc_norm lives in the classification model; num_labels 0: logits = pooled
            head = AutoModelForVideoClassification.from_pretrained(tmp_path / "hf").eval()
            assert max_error(head(pixel_values=video.transpose(1, 2)).logits, out.pooled) < ATOL
    back = round_trip(tmp_path / "hf", tmp_path)
    assert back.config == ours.config
    same_weights(ours, back, key_bias_zeroed=True)


def test_joint_vit_with_cls_token_exports_to_vivit(tmp_path):
    src = backbone(tmp_path, cls_token=True, pos_embed="learned", act="gelu_tanh")
    ours = load_backbone(src).eval()
    export_hf(src, tmp_path / "hf")
    assert AutoConfig.from_pretrained(tmp_path / "hf").model_type == "vivit"
    hf = AutoModel.from_pretrained(tmp_path / "hf").eval()
    video = clip()
    with torch.no_grad():
        got, out = hf(pixel_values=video.transpose(1, 2)).last_hidden_state, ours(video)
    assert max_error(got[:, 1:], out.tokens) < ATOL and max_error(got[:, 0], out.pooled) < ATOL
    back = round_trip(tmp_path / "hf", tmp_path)
    assert back.config == ours.config
    same_weights(ours, back)


def test_divided_vit_exports_to_timesformer(tmp_path):
    """A divided ViT whose positions are time + space (one imported from TimeSformer) goes back."""
    source = perturbed(TimesformerModel(TimesformerConfig(image_size=32, num_frames=4, hidden_size=32,
                                                          num_hidden_layers=2, num_attention_heads=2,
                                                          intermediate_size=64, patch_size=8)))
    source.save_pretrained(tmp_path / "src")
    save_backbone(import_checkpoint(tmp_path / "src")[0], tmp_path / "backbone")
    ours = load_backbone(tmp_path / "backbone").eval()
    export_hf(tmp_path / "backbone", tmp_path / "hf")
    hf = AutoModel.from_pretrained(tmp_path / "hf").eval()
    assert isinstance(hf, TimesformerModel)
    video = clip()
    with torch.no_grad():
        got, out = hf(pixel_values=video.transpose(1, 2)).last_hidden_state, ours(video)
        reference = source(pixel_values=video.transpose(1, 2)).last_hidden_state
    t, (b, n, d) = 4, out.tokens.shape
    tokens = got[:, 1:].reshape(b, n // t, t, d).transpose(1, 2).reshape(b, n, d)  # (h*w, t) -> (t, h, w)
    assert max_error(tokens, out.tokens) < ATOL and max_error(got[:, 0], out.pooled) < ATOL
    assert max_error(got, reference) < ATOL
    back = round_trip(tmp_path / "hf", tmp_path)
    assert back.config == ours.config
    same_weights(ours, back, close=("pos_embed",))  # re-summed from the split time and space tables


REFUSALS = [
    ("vit_tiny_divided", {}, "no cls token"),
    ("vit_tiny_divided", dict(cls_token=True, pos_embed="learned"), "TimeSformer embeds single frames"),
    ("vit_tiny_divided", dict(cls_token=True, pos_embed="learned", patch_size=(1, 8, 8)),
     "not a time table plus a space table"),
    ("vit_tiny_factorised", {}, "ViViT model 2"),
    ("vit_tiny_axial", {}, "axial attention"),
    ("vit_tiny_sparse", dict(window=(2, 2, 2), num_global_tokens=1), "sparse attention"),
    ("vit_tiny_joint", dict(stem="conv"), "conv stem"),
    ("vit_tiny_joint", dict(input_transform="frame_diff"), "input_transform frame_diff"),
    ("vit_tiny_joint", dict(mask_mode="mask_token"), "mask_mode mask_token"),
    ("vit_tiny_joint", dict(pos_embed="learned"), "learned positions without a cls token"),
    ("vit_tiny_joint", dict(cls_token=True, final_norm="none"), "always ends with a LayerNorm"),
    ("vit_tiny_joint", dict(final_norm="pooled"), "fc_norm has eps 1e-05"),
    ("mvit_tiny", dict(num_frames=4, img_size=32), "transformers has no video MViT"),
    ("swin3d_tiny", dict(num_frames=4, img_size=32, depths=(1, 1), num_heads=(1, 2), stem_dim=16,
                         window_size=(2, 4, 4)), "transformers has no Video Swin"),
]


@pytest.mark.parametrize("name, kw, needle", REFUSALS, ids=[f"{n}-{r[:20]}" for n, _, r in REFUSALS])
def test_refusals_are_one_line_naming_model_and_reason(tmp_path, capsys, name, kw, needle):
    folder = tmp_path / "backbone"
    vit = name.startswith("vit_")
    save_backbone(create_model(name, **({**TINY, **kw} if vit else kw)), folder)
    assert main(["export", str(folder), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vssl export: error: {name}: ") and needle in err and "\n" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backbone"]  # no OUT, no partial folder


def test_out_is_replaced_only_with_overwrite_and_whole(tmp_path, capsys):
    joint = backbone(tmp_path / "a")
    with_cls = backbone(tmp_path / "b", cls_token=True, pos_embed="learned")
    out = tmp_path / "hf"
    assert main(["export", str(joint), str(out)]) == 0
    before = (out / "config.json").read_text()
    assert main(["export", str(with_cls), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "already exists (pass --overwrite to replace it)" in err and "\n" not in err
    assert (out / "config.json").read_text() == before
    assert main(["export", str(with_cls), str(out), "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "vivit"
    assert {p.name for p in out.iterdir()} == HF_FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "hf"]
    assert main(["export", str(joint), str(joint.parent), "--overwrite"]) == 2  # never over its own source
    assert "must not be SRC or hold it" in capsys.readouterr().err and joint.is_dir()


KILLED_MID_WRITE = """
import os, signal, sys
import safetensors.torch
from pipeline.models import export_cli as export

def save_then_die(state, path, metadata=None):
    safetensors.torch.save_file(state, path, metadata=metadata)  # the weights are on disk,
    os.kill(os.getpid(), signal.SIGKILL)                          # the rename never happens

export.save_file = save_then_die
export.export_hf(sys.argv[1], sys.argv[2])
"""


def test_a_killed_export_leaves_no_half_folder(tmp_path):
    src, out = backbone(tmp_path / "a"), tmp_path / "hf"
    proc = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(src), str(out)], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not out.exists()
    partials = list(tmp_path.glob(".hf.partial-*"))
    assert len(partials) == 1 and (partials[0] / "model.safetensors").is_file()
    assert main(["export", str(src), str(out)]) == 0  # the next export clears the dead one's partial
    assert not list(tmp_path.glob(".hf.*")) and {p.name for p in out.iterdir()} == HF_FILES
