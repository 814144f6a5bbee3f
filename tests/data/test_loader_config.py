"""DataConfig checks: every bad value is a one-line ConfigError naming its dotted key."""

import pytest

from pipeline.config import ConfigError, DataConfig, PretrainConfig, load_config


@pytest.mark.parametrize("override, needle", [
    (["data.sampling=dense"], "data.sampling: must be one of random, segment, fps"),
    (["data.sampling=fps"], "data.target_fps: sampling 'fps' needs target_fps > 0"),
    (["data.crop=zoom"], "data.crop: must be one of"),
    (["data.mask_type=blob"], "data.mask_type: must be one of"),
    (["data.mask_ratio=1.5"], "data.mask_ratio: must be in [0, 1)"),
    (["data.decoder_mask_type=running_cell"], "data.decoder_mask_type: removed; set objective.decoder_mask_ratio"),
    (["data.decoder_mask_ratio=0.5"], "data.decoder_mask_ratio: removed; set objective.decoder_mask_ratio"),
    (["data.flip_prob=2"], "data.flip_prob: must be in [0, 1]"),
    (["data.repeated_samples=0"], "data.repeated_samples: must be >= 1"),
    (["data.epoch_samples=-1"], "data.epoch_samples: must be >= 0"),
    (["data.decode_timeout_s=-1"], "data.decode_timeout_s: must be >= 0"),
    (["data.crop_scale=[0.9, 0.1]"], "data.crop_scale: need"),
    (["data.std=[0.2, 0, 0.2]"], "data.std: must be > 0"),
    (["data.num_workers=3", "data.streams_per_rank=8"], "data.num_workers: 3 must divide data.streams_per_rank 8"),
    (["data.shards=a.tar", "data.sources=[{shards: b.tar}]"], "data.sources: give either"),
    (["data.sources=[{shards: b.tar, weight: 0}]"], "data.sources[0].weight: must be > 0"),
    (["data.sources=[{weight: 2}]"], "data.sources[0].shards: must not be empty"),
    (["data.sources=[{shards: b.tar, wieght: 2}]"], "data.sources[0].wieght: unknown key"),
])
def test_bad_values_name_their_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(PretrainConfig, None, override)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_sources_and_the_single_shards_spec():
    cfg = load_config(PretrainConfig, None, ["data.sources=[{shards: a.tar, weight: 2}, {shards: b.tar}]"]).data
    assert [(s.shards, s.weight) for s in cfg.data_sources()] == [("a.tar", 2.0), ("b.tar", 1.0)]
    single = DataConfig(shards="x/manifest.json", manifest="m.json").data_sources()
    assert [(s.shards, s.weight, s.manifest) for s in single] == [("x/manifest.json", 1.0, "m.json")]
    with pytest.raises(ConfigError, match="data.shards: no shards given"):
        DataConfig().data_sources()
