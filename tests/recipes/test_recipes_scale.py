"""The recipes at scale (recipes/pretrain, recipes/finetune) on the CPU: every YAML under recipes/
loads and validates; each scale pretrain recipe trains 2 steps through `vssl pretrain` with size
overrides (tiny model, tiny synthetic shards) and the fine-tune / probe recipes that go with it
train 2 steps through `vssl finetune --init` from that run; the lr in each recipe follows the
scaling rule its header states; ViT-L has ViT-L's parameter count; benchmarks/memory.py's estimate
adds up."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.cli import main
from pipeline.config import FinetuneConfig, PretrainConfig, ProbeConfig, load_config
from pipeline.testing.shards import write_shards

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
CONFIGS = {"pretrain": PretrainConfig, "finetune": FinetuneConfig, "probe": ProbeConfig}
# pretrain recipe -> the fine-tune / probe recipes run from its encoder
PAIRS = {
    "predictive_vit_l_k400": ["classification_vit_l_k400", "attentive_probe_k400"],
    "videomae_vit_b_ssv2": ["classification_vit_b_ssv2"],
    "predictive_vit_b_ssv2": ["attentive_probe_ssv2"],
    "videomae_vit_b_mix": ["classification_vit_b_k400"],
}
SCALE = ["videomae_vit_b_k400", *PAIRS, *(f for tunes in PAIRS.values() for f in tunes)]
GPUS = 8  # the node every scale recipe is sized for
CLIP = ["data.num_frames=8", "data.crop_size=32", "data.batch_size=2", "data.num_workers=0",
        "data.decode_timeout_s=0"]
TRAIN = ["train.max_steps=2", "train.warmup_steps=1", "train.checkpoint_every=2", "train.log_every=1",
         "train.image_every=100", "train.mixed_precision=no", "train.device=cpu", "train.report_to=[]"]
TINY_MODEL = ["model.overrides.embed_dim=32", "model.overrides.depth=1", "model.overrides.num_heads=2",
              "model.overrides.patch_size=[2, 8, 8]", "objective.decoder_dim=32", "objective.decoder_depth=1",
              "objective.decoder_heads=2"]


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


@pytest.mark.parametrize("path", sorted(RECIPES.rglob("*.yaml")), ids=lambda p: str(p.relative_to(RECIPES)))
def test_every_recipe_yaml_loads_and_validates(path):
    folder = path.relative_to(RECIPES).parts[0]
    if folder == "accelerate":
        from accelerate.commands.config.config_args import load_config_from_file

        assert load_config_from_file(str(path)).num_processes >= 1
        return
    assert folder in CONFIGS, f"{path}: a recipe folder this test does not know"
    cfg = load_config(CONFIGS[folder], path)  # validates every section
    out = cfg.probe.output_dir if folder == "probe" else cfg.train.output_dir
    assert out.startswith("runs/"), f"{path}: writes outside runs/"


def recipe(name: str) -> Path:
    for folder in ("pretrain", "finetune"):
        if (RECIPES / folder / f"{name}.yaml").is_file():
            return RECIPES / folder / f"{name}.yaml"
    raise FileNotFoundError(name)


@pytest.mark.parametrize("name", SCALE)
def test_lr_follows_the_scaling_rule_in_the_header(name):
    """The header states `lr = BASE x global / 256`; the recipe's lr must be that for its global batch."""
    path = recipe(name)
    rule = re.search(r"lr = ([0-9.e-]+) x global / 256", path.read_text())
    assert rule, f"{path}: no lr scaling rule in the header"
    cfg = load_config(FinetuneConfig if "finetune" in path.parts else PretrainConfig, path)
    clips = GPUS * cfg.data.batch_size * cfg.data.repeated_samples * cfg.train.grad_accum
    assert cfg.train.lr == pytest.approx(float(rule.group(1)) * clips / 256)
    assert cfg.train.warmup_steps < cfg.train.max_steps and cfg.train.mixed_precision == "bf16"


def test_ssv2_and_mix_recipes_sample_as_documented():
    for name in ("videomae_vit_b_ssv2", "predictive_vit_b_ssv2"):
        data = load_config(PretrainConfig, recipe(name)).data
        assert (data.frame_stride, data.flip_prob, data.sampling) == (2, 0.0, "random")
    for name in ("classification_vit_b_ssv2", "attentive_probe_ssv2"):
        assert load_config(FinetuneConfig, recipe(name)).data.flip_prob == 0.0
    mix = load_config(PretrainConfig, recipe("videomae_vit_b_mix")).data
    assert len(mix.sources) >= 3 and mix.resampled and mix.flip_prob == 0.0
    assert all(s.frame_stride for s in mix.sources) and len({s.frame_stride for s in mix.sources}) > 1
    predictive = load_config(PretrainConfig, recipe("predictive_vit_l_k400"))
    assert predictive.model.name == "vit_large_joint" and predictive.objective.latent_target


def test_vit_l_has_vit_l_parameters():
    from pipeline.models import create_model

    with torch.device("meta"):
        encoder = create_model("vit_large_joint", num_frames=16, img_size=224)
    params = sum(p.numel() for p in encoder.parameters())
    assert 300e6 < params < 306e6, params  # ViT-L/16: ~303M (24 blocks of width 1024, tubelet 2x16x16)
    assert len(encoder.blocks) == 24 and encoder.num_features == 1024


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, Path]:
    """Three tiny sources of 4 videos (32 frames of 32 px, 5 classes): long enough for every recipe's
    frame step at 8 frames."""
    root = tmp_path_factory.mktemp("scale_shards")
    for name in ("k400", "ssv2", "third"):
        write_shards(root / name, [4], num_frames=32, size=32, key_prefix=f"{name}_")
    return {name: root / name for name in ("k400", "ssv2", "third")}


def _data_overrides(path: Path, shards: dict[str, Path]) -> list[str]:
    """data.shards (or data.sources with the recipe's weights and frame steps) on the tiny shards."""
    data = yaml.safe_load(path.read_text())["data"]
    if "sources" not in data:
        return [f"data.shards={shards['ssv2' if 'ssv2' in path.stem else 'k400']}"]
    tiny = [dict(src, shards=str(folder)) for src, folder in zip(data["sources"], shards.values())]
    return ["data.sources=" + yaml.safe_dump(tiny, default_flow_style=True).strip()]


@pytest.mark.parametrize("pretrain", list(PAIRS))
def test_recipe_trains_through_the_cli_and_its_finetunes_start_from_it(tmp_path, shards, one_thread, pretrain,
                                                                       capsys):
    path = recipe(pretrain)
    run = tmp_path / pretrain
    argv = ["pretrain", str(path), *_sets([*_data_overrides(path, shards), *CLIP, *TINY_MODEL, *TRAIN,
                                           f"train.output_dir={run}"])]
    assert main(argv) == 0, capsys.readouterr().err
    assert (run / "checkpoints" / "step-000002" / "metadata.json").is_file()
    for tune in PAIRS[pretrain]:
        path = recipe(tune)
        out = tmp_path / tune
        argv = ["finetune", str(path), "--init", str(run),
                *_sets([*_data_overrides(path, shards), *CLIP, *TRAIN, f"train.output_dir={out}"])]
        assert main(argv) == 0, capsys.readouterr().err
        assert (out / "checkpoints" / "step-000002" / "metadata.json").is_file()
        assert "(pretrain checkpoint, step 2)" in capsys.readouterr().out


def test_memory_estimate_adds_up_and_grows_with_depth(one_thread):
    from benchmarks import memory

    path = recipe("predictive_vit_b_ssv2")
    tiny = ["data.num_frames=8", "data.crop_size=32", "model.overrides.embed_dim=32", "model.overrides.num_heads=2",
            "model.overrides.patch_size=[2, 8, 8]", "objective.decoder_dim=32", "objective.decoder_depth=1",
            "objective.decoder_heads=2"]
    shallow = memory.estimate(str(path), [*tiny, "model.overrides.depth=2"])
    deep = memory.estimate(str(path), [*tiny, "model.overrides.depth=6"])
    trained, frozen, state = memory.state_bytes(str(path), [*tiny, "model.overrides.depth=6"])
    assert frozen > 0 and state == 20 * trained + 4 * frozen  # the EMA target encoder is frozen
    assert deep["depth"] == 6 and 0 < shallow["per_clip_gb"] < deep["per_clip_gb"]
    assert deep["per_gpu_gb"] == pytest.approx(deep["state_gb"] + deep["clips_per_gpu"] * deep["per_clip_gb"])
