"""recipes/accelerate and recipes/deepspeed as the installed accelerate and DeepSpeed read them:
every launch config loads, each ZeRO config validates, and none turns on DeepSpeed's own
bf16/fp16 (vssl autocasts over fp32 weights; the engine refuses a config that enables either)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = sorted((ROOT / "recipes" / "accelerate").glob("*.yaml"))
ZERO = sorted((ROOT / "recipes" / "deepspeed").glob("zero*.json"))


@pytest.mark.parametrize("path", LAUNCH, ids=lambda p: p.name)
def test_launch_config_loads(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    if path.name.startswith("deepspeed_"):
        stage = int(re.search(r"zero(\d)", path.name).group(1))
        assert config.distributed_type == "DEEPSPEED"
        ds_file = ROOT / config.deepspeed_config["deepspeed_config_file"]
        assert ds_file.name == f"zero{stage}.json" and ds_file.is_file()
        # accelerate refuses mixed_precision beside a deepspeed_config_file; the recipe decides it
        assert config.mixed_precision is None or config.mixed_precision == "no"
        if stage == 3:  # our models are built whole; zero.Init would need transformers models
            assert config.deepspeed_config.get("zero3_init_flag") is False


def test_every_zero_stage_has_a_launch_config():
    assert {p.stem for p in ZERO} == {"zero1", "zero2", "zero3"}
    assert {p.name for p in LAUNCH} >= {"deepspeed_zero1.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml"}


@pytest.mark.parametrize("path", ZERO, ids=lambda p: p.name)
def test_zero_config_validates_with_deepspeed_precision_off(path):
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.config import DeepSpeedConfig

    raw = json.loads(path.read_text())
    assert raw["bf16"] == {"enabled": False} and raw["fp16"] == {"enabled": False}
    # what accelerate and the engine fill in for the "auto" entries
    filled = {**raw, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "train_batch_size": 4,
              "gradient_clipping": 1.0}
    config = DeepSpeedConfig(filled)
    assert config.zero_optimization_stage == int(path.stem[-1])
    assert not config.bfloat16_config.enabled and not config.float16_config.enabled
    if config.zero_optimization_stage == 3:  # accelerate's get_state_dict gathers the weights with it
        assert config.zero_config.gather_16bit_weights_on_model_save
