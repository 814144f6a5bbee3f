"""The one door through which training code reads device values on the host.

    from pipeline.host import read_on_host
    lowest, highest = read_on_host(torch.stack([hidden.min(), hidden.max()]))

On a GPU each read waits for the device to finish everything queued before it (a host sync),
which stalls the step's kernel launches; so a step makes as few as it can, each reading several
values at once. `READS.count` counts them, so a test can bound a step's reads on a machine
without a GPU (where torch.cuda.set_sync_debug_mode cannot watch).
"""

from __future__ import annotations

import torch


class _Counter:
    count = 0


READS = _Counter()


def read_on_host(values: torch.Tensor) -> list:
    """`values` (any shape) as nested Python numbers: one device -> host transfer."""
    READS.count += 1
    return values.tolist()
