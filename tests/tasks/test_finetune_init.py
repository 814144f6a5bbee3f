"""Where a fine-tune starts: every supported checkpoint kind, reports, and one-line errors.

    python -m pytest -q tests/tasks/test_finetune_init.py
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import VideoMAEConfig, VideoMAEForPreTraining

from pipeline.cli import main
from pipeline.config import PretrainConfig, load_config
from pipeline.models.build import load_encoder
from pipeline.models.checkpoint import CheckpointError, save_backbone
from pipeline.train import checkpoint as ck
from pipeline.train.build import build_objective, build_train_loader
from pipeline.train.trainer import train
from pipeline.testing import tiny_train
from tests.tasks.finetune_testlib import tiny_dataset, tiny_recipe, write_recipe

pytestmark = pytest.mark.usefixtures("one_thread")
TINY_HF = dict(image_size=32, num_frames=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64, patch_size=8, tubelet_size=2, decoder_hidden_size=16,
               decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=32)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory, shards):
    """A real `vssl pretrain` run (VideoMAE, 2 steps) whose checkpoint holds encoder + decoder."""
    folder = tmp_path_factory.mktemp("pretrain")
    recipe = tiny_train.tiny_recipe(folder / "r.yaml", shards.split("::")[0], folder / "run",
                                       max_steps=2, checkpoint_every=2)
    cfg = load_config(PretrainConfig, recipe, ["model.overrides.depth=2"])  # the fine-tune recipes' model
    train(cfg, build_objective, build_train_loader)
    return folder / "run"


def encoder_keys(state: dict, prefix: str = "encoder.") -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def assert_same_weights(model, expected: dict) -> None:
    own = model.state_dict()
    assert set(own) == set(expected)
    assert all(torch.equal(own[k], expected[k]) for k in own)


def test_pretrain_run_and_step_folders_give_the_encoder_and_report_the_rest(pretrain_run):
    step = ck.latest_checkpoint(pretrain_run / "checkpoints")
    saved = ck.load_model_state(step)
    for path in (pretrain_run, step):
        encoder, report = load_encoder(path)
        assert_same_weights(encoder, encoder_keys(saved))
        assert report.kind == "pretrain checkpoint, step 2"
        assert report.unused and all(not k.startswith("encoder.") for k in report.unused)
        assert any(k.startswith("decoder.") for k in report.unused)
    rebuilt, _ = load_encoder(step, {"drop_path_rate": 0.2})
    assert rebuilt.config["drop_path_rate"] == 0.2 and rebuilt.config["embed_dim"] == 32


def test_backbone_and_hf_videomae_folders(tmp_path, pretrain_run):
    encoder, _ = load_encoder(pretrain_run)
    save_backbone(encoder, tmp_path / "backbone")
    again, report = load_encoder(tmp_path / "backbone")
    assert report.kind == "vssl-backbone"
    assert_same_weights(again, encoder.state_dict())

    torch.manual_seed(0)
    VideoMAEForPreTraining(VideoMAEConfig(**TINY_HF)).save_pretrained(tmp_path / "hf")
    hf_encoder, report = load_encoder(tmp_path / "hf", {"drop_path_rate": 0.1})
    assert hf_encoder.config["num_frames"] == 8 and hf_encoder.config["drop_path_rate"] == 0.1
    assert any(k.startswith("decoder.") for k in report.unused)  # the pretraining decoder is not imported
    hf = load_file(tmp_path / "hf" / "model.safetensors")
    torch.testing.assert_close(hf_encoder.state_dict()["blocks.0.mlp.fc1.weight"],
                               hf["videomae.encoder.layer.0.intermediate.dense.weight"])
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "converted")]) == 0
    converted, _ = load_encoder(tmp_path / "converted")
    assert_same_weights(converted, load_encoder(tmp_path / "hf")[0].state_dict())


def test_shape_mismatch_missing_keys_and_incomplete_checkpoints_fail_loudly(tmp_path, pretrain_run):
    step = ck.latest_checkpoint(pretrain_run / "checkpoints")
    state = ck.load_model_state(step)
    broken = tmp_path / "step-000002"
    for edit, message in ((lambda s: s.update({"encoder.pos_embed": torch.zeros(1, 3, 5)}) if "encoder.pos_embed" in s
                           else s.update({"encoder.patch_embed.proj.weight": torch.zeros(4, 3, 2, 8, 8)}),
                           "shape mismatch for "),
                          (lambda s: s.pop("encoder.blocks.0.mlp.fc1.weight"), "missing from the checkpoint"),
                          (lambda s: [s.pop(k) for k in list(s) if k.startswith("encoder.")], "no key starts with")):
        edited = dict(state)
        edit(edited)
        tmp = ck.begin_save(tmp_path, 2)
        save_file(edited, str(tmp / "model.safetensors"))
        ck.finish_save(tmp, 2, {"config": ck.read_metadata(step)["config"]}, keep_last=0)
        with pytest.raises(CheckpointError, match=message):
            load_encoder(broken)
    (broken / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="incomplete checkpoint"):
        load_encoder(broken)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
        load_encoder(tmp_path / "empty")


def test_cli_finetune_from_a_pretrain_run_then_eval(tmp_path, shards, pretrain_run, capsys):
    recipe = write_recipe(tmp_path / "probe.yaml",
                          tiny_recipe(shards, tmp_path / "probe", task={"freeze_encoder": True}))
    assert main(["finetune", str(recipe), "--init", str(pretrain_run), "--eval"]) == 0
    printed = capsys.readouterr().out
    assert f"init: {ck.latest_checkpoint(pretrain_run / 'checkpoints')} (pretrain checkpoint, step 2)" in printed
    assert "unused:" in printed and "eval classification (fine-tuned model" in printed
    tuned = ck.load_model_state(ck.latest_checkpoint(tmp_path / "probe" / "checkpoints"))
    pretrained = ck.load_model_state(ck.latest_checkpoint(pretrain_run / "checkpoints"))
    assert encoder_keys(tuned, "model.encoder.").keys() == encoder_keys(pretrained).keys()
    assert all(torch.equal(v, pretrained["encoder." + k]) for k, v in encoder_keys(tuned, "model.encoder.").items())
    assert (tmp_path / "probe" / "eval.json").is_file()


@pytest.mark.parametrize("argv,needle", [
    (["finetune", "{recipe}", "--init", "{missing}"], "model.pretrained: no such file or folder"),
    (["finetune", "{recipe}", "--init", "{pretrain}", "--set", "model.overrides.depth=3"],
     "model key(s) missing from the checkpoint, e.g. ['blocks.2."),
    (["finetune", "{recipe}", "--set", "task.kind=propagation", "--set", "task.davis_root=x"],
     "propagation trains nothing"),
    (["finetune", "{recipe}", "--set", "task.head=decoder"], "task.head: must be one of linear, attentive"),
    (["eval", "{recipe}", "--checkpoint", "{pretrain}"], "a pretraining checkpoint; fine-tune it first"),
    (["eval", "{recipe}"], "--checkpoint: task.kind classification evaluates a `vssl finetune` checkpoint"),
])
def test_cli_errors_are_one_line(tmp_path, shards, pretrain_run, capsys, argv, needle):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(shards, tmp_path / "out"))
    argv = [a.format(recipe=recipe, missing=tmp_path / "nope", pretrain=pretrain_run) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("recipe", sorted((tiny_train.ROOT / "recipes" / "finetune").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_every_finetune_recipe_loads(recipe):
    from pipeline.config import FinetuneConfig

    cfg = load_config(FinetuneConfig, recipe)
    assert cfg.train.output_dir.startswith("runs/")
    assert cfg.task.kind == "propagation" or cfg.data.mask_type == "none"
