"""Hand-over of uint8 clips: normalisation on the CPU (numpy) and by torch on a device, batches
moved, and the loader's three hand-over modes giving the same pixels."""

import pytest
import torch

from pipeline.config import DataConfig
from pipeline.data.loader import build_loader
from pipeline.data.normalize import batch_to_device, normalize_tensor, normalize_video, to_normalized_float
from pipeline.testing.shards import write_shards

MEAN, STD = (0.5, 0.5, 0.25), (0.25, 0.5, 0.125)


@pytest.mark.parametrize("frames", [2, 700])  # 700 frames: a buffer large enough for huge pages
def test_to_normalized_float(frames):
    video = torch.full((1, 3, frames, 64, 64), 255, dtype=torch.uint8)
    video[:, 1] = 0
    out = to_normalized_float(video, (0.5, 0.5, 0.5), (0.25, 0.5, 0.5))
    assert out.dtype == torch.float32 and out.shape == video.shape
    assert torch.allclose(out[0, 0], torch.full((frames, 64, 64), 2.0))
    assert torch.allclose(out[0, 1], torch.full((frames, 64, 64), -1.0))


def test_torch_and_numpy_normalisation_agree_on_any_memory_layout():
    base = torch.randint(0, 256, (2, 4, 8, 8, 3), dtype=torch.uint8)
    channels_last = base.permute(0, 4, 1, 2, 3)  # (B, C, T, H, W) view of (B, T, H, W, C) memory
    expected = (channels_last.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1, 1)
    for out in (to_normalized_float(channels_last, MEAN, STD), normalize_tensor(channels_last, MEAN, STD),
                normalize_video(channels_last, "cpu", MEAN, STD)):
        assert out.is_contiguous() and out.dtype == torch.float32
        assert torch.allclose(out, expected, atol=1e-5)


def test_batch_to_device_moves_tensors_and_keeps_the_rest():
    batch = {"video": torch.zeros(1, 3, 2, 4, 4, dtype=torch.uint8), "label": torch.tensor([3]), "key": ["a"],
             "clips_per_sample": 1}
    out = batch_to_device(batch, "cpu", MEAN, STD)
    assert list(out) == list(batch) and out["key"] == ["a"] and out["clips_per_sample"] == 1
    assert out["video"][0, :, 0, 0, 0].tolist() == [-2.0, -1.0, -2.0]  # -mean / std per channel
    assert batch["video"].dtype == torch.uint8  # the input batch is left as it was
    float_video = {"video": out["video"]}
    assert batch_to_device(float_video, "cpu", MEAN, STD)["video"] is out["video"]  # already normalised


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_hand_over_modes_give_the_same_pixels(tmp_path, workers):
    write_shards(tmp_path, [4, 4], num_frames=16)
    cfg = DataConfig(shards=str(tmp_path), num_frames=8, frame_stride=1, crop_size=32, batch_size=2,
                     num_workers=workers, decode_timeout_s=0.0, mask_ratio=0.5, mean=MEAN, std=STD)
    raw = [dict(b, video=b["video"].clone()) for b in build_loader(cfg, patch_size=(2, 16, 16), device=None)]
    normalised = list(build_loader(cfg, patch_size=(2, 16, 16)))
    assert len(raw) == len(normalised) == 4
    for r, n in zip(raw, normalised):
        assert r["video"].dtype == torch.uint8 and n["video"].dtype == torch.float32
        assert r["key"] == n["key"] and torch.equal(r["mask"], n["mask"])
        assert torch.allclose(normalize_tensor(r["video"], MEAN, STD), n["video"], atol=1e-5)
    assert len({bytes(r["video"].flatten()[:4096].numpy()) for r in raw}) == 4


def test_a_raw_batch_is_intact_until_the_next_one_is_asked_for(tmp_path):
    """device=None hands over the workers' ring buffers without a copy; a slow consumer still
    reads whole batches, however far ahead the workers run."""
    import time

    write_shards(tmp_path, [6, 6], num_frames=16)
    cfg = DataConfig(shards=str(tmp_path), num_frames=8, frame_stride=1, crop_size=32, batch_size=1,
                     num_workers=2, prefetch_factor=1, decode_timeout_s=0.0, mask_ratio=0.5)
    expected = [b["video"].clone() for b in build_loader(cfg, patch_size=(2, 16, 16), device=None)]
    loader = build_loader(cfg, patch_size=(2, 16, 16), device=None)
    loader.dataset.ring_slots = 1  # one buffer per worker: any early reuse would show
    for i, batch in enumerate(loader):
        time.sleep(0.05)  # the other worker's next batch is due meanwhile
        assert torch.equal(batch["video"], expected[i]), f"batch {i} overwritten while in use"
