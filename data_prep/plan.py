"""The shard plan: which inputs go into which shard, fixed before any input is read.

    from data_prep.plan import Node, plan_shards
    plan = plan_shards(listing.items, inputs_per_shard=256)
    mine = Node(rank=1, count=3).shards(plan)        # this node's share: plan[1::3]

Each split's items, in listing order, are cut into consecutive runs of `inputs_per_shard` items;
run j of split S is shard `S-{j:06d}.tar` and holds the samples of exactly those items, in order
(an item gives one sample, one per segment with --segment-s, or none when it is quarantined).
Boundaries are fixed by item position, never by what earlier items turned out to be, so a shard's
bytes depend only on its own items: not on other shards, on quarantine elsewhere, or on how many
machines and workers made it. A shard whose items are all quarantined holds nothing and is not
written (the manifest lists shards that hold samples; names may then skip a number).

The plan orders shards by their first item (listing order) and numbers them 0, 1, ...; node R of
N owns numbers R, R + N, R + 2N, ... (round robin, so every node gets a share of every part of the
listing). A run without --num-nodes is node 0 of 1. Each node keeps its own journal part
(`part` below) in OUT; the merge (data_prep/shard_merge.py) checks the parts cover the plan.
"""

from __future__ import annotations

from dataclasses import dataclass

from data_prep.sources import Item
from pipeline.data.shard_format import shard_name


@dataclass(frozen=True)
class PlannedShard:
    number: int  # position in the plan
    name: str
    split: str
    items: tuple[int, ...]  # item indices (listing positions), in order


def plan_shards(items: list[Item], inputs_per_shard: int) -> list[PlannedShard]:
    """The shards of `items` (see the module docstring), ordered by their first item."""
    by_split: dict[str, list[int]] = {}
    for item in items:
        by_split.setdefault(item.split, []).append(item.index)
    runs = [(split, j, tuple(indices[start:start + inputs_per_shard]))
            for split, indices in by_split.items()
            for j, start in enumerate(range(0, len(indices), inputs_per_shard))]
    runs.sort(key=lambda run: run[2][0])
    return [PlannedShard(number, shard_name(split, j), split, members)
            for number, (split, j, members) in enumerate(runs)]


@dataclass(frozen=True)
class Node:
    """One of `count` machines sharing a run (`vssl shard --num-nodes COUNT --node-rank RANK`)."""

    rank: int = 0
    count: int = 1
    partitioned: bool = False  # False: the whole run in one process, which also merges

    def shards(self, plan: list[PlannedShard]) -> list[PlannedShard]:
        return plan[self.rank::self.count]

    def owner(self, shard: PlannedShard) -> int:
        return shard.number % self.count

    @property
    def part(self) -> str:
        """What this node's journal name carries: "" for a whole run, else its rank and the count."""
        return f".node-{self.rank:05d}-of-{self.count:05d}" if self.partitioned else ""

    def __str__(self) -> str:
        return f"node {self.rank} of {self.count}" if self.partitioned else "one node"
