"""The epoch plan as pure arithmetic: coverage, equal batches per rank, resampling, mixing."""

from collections import Counter

import numpy as np
import pytest

from pipeline.data.plan import EpochPlan, PlanSpec, buffer_shuffle_order
from tests.data.loader_testlib import rank_samples, refs


@pytest.mark.parametrize("sizes, world, batch, streams", [
    ([5, 7, 3, 9], 2, 3, 2), ([1, 30, 2], 3, 2, 4), ([4] * 6, 4, 3, 1), ([13], 2, 2, 3)])
def test_drop_last_every_sample_at_most_once_and_equal_batches(sizes, world, batch, streams):
    spec = PlanSpec(sources=[(refs(sizes), 1.0)], batch_size=batch, streams=streams, shuffle_buffer=8)
    plans = [EpochPlan(spec, epoch=2, rank=r, world_size=world) for r in range(world)]
    total = sum(sizes)
    assert {p.batches_per_rank for p in plans} == {total // (world * batch)}
    seen = [s for p in plans for s in rank_samples(p)]
    assert len(seen) == len(set(seen)) == total // (world * batch) * world * batch
    if total % (world * batch) == 0:
        assert set(seen) == {(f"s{i}.tar", k) for i, n in enumerate(sizes) for k in range(n)}


def test_padding_covers_every_sample_with_equal_batches():
    sizes = [5, 7, 3]
    spec = PlanSpec(sources=[(refs(sizes), 1.0)], batch_size=4, streams=2, drop_last=False, shuffle=False)
    plans = [EpochPlan(spec, 0, r, 2) for r in range(2)]
    assert [p.batches_per_rank for p in plans] == [2, 2]  # ceil(15 / 8)
    seen = Counter(s for p in plans for s in rank_samples(p))
    assert len(seen) == 15 and sum(seen.values()) == 16  # one sample repeated as padding


def test_order_is_a_function_of_seed_and_epoch():
    spec = PlanSpec(sources=[(refs([6, 6, 6, 6]), 1.0)], batch_size=2, streams=2, seed=5)
    a = rank_samples(EpochPlan(spec, 1, 0, 2))
    assert a == rank_samples(EpochPlan(spec, 1, 0, 2))
    assert a != rank_samples(EpochPlan(spec, 2, 0, 2))
    other = PlanSpec(sources=spec.sources, batch_size=2, streams=2, seed=6)
    assert a != rank_samples(EpochPlan(other, 1, 0, 2))
    flat = PlanSpec(sources=spec.sources, batch_size=2, streams=1, shuffle=False)
    assert rank_samples(EpochPlan(flat, 0, 0, 1))[:7] == [("s0.tar", i) for i in range(6)] + [("s1.tar", 0)]


def test_shuffle_buffer_is_a_bounded_permutation():
    order = buffer_shuffle_order(200, 10, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(200))
    # emission i happens after input i + buffer - 1 arrived, so nothing comes out early
    assert all(p <= i + 9 for i, p in enumerate(order.tolist()))
    assert order.tolist() != list(range(200))
    assert buffer_shuffle_order(5, 1, np.random.default_rng(0)).tolist() == [0, 1, 2, 3, 4]


def test_resampled_has_fixed_length_and_follows_weights():
    a, b = refs([10, 10], "a"), refs([5, 5, 5, 5, 5, 5, 5, 5], "b")  # 20 and 40 samples
    spec = PlanSpec(sources=[(a, 3.0), (b, 1.0)], batch_size=4, streams=2, resampled=True,
                    epoch_samples=4000, shuffle_buffer=16)
    plans = [EpochPlan(spec, 0, r, 2) for r in range(2)]
    assert [p.batches_per_rank for p in plans] == [500, 500]
    drawn = [s for p in plans for s in rank_samples(p)]
    assert len(drawn) == 4000
    share_a = sum(name.startswith("a") for name, _ in drawn) / len(drawn)
    assert 0.68 < share_a < 0.82  # weight 3 : 1 -> 75 % of samples from source a
    assert rank_samples(plans[0]) == rank_samples(EpochPlan(spec, 0, 0, 2))
    assert rank_samples(plans[0]) != rank_samples(EpochPlan(spec, 1, 0, 2))


def test_mixing_weights_repeat_sources_per_epoch():
    a, b = refs([4, 4], "a"), refs([4, 4, 4, 4], "b")
    spec = PlanSpec(sources=[(a, 2.0), (b, 0.5)], batch_size=2, streams=1)
    plan = EpochPlan(spec, 0, 0, 1)
    counts = Counter(name[0] for name, _ in rank_samples(plan))
    assert counts == {"a": 16, "b": 8}  # a twice, half of b's shards


def test_rank_outside_world():
    with pytest.raises(ValueError, match="rank 2 outside world_size 2"):
        EpochPlan(PlanSpec(sources=[(refs([4]), 1.0)], batch_size=1), 0, 2, 2)
