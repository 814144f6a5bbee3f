"""Elastic resume: a state saved on (W_old ranks, batch B_old) resumed on (W_new, B_new) - the new ranks
finish the epoch with exactly the samples (and clips) the old ones had left, in equal batch counts."""

import dataclasses
import json
from collections import Counter

import pytest
import torch

import pipeline.data.decode_process as decode_process
from pipeline.data.loader import build_loader
from pipeline.data.plan import EpochPlan, PlanSpec
from pipeline.data.remainder import Remainder, RemainderPlan
from pipeline.testing.shards import write_shards
from tests.data.loader_testlib import PATCH, config, rank_samples, refs, run

EPOCH = 1  # resume inside the second epoch: the state's epoch, not 0, must drive the plan


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """24 samples in uneven shards: old streams' remainders straddle shard boundaries."""
    folder = tmp_path_factory.mktemp("elastic")
    return folder, write_shards(folder, [5, 7, 3, 9])


def loaders(folder, world, batch, workers):
    out = []
    for rank in range(world):
        loader = build_loader(config(folder, batch_size=batch, num_workers=workers, streams_per_rank=2),
                              rank=rank, world_size=world, patch_size=PATCH)
        loader.set_epoch(EPOCH)
        out.append(loader)
    return out


def old_run(folder, world, batch, workers, stop):
    """Every old rank's whole epoch, and the state after `stop` batches (the same on every rank)."""
    batches, states = [], []
    for loader in loaders(folder, world, batch, workers):
        mine = []
        for b in loader:
            mine.append(b)
            if len(mine) == stop:
                states.append(json.loads(json.dumps(loader.state_dict())))  # as the trainer stores it
        batches.append(mine)
    assert all(s == states[0] for s in states)
    return batches, states[0]


def clips(batches) -> dict[str, torch.Tensor]:
    return {k: v for b in batches for k, v in zip(b["key"], b["video"])}


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("old, new, stop", [
    ((2, 2), (1, 4), 2),   # 2 -> 1 ranks, batch doubles
    ((1, 4), (2, 2), 2),   # 1 -> 2 ranks, batch halves
    ((2, 2), (1, 2), 2),   # 2 -> 1 ranks, same batch: grad_accum doubles, twice the batches
    ((2, 2), (3, 2), 3),   # 2 -> 3 ranks: 12 samples left, 3 x 2 divides them
])
def test_new_ranks_yield_exactly_what_the_old_ones_left(shards, workers, old, new, stop):
    folder, keys = shards
    before, state = old_run(folder, *old, workers, stop)
    head = [b for rank in before for b in rank[:stop]]
    left = clips(b for rank in before for b in rank[stop:])
    resumed = loaders(folder, *new, workers)
    tails = []
    for loader in resumed:
        loader.load_state_dict(state)
        tails.append(run(loader))
    assert {len(t) for t in tails} == {len(left) // (new[0] * new[1])}  # equal batch counts per new rank
    seen = Counter(k for b in head for k in b["key"]) + Counter(k for t in tails for b in t for k in b["key"])
    assert seen == Counter(keys)
    for k, video in clips(b for t in tails for b in t).items():  # same seeds: same clip positions and crops
        assert torch.equal(video, left[k]), k
    # the next epoch is the new layout's normal plan
    fresh = loaders(folder, *new, workers)
    for loader, reference in zip(resumed, fresh):
        assert loader.epoch == EPOCH + 1
        reference.set_epoch(EPOCH + 1)
        assert [b["key"] for b in run(loader)] == [b["key"] for b in run(reference)]


def test_refused_when_the_rest_does_not_split_evenly(shards):
    folder, _ = shards
    loader = loaders(folder, 2, 2, 0)[0]
    loader.load_state_dict({**loader.state_dict(), "batches_done": 2})  # 2 ranks x 4 batches x 2 left: 16
    state = loader.state_dict()
    new = loaders(folder, 3, 2, 0)[0]
    with pytest.raises(ValueError) as e:
        new.load_state_dict(state)
    assert str(e.value).startswith("data state: the 16 samples left in epoch 1 (saved on 2 ranks x batch 2) do not "
                                   "split into equal batches over 3 ranks x batch 2; resume on a world_size x")
    assert "\n" not in str(e.value) and new.epoch == EPOCH and new.batches_done == 0
    other_seed = build_loader(config(folder, batch_size=4, seed=7, streams_per_rank=2), patch_size=PATCH)
    with pytest.raises(ValueError, match="^data state: seed was 0 when saved, is 7 now .*set data.seed back"):
        other_seed.load_state_dict(state)


def test_state_saved_inside_the_rest_resumes_exactly_and_elastically(shards):
    folder, keys = shards
    before, state = old_run(folder, 2, 2, 0, 1)
    head = [k for rank in before for b in rank[:1] for k in b["key"]]
    single = loaders(folder, 1, 4, 0)[0]  # 2 -> 1: 20 samples left, 5 batches of 4
    single.load_state_dict(state)
    middle = run(single, limit=2)
    inner = json.loads(json.dumps(single.state_dict()))
    assert inner["batches_done"] == 2 and inner["remainder"]["world_size"] == 2
    rest = run(single)
    again = loaders(folder, 1, 4, 2)[0]  # same layout, other worker count: exactly the same batches
    again.load_state_dict(inner)
    assert [b["key"] for b in run(again)] == [b["key"] for b in rest]
    tails = []
    for loader in loaders(folder, 2, 2, 0):  # 1 -> 2 again: 12 samples left, 3 batches of 2 per rank
        loader.load_state_dict(inner)
        tails.append([k for b in run(loader) for k in b["key"]])
    assert [len(t) for t in tails] == [6, 6]
    assert Counter(head + [k for b in middle for k in b["key"]] + tails[0] + tails[1]) == Counter(keys)


def test_resumed_rest_decodes_only_its_samples(shards, monkeypatch):
    folder, _ = shards
    _, state = old_run(folder, 2, 2, 0, 4)  # 2 ranks x 2 batches x 2 = 8 samples left
    decoded, real = [], decode_process.decode_clips
    monkeypatch.setattr(decode_process, "decode_clips", lambda *a, **kw: decoded.append(1) or real(*a, **kw))
    loader = loaders(folder, 1, 4, 0)[0]
    loader.load_state_dict(state)
    assert len(run(loader)) == 2 and len(decoded) == 8


@pytest.mark.parametrize("resampled", [False, True])
@pytest.mark.parametrize("layouts", [
    [(2, 2, 2, 3), (1, 4, 2, 2), (4, 1, 3, None)],
    [(1, 4, 2, 1), (2, 2, 2, 3), (3, 2, 1, None)],
    [(4, 1, 3, 2), (2, 2, 2, 2), (1, 4, 1, None)],
])
def test_chained_re_splits_draw_every_planned_sample_once(resampled, layouts):
    """Plans only: (world, batch, streams, batches done) per layout; the last runs to the epoch's end.
    Resampled epochs continue the old streams' draws (repeats included) the same way."""
    spec = PlanSpec(sources=[(refs([5, 7, 3, 9, 12, 4]), 1.0)], batch_size=1, streams=1, shuffle_buffer=8,
                    resampled=resampled, epoch_samples=40)

    def layout(batch, streams):
        return dataclasses.replace(spec, batch_size=batch, streams=streams)

    (world, batch, streams, done), *later = layouts
    plans = [EpochPlan(layout(batch, streams), 2, r, world) for r in range(world)]
    planned = Counter(s for p in plans for s in rank_samples(p))
    seen = Counter(s for p in plans for s in rank_samples(p)[:done * batch])
    left = Remainder.of_epoch(layout(batch, streams), 2, world, done)
    for world, batch, streams, done in later:  # done None: to the end of the epoch
        plans = [RemainderPlan(left, layout(batch, streams), r, world) for r in range(world)]
        assert len({p.batches_per_rank for p in plans}) == 1
        if done is None:
            seen += Counter(s for p in plans for s in rank_samples(p))
        else:
            seen += Counter(s for p in plans for s in rank_samples(p)[:done * batch])
            left = left.after(world, batch, streams, done)
    assert seen == planned and sum(planned.values()) == 40
    assert max(planned.values()) == 1 or resampled
