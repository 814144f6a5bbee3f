"""Benchmark the reliability guarantees: run the fault-injection scenarios and count.

    python -m benchmarks faults --quick    # from the repository root: about a minute on 2 cores
    python -m benchmarks faults            # every scenario, more kill seeds, two-process jobs (1-3 min)

The scenarios are the test suite's own (pipeline/testing/faults/, run from a checkout): broken
inputs through `vssl shard`, damaged shards through the loader and `vssl pretrain`, hostile
shards / manifests / checkpoints / recipes, bad configuration, `vssl pretrain` killed at seeded
random steps and mid-checkpoint, a full disk, a NaN loss and, in the full run, a real tmpfs that
fills up and a two-process job that loses a peer (SIGKILL and SIGSTOP). --quick drops those
three and uses one kill seed instead of three.

Metrics (sums over the scenarios; "a fault" is one injected failure with its own guarantee):
    inputs_tried      inputs, samples, runs and configurations fed in
    faults_injected   faults injected
    samples_lost      good samples that did not come out the other end        goal 0
    hangs             runs that overran their time bound (and were killed)     goal 0
    survived          faults whose every guarantee held                        goal = faults_injected
plus the failures, one line each, when a guarantee broke.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from pathlib import Path
from typing import Callable

from pipeline.train import checkpoint as ck
from pipeline.testing.faults import config_errors, distributed, loading, prep, security, training
from pipeline.testing.faults.tally import Report


def _scenarios(tmp: Path, quick: bool) -> list[tuple[str, Callable[[], Report]]]:
    setup: list[training.TrainSetup] = []

    def train_setup() -> training.TrainSetup:
        if not setup:
            setup.append(training.TrainSetup.make(tmp / "train"))
        return setup[0]

    scenarios = [
        ("data prep", lambda: prep.shard_corpus(tmp / "prep")),
        ("loading", lambda: loading.train_on_damaged_shards(tmp / "loading")),
        ("hostile shards", lambda: security.hostile_shards(tmp / "hostile")),
        ("hostile files", lambda: security.hostile_files(
            tmp / "files", ck.latest_checkpoint(train_setup().tmp / "ref" / "checkpoints"), train_setup().recipe)),
        ("bad configuration", lambda: config_errors.bad_configs(train_setup())),
        ("kill and resume", lambda: training.kill_and_resume(train_setup(), seeds=(0,) if quick else (0, 1, 2))),
        ("disk full (injected)", lambda: training.disk_full_injected(train_setup())),
        ("non-finite loss", lambda: training.nonfinite_loss(train_setup())),
    ]
    if not quick:
        if training.can_mount_tmpfs():
            scenarios.append(("disk full (tmpfs)", lambda: training.disk_full_real(train_setup())))
        scenarios += [(f"lost peer ({how})", lambda how=how: distributed.lost_peer(train_setup(), how))
                      for how in ("kill", "stop")]
    return scenarios


def run(quick: bool) -> dict:
    totals = {"inputs_tried": 0, "faults_injected": 0, "samples_lost": 0, "hangs": 0, "survived": 0}
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="vssl-faults-") as tmp:
        for name, scenario in _scenarios(Path(tmp), quick):
            started = time.perf_counter()
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # the verbs' own summaries
                    report = scenario()
            except Exception as e:  # a scenario that crashes is a broken guarantee, not a broken benchmark
                report = Report(name)
                report.check(None, False, f"crashed: {e.__class__.__name__}: {' '.join(str(e).split())[:300]}")
            for key, value in report.counts().items():
                totals[key] += value
            failures += report.failures
            print(f"faults: {name}: {report.counts()} in {time.perf_counter() - started:.1f}s"
                  + ("" if report.ok else f"; {len(report.failures)} FAILED"), flush=True)
    for line in failures:
        print(f"faults: FAILED {line}")
    return {"metrics": {**totals, "failures": failures},
            "goals": {"samples_lost": "== 0", "hangs": "== 0", "survived": f"== {totals['faults_injected']}"}}
