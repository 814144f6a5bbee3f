"""Reusable shared-memory buffers for the uint8 clips a worker hands to the main process.

    released = new_release_counters(num_workers)          # main, before the workers start
    ring = BatchRing(released, worker=w, slots=3)          # worker
    video, slot = ring.buffer((clips, T, H, W, 3))         # this batch's uint8 buffer
    ...                                                    # main is done with the batch, then:
    released[w] += 1                                       # slot free for the worker again

A fresh shared-memory tensor per batch (what torch's DataLoader does) costs page faults on both
sides for every batch, which on the VMs measured here cost as much as the crops. So each worker
writes batch i into slot i % slots of its own ring, and the main process counts the batches it
has finished with per worker: once it has copied or normalised a batch on arrival, or, when it
hands the uint8 batch itself on (loader device None), once the next batch is asked for. Before
reusing a slot the worker waits until the batch that last used it is counted, so a buffer is never
overwritten while the main process still reads it.

Ring and counters last as long as the worker, across epochs (loader.py keeps its workers). When a
worker starts a new iteration it calls `settle()`: the batches of the old one that the main process
never received (torch drops what was in flight when an iteration is abandoned or restarted) are
counted as released. That is safe because the main process, before it starts a new iteration, has
released every batch it received, and never touches an old batch again.
"""

from __future__ import annotations

import math
import time

import torch

_POLL_S = 0.0005


def new_release_counters(workers: int) -> torch.Tensor:
    """Per-worker count of batches the main process has finished with, shared with the workers."""
    return torch.zeros(max(workers, 1), dtype=torch.int64).share_memory_()


class BatchRing:
    def __init__(self, released: torch.Tensor, worker: int, slots: int):
        self.released, self.worker, self.slots = released, worker, slots
        self.produced = 0
        self._forgiven = 0  # batches of earlier iterations that the main process never received
        self._buffers: list[torch.Tensor | None] = [None] * slots

    def settle(self) -> None:
        """Count every batch made so far as released: call at the start of a new iteration only."""
        self._forgiven = self.produced - int(self.released[self.worker])

    def buffer(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, int]:
        """An uninitialised uint8 tensor of `shape` for the next batch, and its slot."""
        index, slot = self.produced, self.produced % self.slots
        self.produced += 1
        while int(self.released[self.worker]) + self._forgiven < index - self.slots + 1:
            time.sleep(_POLL_S)
        numel = math.prod(shape)
        held = self._buffers[slot]
        if held is None or held.numel() < numel:
            held = torch.empty(numel, dtype=torch.uint8).share_memory_()
            self._buffers[slot] = held
        return held[:numel].view(shape), slot
