"""Persistent workers: one set of loader workers (and their decode helpers) serves every epoch, and
the batches stay exactly those of a loader that starts new workers per epoch (the old behaviour)."""

import gc
import json
import os
import signal
import time

import pytest
import torch

from pipeline.data.loader import build_loader
from pipeline.testing.shards import write_shards
from tests.data.loader_testlib import PATCH, assert_same, config, run


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """24 samples in uneven shards: 8 batches of 3 per epoch."""
    folder = tmp_path_factory.mktemp("persistent")
    write_shards(folder, [5, 7, 3, 9])
    return folder


def loader_of(folder, epoch=None, device="cpu", **kw):
    loader = build_loader(config(folder, **{"num_workers": 2, **kw}), patch_size=PATCH, device=device)
    if epoch is not None:
        loader.set_epoch(epoch)
    return loader


def raw(loader, limit=None):
    """run() for device None: each uint8 batch cloned before its ring slot is reused."""
    batches = []
    for batch in loader:
        batches.append({**batch, "video": batch["video"].clone()})
        if len(batches) == limit:
            break
    return batches


def fresh(folder, epoch, **kw):
    """Epoch `epoch` from a loader of its own: new workers, as every epoch had before."""
    loader = loader_of(folder, epoch, **kw)
    return raw(loader) if loader.device is None else run(loader)


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()  # [state, ppid, ...]
    except OSError:
        return None


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        stat = _stat(int(entry)) if entry.isdigit() else None
        if stat is not None and int(stat[1]) == pid and stat[0] != "Z":
            found.add(int(entry))
    return found


def processes(loader) -> tuple[set[int], set[int]]:
    """The loader's worker pids (from its batches) and their decode helpers' pids."""
    workers = set(loader.worker_pids.values())
    return workers, {c for w in workers for c in children(w)}


def shared_mappings(pids) -> int:
    """Shared-memory mappings (torch's /dev/shm segments, the decoders' memfds) of these processes."""
    count = 0
    for pid in pids:
        with open(f"/proc/{pid}/maps") as f:
            count += sum(1 for line in f if "/dev/shm/" in line or "memfd:" in line)
    return count


def test_workers_and_decode_helpers_serve_every_epoch(folder):
    loader = loader_of(folder, decode_timeout_s=20.0)
    seen = []
    for epoch in range(3):
        assert len(run(loader)) == 8 and loader.epoch == epoch + 1
        seen.append(processes(loader))
    workers, helpers = seen[0]
    assert len(workers) == 2 and os.getpid() not in workers
    assert len(helpers) == 2  # one decode helper per worker
    assert seen == [(workers, helpers)] * 3
    loader.close()
    deadline = time.monotonic() + 10
    while any(alive(p) for p in workers | helpers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in workers | helpers)
    assert_same(run(loader), fresh(folder, 3))  # closed: the next epoch starts new workers
    assert not set(loader.worker_pids.values()) & workers


def test_consecutive_epochs_equal_a_new_loader_per_epoch(folder):
    loader = loader_of(folder)
    for epoch in range(3):
        assert_same(run(loader), fresh(folder, epoch))


def test_set_epoch_jumps_and_mid_epoch_resume_reuse_the_workers(folder):
    loader = loader_of(folder)
    run(loader)
    workers = set(loader.worker_pids.values())
    loader.set_epoch(5)
    assert_same(run(loader), fresh(folder, 5))
    loader.set_epoch(2)
    head = run(loader, limit=3)
    state = json.loads(json.dumps(loader.state_dict()))
    loader.set_epoch(7)
    run(loader, limit=2)
    loader.load_state_dict(state)  # back into epoch 2, after its third batch
    assert_same(head + run(loader), fresh(folder, 2))
    assert loader.epoch == 3 and set(loader.worker_pids.values()) == workers


def test_abandoned_iterations_leave_nothing_behind(folder):
    """Each abandoned iteration leaves batches in flight in the workers and the ring slot of the
    uint8 batch last handed out (device None): the next epoch gets exactly its own batches."""
    loader = loader_of(folder, device=None)
    for _ in range(4):  # more abandoned batches than ring slots: a slot never freed would hang here
        loader.set_epoch(loader.epoch + 1)
        run(loader, limit=1)
    loader.set_epoch(9)
    kept = raw(loader, limit=4)
    loader.set_epoch(10)
    assert_same(raw(loader), fresh(folder, 10, device=None))
    assert_same(kept, fresh(folder, 9, device=None)[:4])


def test_an_iteration_replaced_by_a_newer_one_stops(folder):
    loader = loader_of(folder)
    old = iter(loader)
    next(old)
    loader.set_epoch(4)
    assert_same(run(loader), fresh(folder, 4))
    with pytest.raises(RuntimeError, match="^data: this iteration was ended by a newer iter"):
        next(old)
    assert loader.epoch == 5


def test_a_slow_consumer_across_epochs_reads_whole_batches(folder):
    """One ring slot per worker, a consumer slower than the workers, an abandoned epoch between:
    every uint8 batch is intact until the next one is asked for."""
    expected = {e: fresh(folder, e, device=None, batch_size=2) for e in (0, 1)}
    loader = loader_of(folder, device=None, batch_size=2, prefetch_factor=1)
    loader.dataset.ring_slots = 1
    loader.set_epoch(2)
    run(loader, limit=5)
    loader.set_epoch(0)
    for epoch in (0, 1):
        for i, batch in enumerate(loader):
            time.sleep(0.02)  # the other worker's next batch is due meanwhile
            assert torch.equal(batch["video"], expected[epoch][i]["video"]), f"epoch {epoch} batch {i} overwritten"


def test_no_shared_memory_growth_over_epochs(folder):
    """Batch 2: 6 batches per worker, more than its 4 ring slots, so epoch 0 fills every ring."""
    loader = loader_of(folder, batch_size=2, decode_timeout_s=20.0)
    counts = []
    for _ in range(5):
        run(loader)
        workers, helpers = processes(loader)
        counts.append(shared_mappings({os.getpid()} | workers | helpers))
        assert len(loader._held) <= 2 * loader.dataset.ring_slots
    assert counts == [counts[0]] * 5


def test_an_elastic_state_loaded_into_running_workers(folder):
    """A remainder the workers did not start with restarts them once; later epochs (and a jump back
    to the remainder's epoch, now planned normally) reuse the new ones."""
    old = build_loader(config(folder, batch_size=2, streams_per_rank=2), rank=0, world_size=2, patch_size=PATCH)
    old.set_epoch(1)
    run(old, limit=2)
    state = json.loads(json.dumps(old.state_dict()))
    reference = build_loader(config(folder, batch_size=4, streams_per_rank=2), patch_size=PATCH)
    reference.load_state_dict(state)
    loader = loader_of(folder, batch_size=4, streams_per_rank=2)
    run(loader)
    before = set(loader.worker_pids.values())
    loader.load_state_dict(state)
    assert_same(run(loader), run(reference))
    after = set(loader.worker_pids.values())
    assert not before & after
    assert_same(run(loader), fresh(folder, 2, batch_size=4, streams_per_rank=2))
    loader.set_epoch(1)
    assert_same(run(loader), fresh(folder, 1, batch_size=4, streams_per_rank=2))
    assert set(loader.worker_pids.values()) == after


def test_a_worker_killed_between_epochs_fails_one_iteration_only(folder):
    loader = loader_of(folder)
    run(loader)
    with pytest.raises(RuntimeError, match=r"DataLoader worker \(pid \d+\) is killed by signal"):
        os.kill(loader.worker_pids[1], signal.SIGKILL)
        time.sleep(10)  # torch's SIGCHLD handler raises in this process meanwhile
    with pytest.raises(RuntimeError, match="exited unexpectedly"):
        run(loader)
    assert_same(run(loader), fresh(folder, 1))  # new workers, from where it stood


def test_workers_exit_when_the_loader_is_collected(folder):
    loader = loader_of(folder, decode_timeout_s=20.0)
    run(loader, limit=2)
    workers, helpers = processes(loader)
    assert len(workers) == 2 and len(helpers) == 2
    del loader
    gc.collect()
    deadline = time.monotonic() + 10
    while any(alive(p) for p in workers | helpers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in workers | helpers)
