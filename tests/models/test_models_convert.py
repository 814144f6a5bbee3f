"""Checkpoint folders and import errors: every bad input is a one-line error naming file and key.

    python -m pytest -q tests/models/test_models_convert.py
"""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import VideoMAEConfig, VideoMAEModel

from pipeline.cli import main
from pipeline.models import create_model
from pipeline.models.checkpoint import CheckpointError, load_backbone, save_backbone
from pipeline.models.convert import import_checkpoint

TINY_HF = dict(image_size=32, num_frames=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64, patch_size=16, tubelet_size=2)


@pytest.fixture()
def hf_folder(tmp_path):
    torch.manual_seed(0)
    VideoMAEModel(VideoMAEConfig(**TINY_HF)).save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def edit_weights(folder, edit):
    state = load_file(folder / "model.safetensors")
    edit(state)
    save_file(state, folder / "model.safetensors")


def one_line_error(path, needle, **kw):
    with pytest.raises(CheckpointError) as e:
        import_checkpoint(path, **kw)
    assert needle in str(e.value), str(e.value)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_shape_mismatch_names_our_key_and_the_source_key(hf_folder):
    config = json.loads((hf_folder / "config.json").read_text())
    config["intermediate_size"] = 48
    (hf_folder / "config.json").write_text(json.dumps(config))
    message = one_line_error(hf_folder, "shape mismatch for blocks.0.mlp.fc1.weight")
    assert "encoder.layer.0.intermediate.dense.weight" in message and "(64, 32) vs model (48, 32)" in message


def test_missing_source_key_is_named(hf_folder):
    edit_weights(hf_folder, lambda s: s.pop("encoder.layer.1.layernorm_after.weight"))
    one_line_error(hf_folder, "missing key encoder.layer.1.layernorm_after.weight")


def test_unknown_encoder_key_refuses_a_partial_import(hf_folder):
    edit_weights(hf_folder, lambda s: s.update({"encoder.layer.0.attention.attention.gamma": torch.ones(32)}))
    one_line_error(hf_folder, "no place in the model (refusing a partial import)")


def test_head_keys_are_reported_unused_not_errors(hf_folder):
    edit_weights(hf_folder, lambda s: s.update({"classifier.weight": torch.ones(5, 32), "classifier.bias": torch.ones(5)}))
    _, report = import_checkpoint(hf_folder)
    assert report.unused == ["classifier.bias", "classifier.weight"]
    assert "unused: 2 key(s): classifier.bias, classifier.weight" in "\n".join(report.lines())


def test_half_of_a_qkv_bias_pair_is_an_error(hf_folder):
    edit_weights(hf_folder, lambda s: s.pop("encoder.layer.0.attention.attention.v_bias"))
    one_line_error(hf_folder, "attention.v_bias missing while its query bias is present")


@pytest.mark.parametrize("field, value, needle", [
    ("model_type", "bert", "model_type: expected one of"),
    ("hidden_act", "relu", "hidden_act: expected one of"),
    ("image_size", [32, 48], "image_size: expected one size"),
    ("num_hidden_layers", "2", "num_hidden_layers: expected a positive integer"),
])
def test_bad_config_json_fields_are_named(hf_folder, field, value, needle):
    config = json.loads((hf_folder / "config.json").read_text())
    config[field] = value
    (hf_folder / "config.json").write_text(json.dumps(config))
    one_line_error(hf_folder, needle)


def test_unreadable_sources(tmp_path, hf_folder):
    one_line_error(tmp_path / "nope", "no such file or folder")
    (tmp_path / "empty").mkdir()
    one_line_error(tmp_path / "empty", "neither a vssl backbone folder")
    (hf_folder / "config.json").write_text("{not json")
    one_line_error(hf_folder, "config.json: unreadable JSON")
    (tmp_path / "w.safetensors").write_bytes(b"garbage")
    one_line_error(tmp_path / "w.safetensors", "unreadable safetensors file")
    torch.save({"model": {"x": torch.ones(2)}}, tmp_path / "odd.pth")
    one_line_error(tmp_path / "odd.pth", "unrecognised layout")


class NotWeights:
    pass


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"model": {"patch_embed.proj.weight": torch.ones(2)}, "args": NotWeights()}, tmp_path / "p.pth")
    one_line_error(tmp_path / "p.pth", "cannot be read with torch.load(weights_only=True)")
    torch.save({"patch_embed.proj.weight": torch.ones(2), "epoch": 3}, tmp_path / "mixed.pth")
    one_line_error(tmp_path / "mixed.pth", "epoch: expected a tensor, got int")


def test_backbone_folder_roundtrip_and_completeness(tmp_path):
    model = create_model("vit_tiny_divided", depth=2, embed_dim=32, num_heads=2, num_frames=4, img_size=32,
                         cls_token=True, pos_embed="learned").eval()
    folder = save_backbone(model, tmp_path / "b")
    meta = json.loads((folder / "backbone.json").read_text())
    assert meta["format"] == "vssl-backbone" and meta["config"]["attention"] == "divided"
    loaded, report = import_checkpoint(folder)
    assert report.format == "vssl-backbone"
    video = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(video).pooled, model(video).pooled)
    weights = folder / "backbone.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="incomplete weights"):
        load_backbone(folder)
    (folder / "backbone.json").write_text(json.dumps({**meta, "version": 9}))
    with pytest.raises(CheckpointError, match="not a vssl-backbone v1 file"):
        load_backbone(folder)


def test_saving_over_a_folder_removes_the_old_metadata_first(tmp_path, monkeypatch):
    model = create_model("vit_tiny_joint", depth=1, embed_dim=32, num_heads=2)
    save_backbone(model, tmp_path / "b")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("pipeline.models.checkpoint.save_file", crash)
    with pytest.raises(OSError):
        save_backbone(model, tmp_path / "b")
    assert not (tmp_path / "b" / "backbone.json").exists()  # the half-written folder is not complete


def test_convert_cli_writes_a_loadable_folder(tmp_path, hf_folder, capsys):
    assert main(["convert", str(hf_folder), str(tmp_path / "out"), "--num-frames", "8"]) == 0
    printed = capsys.readouterr().out
    assert "hf-videomae" in printed and "key bias" in printed and "wrote" in printed
    model = load_backbone(tmp_path / "out")
    assert model.num_frames == 8 and model.config["embed_dim"] == 32
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vssl convert: error:") and "no such file or folder" in err and "\n" not in err
