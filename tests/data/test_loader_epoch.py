"""The real loader over real shards: coverage across ranks and workers, equal batch counts, exact resume."""

import sys
from collections import Counter

import pytest
import torch

import pipeline.data.decode_process as decode_process
from pipeline.config import ConfigError
from pipeline.data.loader import build_loader
from pipeline.testing.shards import write_shards
from tests.data.loader_testlib import PATCH, assert_same, config, run


@pytest.fixture(scope="module")
def even(tmp_path_factory):
    """24 samples in uneven shards: 2 ranks x batch 3 divide it, so an epoch covers all."""
    folder = tmp_path_factory.mktemp("even")
    return folder, write_shards(folder, [5, 7, 3, 9])


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uneven")
    return folder, write_shards(folder, [1, 11, 2, 6, 3])


def test_two_ranks_two_workers_cover_every_sample_once(even):
    folder, keys = even
    cfg = config(folder, num_workers=2, decode_timeout_s=20.0)  # the default path: isolated decode
    seen = []
    for rank in range(2):
        loader = build_loader(cfg, rank=rank, world_size=2, patch_size=PATCH)
        batches = run(loader)
        assert len(batches) == len(loader) == 4
        seen += [k for b in batches for k in b["key"]]
        b = batches[0]
        assert b["video"].shape == (3, 3, 8, 32, 32) and b["video"].dtype == torch.float32
        assert b["mask"].shape == (3, 4 * 2 * 2) and (b["mask"].sum(1) == 8).all()
        assert b["label"].dtype == torch.long and loader.stats()["samples"] == 12
    assert Counter(seen) == Counter(keys)


def test_equal_batches_per_rank_with_uneven_shards(uneven):
    folder, keys = uneven
    for world, workers in ((2, 2), (3, 1)):
        counts = set()
        for rank in range(world):
            loader = build_loader(config(folder, num_workers=workers), rank=rank, world_size=world, patch_size=PATCH)
            counts.add((len(loader), len(run(loader))))
        assert counts == {(len(keys) // (world * 3),) * 2}


def test_every_sample_in_evaluation_with_padding(uneven):
    folder, keys = uneven
    seen, real = [], []
    for rank in range(2):
        loader = build_loader(config(folder, crop="center"), rank=rank, world_size=2, patch_size=PATCH, train=False)
        for b in run(loader):
            seen += b["key"]
            real += [k for k, pad in zip(b["key"], b["padded"].tolist()) if not pad]
    assert set(seen) == set(keys) and len(seen) == 24  # 23 samples padded to 2 ranks x 4 batches x 3
    assert sorted(real) == sorted(keys)  # the padding repeat is marked


@pytest.mark.parametrize("workers_before, workers_after, stop", [(2, 2, 3), (0, 2, 1), (2, 1, 4)])
def test_resume_gives_the_batches_an_uninterrupted_run_gives(even, workers_before, workers_after, stop):
    folder, _ = even
    cfg = dict(streams_per_rank=2, batch_size=2)
    full = build_loader(config(folder, num_workers=workers_before, **cfg), patch_size=PATCH)
    reference = run(full) + run(full)  # two epochs
    assert full.epoch == 2
    first = build_loader(config(folder, num_workers=workers_before, **cfg), patch_size=PATCH)
    run(first)  # epoch 0, then stop inside epoch 1
    head = run(first, limit=stop)
    state = first.state_dict()
    assert state["epoch"] == 1 and state["batches_done"] == stop
    resumed = build_loader(config(folder, num_workers=workers_after, **cfg), patch_size=PATCH)
    resumed.load_state_dict(state)
    tail = run(resumed)
    assert_same(head + tail, reference[len(full):])
    assert resumed.epoch == 2 and resumed.batches_done == 0


def test_abandoned_iteration_continues_where_it_stopped(even):
    folder, _ = even
    loader = build_loader(config(folder, num_workers=2), patch_size=PATCH)
    reference = run(build_loader(config(folder, num_workers=2), patch_size=PATCH))
    assert_same(run(loader, limit=3) + run(loader), reference)


def test_resume_does_not_decode_the_skipped_samples(even, monkeypatch):
    folder, _ = even
    decoded = []
    real = decode_process.decode_clips

    def counting(decoder, data, sampling, seed, *rest):
        decoded.append(seed)
        return real(decoder, data, sampling, seed, *rest)

    monkeypatch.setattr(decode_process, "decode_clips", counting)
    loader = build_loader(config(folder), patch_size=PATCH)
    loader.load_state_dict({**loader.state_dict(), "batches_done": 6})
    assert len(run(loader)) == 2 and len(decoded) == 2 * 3


def test_state_from_another_setup_is_refused(even):
    """(another world_size, batch_size or streams_per_rank is an elastic resume: test_loader_elastic.py)"""
    folder, _ = even
    state = build_loader(config(folder), patch_size=PATCH).state_dict()
    other = build_loader(config(folder, seed=1), patch_size=PATCH)
    with pytest.raises(ValueError, match="seed was 0 when saved, is 1 now .* set data.seed back to resume"):
        other.load_state_dict(state)


def test_set_epoch_and_seeded_order(even):
    folder, _ = even
    a = build_loader(config(folder, seed=1), patch_size=PATCH)
    a.set_epoch(3)
    b = build_loader(config(folder, seed=1), patch_size=PATCH)
    b.set_epoch(3)
    first = run(a)
    assert_same(first, run(b))
    b.set_epoch(4)
    assert [x["key"] for x in run(b)] != [x["key"] for x in first]


@pytest.mark.parametrize("override, needle", [
    (dict(num_frames=7), "data.num_frames: 7 is not divisible by the patch size 2"),
    (dict(batch_size=100), "data.batch_size: 24 samples of split 'train' make no batch"),
    (dict(decoder="torchcodec"), "data.decoder: torchcodec is not installed"),
    (dict(mask_type="running_cell", mask_ratio=0.05), "data.mask_type: running_cell mask"),
])
def test_build_errors_name_the_key(even, override, needle, monkeypatch):
    folder, _ = even
    monkeypatch.setitem(sys.modules, "torchcodec", None)  # torchcodec absent, installed or not
    with pytest.raises(ConfigError) as e:
        build_loader(config(folder, **override), patch_size=PATCH)
    assert needle in str(e.value) and "\n" not in str(e.value)
