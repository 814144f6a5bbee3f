"""What a training step costs, seen from the loader the trainer reads (used by benchmarks/gpu.py).

    probe = StepProbe(log)                       # log: a warnings.catch_warnings(record=True) list
    train(cfg, build_objective, lambda c, r, w, o: instrument(build_train_loader(c, r, w, o), probe))
    steady(probe, skip=20)                       # step time, clips/s, data-wait fraction
    step_syncs(log, probe.marks, log_every=10, skip=5)   # host-device syncs per step, and where

Step i runs from the trainer asking for batch i to it asking for batch i + 1; its data wait is
what that next() took (the trainer's own definition), the rest is the trainer's side of the step.
Under torch.cuda.set_sync_debug_mode("warn") every host-device sync emits a warning; those
recorded between handing over batch i and batch i + 1 are step i's.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from pathlib import Path

import torch

SYNC_WARNING = "called a synchronizing CUDA operation"
ROOT = Path(__file__).resolve().parent.parent


class StepProbe:
    """Clock and warning count at every batch handed to the trainer; the first batch's first clip
    (for the objective's FLOP count) and, with keep, a host copy of that whole batch."""

    def __init__(self, log: list | None = None, keep: bool = False) -> None:
        self.asked: list[float] = []
        self.got: list[float] = []
        self.clips: list[int] = []
        self.marks: list[int] = []
        self.log, self.keep, self.first, self.kept = log, keep, None, None

    def wrap(self, batches):
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            self.asked.append(t0)
            self.got.append(time.perf_counter())
            self.clips.append(len(batch["video"]))
            self.marks.append(len(self.log) if self.log is not None else 0)
            if self.first is None:
                self.first = {"video": batch["video"][:1].clone(), "mask": batch["mask"][:1].clone()}
                if self.keep:  # copied during the first step, which no figure counts
                    self.kept = {k: v.cpu() if torch.is_tensor(v) else v for k, v in batch.items()}
            yield batch


def instrument(loader, probe: StepProbe):
    """`loader` with its batches seen by `probe`, still an instance of its own class (the trainer
    hands a ClipLoader's batches over differently from other loaders')."""
    base = type(loader)
    loader.__class__ = type(f"Probed{base.__name__}", (base,), {"__iter__": lambda self: probe.wrap(base.__iter__(self))})
    return loader


def steady(probe: StepProbe, skip: int) -> dict:
    """Figures over the steps after the first `skip` (at least one step is kept). The last step,
    whose span would include the final checkpoint, has no next batch and is left out."""
    n = len(probe.asked) - 1
    if n < 1:
        raise RuntimeError(f"only {len(probe.asked)} batches were taken; nothing to time")
    steps = range(min(skip, n - 1), n)
    span = probe.asked[steps[-1] + 1] - probe.asked[steps[0]]
    wait = sum(probe.got[i] - probe.asked[i] for i in steps)
    return {"steps": len(steps), "step_s": span / len(steps), "clips_per_s": sum(probe.clips[i] for i in steps) / span,
            "data_wait_fraction": wait / span, "trainer_step_s": (span - wait) / len(steps),
            "clips_per_step": probe.clips[steps[0]]}


def is_sync(w) -> bool:
    return SYNC_WARNING in str(w.message)


def _median(values: list):
    return statistics.median(values) if values else None


def step_syncs(log: list, marks: list[int], log_every: int, skip: int, first_step: int = 1) -> dict:
    """Syncs of each step (batch i is step first_step + i), their medians over the steps after
    `skip` apart for logging steps (step % log_every == 0), and the sites ("file:line") of the
    non-logging steps' syncs per step, most frequent first."""
    counts = [sum(is_sync(w) for w in log[a:b]) for a, b in zip(marks, marks[1:])]
    kept = [i for i in range(skip, len(counts))]
    plain = [i for i in kept if (first_step + i) % log_every]
    logging = [i for i in kept if not (first_step + i) % log_every]
    sites = Counter(_site(w) for i in plain for w in log[marks[i]:marks[i + 1]] if is_sync(w))
    return {"syncs_per_step": _median([counts[i] for i in plain]),
            "syncs_per_logging_step": _median([counts[i] for i in logging]),
            "syncs_max_plain_step": max((counts[i] for i in plain), default=None),
            "sync_sites_per_plain_step": {k: v / len(plain) for k, v in sites.most_common(8)},
            "syncs_by_step": counts}


def _site(w) -> str:
    path = Path(w.filename)
    try:
        path = path.resolve().relative_to(ROOT)
    except ValueError:
        pass
    return f"{path}:{w.lineno}"
