"""Training under fire, through `vssl pretrain`: killed at random steps, killed while writing a
checkpoint, out of disk while writing one, a non-finite loss.

    setup = TrainSetup.make(tmp_path)          # tiny shards, recipe, and the uninterrupted loss trace
    report = kill_and_resume(setup, seeds=(0, 1))
    report = disk_full_real(setup) | disk_full_injected(setup) | nonfinite_loss(setup)

Each resumed run must log the very losses of the uninterrupted one (bit-identical on CPU); a
crash or a full disk must leave the previous checkpoint in charge; a failure must be one line.
A lost peer in a two-process job: pipeline/testing/faults/distributed.py.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import time
from contextlib import redirect_stderr
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import torch

from pipeline.cli import main
from pipeline.train import checkpoint as ck
from pipeline.train import pretrain_cli
from pipeline.train.trainer import FAULT_CRASH_IN_SAVE
from pipeline.testing.faults.tally import Report, one_line_error
from pipeline.testing.tiny_train import ROOT, env, losses, nan_losses, pretrain_cmd, tiny_recipe, tiny_shards

STEPS = 8  # checkpoints every 2 steps (the tiny recipe's)
RUN_LIMIT_S = 120
ERROR = "vssl pretrain: error:"


@dataclass
class TrainSetup:
    tmp: Path
    recipe: Path
    reference: list[float]  # the loss trace of an uninterrupted run

    @classmethod
    def make(cls, tmp: Path) -> "TrainSetup":
        recipe = tiny_recipe(tmp / "r.yaml", tiny_shards(tmp / "shards"), tmp / "unused", max_steps=STEPS)
        done = subprocess.run(pretrain_cmd(recipe, f"train.output_dir={tmp / 'ref'}"), cwd=ROOT, env=env(),
                              capture_output=True, text=True, timeout=RUN_LIMIT_S)
        if done.returncode != 0:
            raise RuntimeError(f"the reference run failed: {done.stderr[-2000:]}")
        return cls(tmp, recipe, losses(tmp / "ref"))

    def cmd(self, out: Path, *overrides: str) -> list[str]:
        return pretrain_cmd(self.recipe, f"train.output_dir={out}", *overrides)


def _steps_logged(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _kill_at(setup: TrainSetup, out: Path, step: int, report: Report) -> None:
    """Start a run and SIGKILL it once it has logged `step` steps."""
    proc = subprocess.Popen(setup.cmd(out), cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + RUN_LIMIT_S
    while proc.poll() is None and _steps_logged(out) < step and time.monotonic() < deadline:
        time.sleep(0.02)
    if time.monotonic() >= deadline:
        report.hangs += 1
    proc.kill()
    proc.wait()


def kill_and_resume(setup: TrainSetup, seeds: tuple[int, ...] = (0, 1)) -> Report:
    """One output folder taken through a crash mid-checkpoint-write, then a SIGKILL at a step drawn
    from each seed, each followed by a resume; the finished run must match the reference."""
    report = Report("kill and resume")
    out = setup.tmp / "killed"
    crashed = report.bounded("crash while writing checkpoint 4", setup.cmd(out), RUN_LIMIT_S, ROOT,
                             env(**{FAULT_CRASH_IN_SAVE: "4"}))
    latest = ck.latest_checkpoint(out / "checkpoints")
    report.check("crash while writing checkpoint 4", crashed.returncode != 0 and latest is not None
                 and latest.name == "step-000002", f"exit {crashed.returncode}, latest checkpoint {latest}")
    report.check("crash while writing checkpoint 4", (out / "checkpoints" / "step-000004.tmp").is_dir(),
                 "the crash left no half-written step-000004.tmp: it did not strike mid-write")
    for seed in seeds:
        resumed = latest and int(latest.name.split("-")[1])
        step = random.Random(seed).randint(resumed + 1, STEPS - 1)
        _kill_at(setup, out, step, report)
        latest = ck.latest_checkpoint(out / "checkpoints")
        report.check(f"SIGKILL at step {step} (seed {seed})", latest is not None and read_ok(latest),
                     f"no usable checkpoint after the kill ({latest})")
    report.inputs_tried = len(seeds) + 2
    final = report.bounded(None, setup.cmd(out), RUN_LIMIT_S, ROOT, env())
    report.check(None, final.returncode == 0, f"the last resume failed: {final.stderr[-1500:]}")
    trace = losses(out) if (out / "metrics.jsonl").is_file() else []
    report.check(None, trace == setup.reference, f"losses after resumes {trace} != uninterrupted {setup.reference}")
    run_info = json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else {}
    report.check(None, latest is not None and run_info.get("resumed_from") == int(latest.name.split("-")[1]),
                 f"run.json says resumed_from {run_info.get('resumed_from')}, the last checkpoint was {latest}")
    report.check(None, not list((out / "checkpoints").glob("*.tmp")), "a partial checkpoint folder was left")
    return report


def read_ok(folder: Path) -> bool:
    """A complete checkpoint whose weights load and are finite."""
    if ck.read_metadata(folder) is None:
        return False
    weights = ck.load_model_state(folder)
    ck.load_optimizer_state(folder)
    return all(bool(torch.isfinite(v).all()) for v in weights.values())


def _check_failed_save(report: Report, fault: str, out: Path, code: int, stderr: str, needle: str) -> None:
    line = one_line_error(stderr, ERROR)
    report.check(fault, code == 1, f"exit code {code}")
    report.check(fault, line is not None and needle in line, f"not one clear line: {stderr[-1500:]}")
    latest = ck.latest_checkpoint(out / "checkpoints")
    report.check(fault, latest is not None and latest.name == "step-000002" and read_ok(latest),
                 f"previous checkpoint not intact: {latest}")
    report.check(fault, not list((out / "checkpoints").glob("*.tmp")), "the partial checkpoint was left behind")


def can_mount_tmpfs() -> bool:
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True) if shutil.which("unshare") else None
    return probe is not None and probe.returncode == 0


def disk_full_real(setup: TrainSetup) -> Report:
    """The run writes into a 1.1 MB tmpfs (its own mount namespace): checkpoint 2 fits, checkpoint 4
    (~0.7 MB more) does not. What the run left is copied out before the namespace goes."""
    report = Report("disk full (tmpfs)")
    report.inputs_tried = 1
    disk, kept = setup.tmp / "small_disk", setup.tmp / "small_disk_copy"
    disk.mkdir()
    script = (f'mount -t tmpfs -o size=1100k tmpfs "{disk}" && "$@"; code=$?; mkdir -p "{kept}"; '
              f'cp -a "{disk}/." "{kept}/"; exit $code')
    cmd = ["unshare", "-m", "sh", "-c", script, "sh", *setup.cmd(disk, "train.image_every=1000")]
    done = report.bounded("ENOSPC while writing checkpoint 4", cmd, RUN_LIMIT_S, ROOT, env())
    _check_failed_save(report, "ENOSPC while writing checkpoint 4", kept, done.returncode, done.stderr,
                       "no space left on device")
    return report


def disk_full_injected(setup: TrainSetup) -> Report:
    """The same guarantee in-process, where mounting is not allowed: the optimizer write of
    checkpoint 4 raises ENOSPC (as torch.save's would, had the disk filled up)."""
    report = Report("disk full (injected)")
    report.inputs_tried = 1
    out = setup.tmp / "enospc"
    real_write = ck.write_optimizer

    def write_optimizer(tmp: Path, state: dict) -> None:
        if tmp.name == "step-000004.tmp":
            (tmp / "optimizer.pt").write_bytes(b"\0" * 4096)
            raise OSError(28, "No space left on device")
        real_write(tmp, state)

    ck.write_optimizer = write_optimizer
    stderr = StringIO()
    try:
        with redirect_stderr(stderr):
            code = main(["pretrain", str(setup.recipe), "--set", f"train.output_dir={out}"])
    finally:
        ck.write_optimizer = real_write
    _check_failed_save(report, "ENOSPC while writing checkpoint 4", out, code, stderr.getvalue(),
                       "no space left on device")
    return report


def nonfinite_loss(setup: TrainSetup) -> Report:
    """Step 3's loss is NaN three times running (train.max_nonfinite_retries=2): the run stops with
    one line, and no checkpoint after step 2 exists, let alone a poisoned one."""
    report = Report("non-finite loss")
    report.inputs_tried = 1
    out = setup.tmp / "nan"
    stderr = StringIO()
    real_build = pretrain_cli.build_objective
    pretrain_cli.build_objective = nan_losses(real_build, [4, 5, 6])  # after step 3, three times
    try:
        with redirect_stderr(stderr):
            code = main(["pretrain", str(setup.recipe), "--set", f"train.output_dir={out}",
                         "--set", "train.max_nonfinite_retries=2"])
    finally:
        pretrain_cli.build_objective = real_build
    fault = "NaN loss at step 3, three times"
    line = one_line_error(stderr.getvalue(), ERROR)
    report.check(fault, code == 1 and line is not None and "step 3: loss or gradient non-finite 3 times" in line,
                 f"exit {code}: {stderr.getvalue()[-1500:]}")
    names = [p.name for p in ck.complete_checkpoints(out / "checkpoints")]
    report.check(fault, names == ["step-000002"] and read_ok(out / "checkpoints" / names[0]),
                 f"checkpoints after the NaN: {names}")
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    report.check(fault, [r["step"] for r in records] == [1, 2, 3], "steps logged past the failure")
    return report
