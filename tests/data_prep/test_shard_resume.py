"""Output bytes do not depend on --workers, and a killed run resumes to exactly the uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_prep.process import FAULT_ENV
from data_prep.shard_run import KILL_ENV
from data_prep.writer import journal_name
from pipeline.cli import main
from pipeline.data.shard_format import read_manifest
from pipeline.testing.sharding import kinetics_args, kinetics_inputs, same_dataset, shard_bytes

ROOT = Path(__file__).resolve().parents[2]
JOURNAL_NAME = journal_name("")


@pytest.fixture(scope="module")
def kinetics(tmp_path_factory):
    return kinetics_inputs(tmp_path_factory.mktemp("kinetics"))


@pytest.fixture(scope="module")
def reference(kinetics, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    assert main(kinetics_args(kinetics, out, workers=1)) == 0
    return out


def test_one_and_two_workers_write_identical_shards(kinetics, reference, tmp_path):
    assert main(kinetics_args(kinetics, tmp_path / "out", workers=2)) == 0
    same_dataset(reference, tmp_path / "out")
    manifest = read_manifest(reference)
    assert manifest.totals["samples"] == 30 and manifest.quarantined == 2  # 10 videos x 3 segments
    # train: 8 inputs in 4 shards; val: inputs 2, 5 (missing), 8, 11 in 2 shards
    assert len(manifest.shards_for("train")) == 4 and len(manifest.shards_for("val")) == 2
    assert [s.samples for s in manifest.shards_for("val")] == [3, 6]


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_same_bytes(kinetics, reference, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, KILL_ENV: "3", "PYTHONPATH": str(ROOT)}
    killed = subprocess.run([sys.executable, "-m", "pipeline.cli", *kinetics_args(kinetics, out, workers=2)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    assert len(list(out.glob("*.tar"))) == 3 and not (out / "manifest.json").exists()
    journal = [json.loads(line) for line in (out / JOURNAL_NAME).read_text().splitlines()]
    # the plan's first three shards (ordered by first input), the missing video's quarantine before its shard
    assert [r.get("name", r.get("key")) for r in journal if r["event"] != "start"] == [
        "train-000000.tar", "y05_000000_000001", "val-000000.tar", "train-000001.tar"]
    (out / "train-000000.tar").write_bytes(b"x" + (out / "train-000000.tar").read_bytes()[1:])  # damaged meanwhile
    for name in (JOURNAL_NAME, "quarantine.jsonl"):  # lines torn by a crash mid-write
        with open(out / name, "a") as f:
            f.write('{"event": "do')
    (out / "train-000002.tar.tmp-4242").write_bytes(b"half a shard")  # another process's partial shard
    assert main(kinetics_args(kinetics, out, workers=2)) == 0
    same_dataset(reference, out)
    assert not list(out.glob("*.tmp*"))


@pytest.mark.slow
def test_ctrl_c_during_a_hang_stops_promptly_and_resumes(kinetics, reference, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, FAULT_ENV: "hang=y09", "PYTHONPATH": str(ROOT)}
    run = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *kinetics_args(kinetics, out, workers=2)],
                           cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           # Ctrl-C-able even where this test inherited SIGINT ignored (a shell's
                           # background job)
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while b'"done"' not in ((out / JOURNAL_NAME).read_bytes() if (out / JOURNAL_NAME).exists() else b""):
        assert time.monotonic() < deadline and run.poll() is None, "no shard finished before the hang"
        time.sleep(0.05)
    time.sleep(1.0)  # the unhung part of this run takes ~0.4 s: it must be stuck on y09 by now
    assert run.poll() is None and not (out / "manifest.json").exists(), "the hang fault did not hold the run"
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=30)
    assert run.returncode == 130 and "interrupted" in err, err
    assert not list(out.glob("*.tmp*")) and not (out / "manifest.json").exists()
    assert main(kinetics_args(kinetics, out, workers=1)) == 0
    same_dataset(reference, out)


def test_rerun_of_finished_run_changes_nothing_and_other_commands_are_refused(kinetics, reference, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(kinetics_args(kinetics, out, workers=1)) == 0
    before = shard_bytes(out)
    assert main(kinetics_args(kinetics, out, workers=2)) == 0
    assert shard_bytes(out) == before
    assert "12 already done by an earlier run" in capsys.readouterr().out
    assert main(kinetics_args(kinetics, out, workers=1) + ["--gop", "4"]) == 2
    assert "holds a run of a different command" in capsys.readouterr().err
    for leftover in ("manifest.json.tmp-4242", "quarantine.jsonl.tmp-4242"):  # atomic_write's, after a crash
        (out / leftover).write_text("{")
    assert main(kinetics_args(kinetics, out, workers=1) + ["--gop", "4", "--overwrite"]) == 0
    assert shard_bytes(out) != before
    assert not list(out.glob("*.tmp-*"))
