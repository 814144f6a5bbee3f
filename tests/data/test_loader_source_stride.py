"""data.sources[i].frame_stride: each source of a mix samples its clips with its own frame step.

The videos show their frame number as their brightness (flat frames survive H.264 and resizing
within a grey level or two), so a clip's frame indices are read back from its pixels: a loader
that ignored a source's step would give both sources the same spacing."""

import numpy as np
import pytest

from data_prep.encode import encode_mp4
from pipeline.config import ConfigError, DataConfig, DataSource, PretrainConfig, load_config
from pipeline.data.loader import build_loader
from pipeline.testing.shards import sample_key, write_shards

PATCH = (2, 8, 8)
FRAMES, SIZE = 32, 32
BASE, STEP = 12, 7  # frame t is flat grey BASE + STEP * t (t < 32: at most 229)


def numbered_video() -> bytes:
    grey = (BASE + STEP * np.arange(FRAMES)).astype(np.uint8)
    return encode_mp4(np.broadcast_to(grey[:, None, None, None], (FRAMES, SIZE, SIZE, 3)).copy(), gop=4)


def numbered_shards(folder, prefix: str, count: int) -> None:
    """One shard of `count` frame-numbered videos whose keys start with `prefix`."""
    video = numbered_video()
    keys = [sample_key("train", 0, i, prefix) for i in range(count)]
    write_shards(folder, [count], num_frames=FRAMES, size=SIZE, key_prefix=prefix,
                 overrides={k: {"mp4": video} for k in keys})


def frame_numbers(clip) -> list[int]:
    """(C, T, H, W) uint8 -> the frame index each of its T frames shows."""
    means = clip.float().mean(dim=(0, 2, 3)).numpy()
    return np.rint((means - BASE) / STEP).astype(int).tolist()


@pytest.mark.parametrize("timeout_s", [0.0, 30.0], ids=["in_process", "helper_process"])
def test_each_source_uses_its_own_frame_step(tmp_path, timeout_s):
    numbered_shards(tmp_path / "a", "a_", 4)
    numbered_shards(tmp_path / "b", "b_", 4)
    cfg = DataConfig(sources=[DataSource(shards=str(tmp_path / "a"), frame_stride=1),
                              DataSource(shards=str(tmp_path / "b"), frame_stride=3),
                              ], frame_stride=2, num_frames=8, crop="center", crop_size=SIZE, batch_size=4,
                     repeated_samples=2, num_workers=0, decode_timeout_s=timeout_s, mask_type="none")
    steps = {"a": set(), "b": set()}
    for batch in build_loader(cfg, patch_size=PATCH, device=None):
        for key, clip in zip(batch["key"], batch["video"]):
            frames = frame_numbers(clip)
            assert 0 <= frames[0] and frames[-1] < FRAMES, frames
            steps[key[0]].update(np.diff(frames).tolist())
    assert steps == {"a": {1}, "b": {3}}


@pytest.mark.parametrize("resampled", [False, True], ids=["epochs", "resampled"])
def test_a_source_without_a_step_takes_data_frame_stride(tmp_path, resampled):
    """Also when shards are drawn with replacement (the mix recipe's data.resampled)."""
    numbered_shards(tmp_path / "a", "a_", 2)
    numbered_shards(tmp_path / "b", "b_", 2)
    cfg = DataConfig(sources=[DataSource(shards=str(tmp_path / "a")),
                              DataSource(shards=str(tmp_path / "b"), frame_stride=4)],
                     frame_stride=2, num_frames=4, crop="center", crop_size=SIZE, batch_size=2, num_workers=0,
                     decode_timeout_s=0.0, mask_type="none", resampled=resampled, epoch_samples=12 if resampled else 0)
    assert cfg.source_strides() == (2, 4)
    steps = {"a": set(), "b": set()}
    for batch in build_loader(cfg, patch_size=PATCH, device=None):
        for key, clip in zip(batch["key"], batch["video"]):
            steps[key[0]].update(np.diff(frame_numbers(clip)).tolist())
    assert steps == {"a": {2}, "b": {4}}


def test_a_source_step_too_long_for_its_videos_is_refused_by_its_key(tmp_path):
    numbered_shards(tmp_path / "a", "a_", 2)
    numbered_shards(tmp_path / "b", "b_", 2)
    cfg = DataConfig(sources=[DataSource(shards=str(tmp_path / "a")),
                              DataSource(shards=str(tmp_path / "b"), frame_stride=8)],
                     frame_stride=1, num_frames=8, crop_size=SIZE, batch_size=2, num_workers=0, mask_type="none")
    with pytest.raises(ConfigError) as e:
        build_loader(cfg, patch_size=PATCH)
    assert "lower data.num_frames or data.sources[1].frame_stride" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("override, needle", [
    (["data.sources=[{shards: a.tar, frame_stride: -1}]"], "data.sources[0].frame_stride: must be >= 1"),
    (["data.sampling=segment", "data.sources=[{shards: a.tar}, {shards: b.tar, frame_stride: 2}]"],
     "data.sources[1].frame_stride: only sampling 'random' steps by frames"),
])
def test_bad_source_steps_are_refused_in_one_line(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(PretrainConfig, None, override)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_flip_prob_zero_never_mirrors(tmp_path):
    """SSv2 recipes turn the flip off (data.flip_prob: 0): a left-right asymmetric clip stays as it was."""
    from pipeline.data.transforms import ClipTransform, TransformSpec
    import torch

    video = torch.zeros(4, 3, SIZE, SIZE, dtype=torch.uint8)
    video[..., : SIZE // 4] = 255  # bright left edge
    for flip_prob, sides in ((0.0, {"left"}), (0.5, {"left", "right"})):
        spec = TransformSpec(crop="center", crop_size=SIZE, flip_prob=flip_prob)
        seen = set()
        for seed in range(16):
            out = ClipTransform(spec)(video, seed=seed)[0][0]
            seen.add("left" if out[0, 0, 0, 0] > out[0, 0, 0, -1] else "right")
        assert seen == sides
