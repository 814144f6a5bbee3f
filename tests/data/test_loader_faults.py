"""Bad input never crashes or hangs the loader: the sample is skipped, counted and logged."""

import logging
import os
import pickle
import time

from pipeline.config import DataConfig
from pipeline.data.decode_process import SLEEP_KEY_ENV
from pipeline.data.loader import build_loader
from pipeline.testing.shards import sample_key, write_shards

PATCH = (2, 16, 16)


class _Planted:
    """Unpickling this would create the file named in it: proof that nothing unpickles."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def config(folder, **kw) -> DataConfig:
    base = dict(shards=str(folder), num_frames=8, frame_stride=1, crop_size=32, batch_size=4,
                num_workers=0, decode_timeout_s=0.0, mask_ratio=0.5, shuffle=False)
    return DataConfig(**{**base, **kw})


def all_batches(loader):
    return [b for b in loader]


def test_bad_samples_are_skipped_and_counted(tmp_path, caplog):
    planted = tmp_path / "unpickled"
    bad = {sample_key("train", 0, 1): {"mp4": b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000)},
           sample_key("train", 0, 2): {"json": b"{not json"},
           sample_key("train", 1, 0): {"mp4": None},
           sample_key("train", 1, 1): {"boxes.json": b'{"format": "xywh", "boxes": []}'},
           sample_key("train", 1, 2): {"pyd": pickle.dumps(_Planted(str(planted)))}}
    keys = write_shards(tmp_path / "d", [4, 4], overrides=bad)
    loader = build_loader(config(tmp_path / "d"), patch_size=PATCH, annotations=("boxes",))
    with caplog.at_level(logging.WARNING, logger="vssl.data"):
        batches = all_batches(loader)
    assert len(batches) == 2 and [len(b["key"]) for b in batches] == [2, 2]
    stats = loader.stats()
    assert stats["skipped"] == {"decode_error": 1, "bad_json": 1, "missing_video": 1, "bad_annotation": 1}
    assert stats["skipped_total"] == 4 and stats["samples"] == 4
    got = [k for b in batches for k in b["key"]]
    assert sample_key("train", 1, 2) in got and set(got) < set(keys)
    assert not planted.exists()  # the .pyd member was never unpickled
    for key in bad:
        if key != sample_key("train", 1, 2):
            assert any(key in r.getMessage() for r in caplog.records), key


def test_truncated_shard_ends_with_a_warning(tmp_path, caplog):
    write_shards(tmp_path, [6, 6])
    shard = tmp_path / "train-000000.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    loader = build_loader(config(tmp_path, batch_size=3), patch_size=PATCH)
    with caplog.at_level(logging.WARNING, logger="vssl.data"):
        batches = all_batches(loader)
    assert len(batches) == 4
    stats = loader.stats()
    lost = stats["skipped"]["truncated_shard"]
    assert 1 <= lost <= 6 and stats["samples"] == 12 - lost
    assert any("truncated" in r.getMessage() and "train-000000.tar" in r.getMessage() for r in caplog.records)


def test_shard_shorter_than_its_manifest_and_a_vanished_shard(tmp_path):
    write_shards(tmp_path, [4, 4])
    write_shards(tmp_path / "short", [2])
    (tmp_path / "short" / "train-000000.tar").replace(tmp_path / "train-000000.tar")
    loader = build_loader(config(tmp_path), patch_size=PATCH)
    (tmp_path / "train-000001.tar").unlink()  # gone after the loader was built
    assert len(all_batches(loader)) == 2
    assert loader.stats()["skipped"] == {"shard_short": 2, "shard_unreadable": 4}


def test_a_hanging_decode_is_bounded(tmp_path, monkeypatch):
    keys = write_shards(tmp_path, [4])
    monkeypatch.setenv(SLEEP_KEY_ENV, keys[1])
    loader = build_loader(config(tmp_path, decode_timeout_s=1.0), patch_size=PATCH)
    started = time.monotonic()
    (batch,) = all_batches(loader)
    assert time.monotonic() - started < 20
    assert batch["key"] == [keys[0], keys[2], keys[3]]
    assert loader.stats()["skipped"] == {"decode_timeout": 1}


def test_a_whole_batch_of_failures_keeps_its_place(tmp_path):
    bad = {sample_key("train", 0, i): {"json": b"[]"} for i in range(4)}
    write_shards(tmp_path, [4, 4], overrides=bad)
    batches = all_batches(build_loader(config(tmp_path), patch_size=PATCH))
    assert [len(b["key"]) for b in batches] == [0, 4]
    assert batches[0]["video"].shape == (0, 3, 8, 32, 32) and batches[0]["mask"].shape == (0, 16)
