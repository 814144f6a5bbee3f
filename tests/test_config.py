import pytest

from pipeline.config import ConfigError, DataConfig, PretrainConfig, from_dict, load_config, to_dict, without_removed


def test_defaults_and_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  num_frames: 8\ntrain:\n  max_steps: 5\n")
    cfg = load_config(PretrainConfig, recipe, ["train.max_steps=7", "data.mask_ratio=0.75"])
    assert cfg.data.num_frames == 8
    assert cfg.train.max_steps == 7
    assert cfg.data.mask_ratio == 0.75
    assert cfg.data.crop_size == 224  # default kept
    assert load_config(PretrainConfig, None, ["train.lr=3e-3"]).train.lr == 0.003


@pytest.mark.parametrize("override, needle", [
    (["data.num_framez=3"], "data.num_framez: unknown key"),
    (["data.num_frames=abc"], "data.num_frames: expected an integer"),
    (["data.num_frames=1.5"], "data.num_frames: expected an integer"),
    (["train.max_steps"], "expected KEY=VALUE"),
    (["data.mask_ratio=1.0"], "data.mask_ratio"),
    (["data.decoder=ffmpeg"], "data.decoder"),
    (["bogus.x=1"], "bogus: unknown key"),
])
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(PretrainConfig, None, override)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_config(PretrainConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(PretrainConfig, bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(PretrainConfig, listy)


def test_mixed_precision_no_survives_yaml_reading_it_as_false():
    """YAML 1.1 reads a bare `no` (recipes, --set) as false; train.mixed_precision takes it as "no"."""
    assert load_config(PretrainConfig, None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    with pytest.raises(ConfigError, match="train.mixed_precision: must be one of auto, no, bf16, fp16, got True"):
        load_config(PretrainConfig, None, ["train.mixed_precision=true"])


def test_a_recorded_config_with_removed_keys_still_loads():
    saved = to_dict(PretrainConfig())
    saved["data"].update(decoder_mask_type="none", decoder_mask_ratio=0.5)  # as runs recorded them before
    with pytest.raises(ConfigError, match="data.decoder_mask_type: removed"):
        from_dict(PretrainConfig, saved)
    assert from_dict(PretrainConfig, without_removed(PretrainConfig, saved)) == PretrainConfig()


def test_default_normalisation_is_timms_imagenet_mean_and_std():
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    assert (DataConfig().mean, DataConfig().std) == (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
