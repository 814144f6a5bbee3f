"""What a batch holds: repeated sampling, multi-view evaluation, annotations, mixes, pipe: shards."""

from collections import Counter

import pytest
import torch

import pipeline.data.decode_process as decode_process
from pipeline.config import ConfigError, DataConfig, DataSource
from pipeline.data.loader import build_loader
from pipeline.testing.shards import sample_key, write_shards

PATCH = (2, 16, 16)


def config(**kw) -> DataConfig:
    base = dict(num_frames=8, frame_stride=1, crop_size=32, batch_size=2, num_workers=0,
                decode_timeout_s=0.0, mask_ratio=0.5)
    return DataConfig(**{**base, **kw})


def test_repeated_sampling_gives_k_clips_from_one_decode(tmp_path, monkeypatch):
    write_shards(tmp_path, [4], num_frames=16)
    decodes = []
    real = decode_process.decode_clips
    monkeypatch.setattr(decode_process, "decode_clips", lambda *a, **k: decodes.append(1) or real(*a, **k))
    loader = build_loader(config(shards=str(tmp_path), repeated_samples=3, frame_stride=2), patch_size=PATCH)
    batches = list(loader)
    assert len(decodes) == 4 and len(batches) == 2
    b = batches[0]
    assert b["video"].shape == (6, 3, 8, 32, 32) and b["clips_per_sample"] == 3
    assert b["key"][:3] == [b["key"][0]] * 3 and b["label"][0] == b["label"][2]
    assert not torch.equal(b["video"][0], b["video"][1])  # each clip its own sampling + augmentation
    assert not torch.equal(b["mask"][0], b["mask"][1])


def test_multiview_evaluation_is_deterministic(tmp_path):
    write_shards(tmp_path, [3], num_frames=16)
    cfg = config(shards=str(tmp_path), eval_clips=2, eval_crops=3, batch_size=3, mask_type="none")
    a = list(build_loader(cfg, patch_size=PATCH, split="train", train=False))
    b = list(build_loader(cfg, patch_size=PATCH, split="train", train=False))
    assert len(a) == 1 and a[0]["video"].shape == (18, 3, 8, 32, 32) and a[0]["clips_per_sample"] == 6
    assert torch.equal(a[0]["video"], b[0]["video"]) and not a[0]["mask"].any()
    assert len(set(a[0]["key"][:6])) == 1


def bounding_box(binary):
    ys, xs = binary.nonzero(as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()


def test_boxes_and_masks_follow_sampling_and_transforms(tmp_path):
    write_shards(tmp_path, [4], num_frames=16, size=64, annotate=True)
    cfg = config(shards=str(tmp_path), crop_size=32, frame_stride=2, crop="random_resized",
                 crop_scale=(0.3, 1.0), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    checked = 0
    for batch in build_loader(cfg, patch_size=PATCH, annotations=("boxes", "masks")):
        assert batch["boxes"].shape == (2, 8, 4) and batch["masks"].shape == (2, 8, 32, 32)
        bright = batch["video"][:, 0] > 0.5  # (B, T, H, W), unnormalised
        for clip in range(2):
            for t in range(8):
                box, mask, pix = batch["boxes"][clip, t], batch["masks"][clip, t], bright[clip, t]
                if torch.isnan(box).any():
                    assert mask.sum() == 0
                    continue
                assert torch.allclose(bounding_box(pix), box, atol=1.5), (clip, t, bounding_box(pix), box)
                assert torch.allclose(bounding_box(mask), box, atol=1.5), (clip, t, bounding_box(mask), box)
                checked += 1
    assert checked > 20


def test_annotations_are_read_only_when_asked_for(tmp_path):
    """Pretraining (no annotations asked) never reads the members: a damaged masks.npz is not even
    noticed; a task asking for one gets only that one, and its damage is caught."""
    keys = write_shards(tmp_path, [4], annotate=True, overrides={sample_key("train", 0, 1): {"masks.npz": b"PK junk"}})
    cfg = config(shards=str(tmp_path), shuffle=False)
    loader = build_loader(cfg, patch_size=PATCH)
    batches = list(loader)
    assert [k for b in batches for k in b["key"]] == keys and loader.stats()["skipped"] == {}
    assert not any("masks" in b or "boxes" in b for b in batches)
    loader = build_loader(cfg, patch_size=PATCH, annotations=("masks",))
    batches = list(loader)
    assert loader.stats()["skipped"] == {"bad_annotation": 1}
    assert all("masks" in b and "boxes" not in b for b in batches)
    with pytest.raises(ConfigError, match=r"^annotations: 'labels' is not one of \('boxes', 'masks'\)$"):
        build_loader(cfg, patch_size=PATCH, annotations=("labels",))


def test_weighted_mix_of_two_datasets(tmp_path):
    write_shards(tmp_path / "a", [2, 2], key_prefix="a")
    write_shards(tmp_path / "b", [4], key_prefix="b")
    sources = [DataSource(shards=str(tmp_path / "a"), weight=2.0), DataSource(shards=str(tmp_path / "b"))]
    loader = build_loader(config(sources=sources, batch_size=4), patch_size=PATCH)
    keys = [k for b in loader for k in b["key"]]
    assert len(keys) == 12 and Counter(Counter(keys).values()) == {2: 4, 1: 4}


def test_resampled_epochs_have_the_asked_length(tmp_path):
    write_shards(tmp_path, [3, 2])
    cfg = config(shards=str(tmp_path), resampled=True, epoch_samples=14, num_workers=2)
    loader = build_loader(cfg, patch_size=PATCH)
    first, second = [k for b in loader for k in b["key"]], [k for b in loader for k in b["key"]]
    assert len(loader) == 7 and len(first) == len(second) == 14 and first != second


def test_pipe_shards_with_a_manifest(tmp_path):
    keys = write_shards(tmp_path, [3, 3])
    spec = f"pipe:cat {tmp_path}/train-{{000000..000001}}.tar"
    loader = build_loader(config(shards=spec, manifest=str(tmp_path / "manifest.json"), num_workers=2),
                          patch_size=PATCH)
    assert sorted(k for b in loader for k in b["key"]) == sorted(keys)
    assert loader.stats()["skipped_total"] == 0


def test_multiblock_mask_and_pyav_backend(tmp_path):
    write_shards(tmp_path, [2])
    cfg = config(shards=str(tmp_path), decoder="pyav", mask_type="multiblock")
    (batch,) = list(build_loader(cfg, patch_size=(2, 8, 8)))
    assert batch["mask"].shape == (2, 4 * 4 * 4) and "decoder_mask" not in batch
    assert (batch["mask"].sum(1) == 4 * 8).all()
