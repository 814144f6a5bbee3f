"""`python -m benchmarks gpu` without a GPU: the CPU rehearsal runs every phase it can and reports
every GPU figure as null; the arithmetic, the step probe and the sync counting it relies on when a
GPU is lent, and the early stop that keeps a slow run inside its time bound."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from benchmarks import gpu
from benchmarks._steps import SYNC_WARNING, StepProbe, instrument, steady, step_syncs
from pipeline.train import checkpoint as ck

ROOT = Path(__file__).resolve().parents[2]
DESIGN_KEYS = {"mfu_bf16_vit_b", "pretrain_mfu", "pretrain_clips_per_s", "data_wait_fraction", "peak_mem_gb",
               "syncs_per_step", "compile_speedup", "deepspeed_ok"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the benchmark measures it (minutes)")
def test_cpu_quick_run_prints_null_gpu_figures_and_writes_its_report(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", VSSL_BENCH_OUT=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "gpu", "--quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["benchmark"] == "gpu" and last["device"].startswith("cpu") and last["quick"] is True
    assert DESIGN_KEYS <= set(last["metrics"]) and all(v is None for v in last["metrics"].values())
    assert set(last["goals"]) == set(gpu.GOALS)
    assert "goal syncs_per_step <= 2: not measured" in proc.stdout
    report = json.loads((tmp_path / "gpu-quick.json").read_text())
    status = {name: phase["status"] for name, phase in report["phases"].items()}
    assert status == {**dict.fromkeys(["environment", "data", "model", "decode", "pretrain", "resume", "syncs"], "ok"),
                      "deepspeed": "skipped (left out on CPU with --quick)",
                      "compile": "skipped (left out on CPU with --quick)"}, report["phases"]
    rehearsal = report["cpu_rehearsal"]  # the CPU's own figures: kept apart from the metrics
    assert rehearsal["pretrain_clips_per_s"] > 0 and 0 <= rehearsal["data_wait_fraction"] < 1
    assert rehearsal["resume_step_time_ratio"] > 0 and rehearsal["syncs_per_step"] == 0
    assert report["metrics"] == last["metrics"] and report["environment"]["cpus"] == os.cpu_count()


def test_mfu_is_flops_per_second_over_the_peak():
    vit_b = 3 * 360.7e9 * 32  # a training step of 32 clips at 360.7 GFLOPs forward each
    assert gpu.mfu(vit_b, 0.08, 989e12) == pytest.approx(vit_b / 0.08 / 989e12)
    assert gpu.mfu(vit_b, 0.08, None) is None and gpu.mfu(None, 0.08, 989e12) is None


def test_goal_status_and_error_line():
    assert gpu.goal_status(0.5, (">=", 0.45)) == "met" and gpu.goal_status(0.4, (">=", 0.45)) == "missed"
    assert gpu.goal_status(0.05, ("<", 0.05)) == "missed" and gpu.goal_status(2, ("<=", 2.0)) == "met"
    assert gpu.goal_status(None, ("<=", 2.0)) == "not measured"
    log = "starting\nTraceback (most recent call last):\n  File x\nValueError: bad config\nexiting\n"
    assert gpu.last_error_line(log) == "ValueError: bad config"
    assert gpu.last_error_line("one\ntwo\n") == "two" and gpu.last_error_line("") == ""


def test_workers_fit_in_shared_memory():
    batch = 462_422_016  # 192 clips of 3 x 16 x 224 x 224 uint8
    assert gpu.fit_workers(14, 4, batch, None) == 14
    assert gpu.fit_workers(14, 4, batch, 64 * 10**9) == 14
    assert gpu.fit_workers(14, 4, batch, 10 * 10**9) == 4  # 9 GB usable / 1.85 GB per worker
    assert gpu.fit_workers(14, 4, batch, 64 * 2**20) == 0  # docker's default /dev/shm


class Batches:
    """A loader stand-in: `steps` batches of 3 clips; fetching batch i emits syncs[i] sync warnings
    (and, with noise, one other warning)."""

    def __init__(self, steps: int, syncs: list[int], noise: bool = False):
        self.steps, self.syncs, self.noise = steps, syncs, noise

    def __iter__(self):
        for i in range(self.steps):
            for _ in range(self.syncs[i]):
                warnings.warn(SYNC_WARNING)
            if self.noise:
                warnings.warn("something else")
            yield {"video": torch.zeros(3, 1), "mask": torch.zeros(3, 2, dtype=torch.bool)}

    def state_dict(self):
        return {"at": self.steps}


def test_probe_times_steps_and_keeps_the_loader_class():
    loader = instrument(Batches(4, [0] * 4), probe := StepProbe(keep=True))
    assert isinstance(loader, Batches) and loader.state_dict() == {"at": 4}
    for _ in loader:
        time.sleep(0.01)
    assert len(probe.asked) == len(probe.got) == 4 and probe.clips == [3] * 4
    assert probe.first["video"].shape == (1, 1) and probe.kept["video"].shape == (3, 1)
    fig = steady(probe, skip=1)  # steps 1 and 2; step 3 has no next batch
    assert fig["steps"] == 2 and fig["clips_per_step"] == 3
    assert fig["step_s"] >= 0.01 and fig["clips_per_s"] == pytest.approx(3 / fig["step_s"])
    assert 0 <= fig["data_wait_fraction"] < 0.5
    assert fig["trainer_step_s"] == pytest.approx(fig["step_s"] * (1 - fig["data_wait_fraction"]))


def test_probe_arithmetic_on_a_known_timeline():
    probe = StepProbe()
    probe.asked, probe.got, probe.clips = [0.0, 1.0, 3.0, 4.0], [0.5, 1.5, 3.0, 4.5], [8] * 4
    fig = steady(probe, skip=1)  # steps 1 (1.0 -> 3.0, wait 0.5) and 2 (3.0 -> 4.0, wait 0)
    assert fig == {"steps": 2, "step_s": 1.5, "clips_per_s": 16 / 3.0, "data_wait_fraction": 0.5 / 3.0,
                   "trainer_step_s": 1.25, "clips_per_step": 8}
    assert steady(probe, skip=10)["steps"] == 1  # never fewer than one step


def test_syncs_are_counted_per_step_with_logging_steps_apart():
    # fetching batch i ends step i (batch i - 1's), so those syncs count there; batch 0's count nowhere
    per_fetch = [7, 5, 1, 4, 1, 1, 4, 1, 1]
    with warnings.catch_warnings(record=True) as log:
        warnings.simplefilter("always")
        probe = StepProbe(log)
        for _ in instrument(Batches(9, per_fetch, noise=True), probe):
            pass
    fig = step_syncs(log, probe.marks, log_every=3, skip=1)
    assert fig["syncs_by_step"] == per_fetch[1:]  # steps 1..8 (step 9, batch 8's, never ends)
    # steps 2..8 after the warm-up step: logging steps 3 and 6 synced 4 times, the others once
    assert fig["syncs_per_step"] == 1 and fig["syncs_per_logging_step"] == 4 and fig["syncs_max_plain_step"] == 1
    [(site, per_step)] = fig["sync_sites_per_plain_step"].items()
    assert site.startswith("tests/benchmarks/test_benchmark_gpu.py:") and per_step == 1


def test_time_limit_interrupts_a_phase():
    with pytest.raises(gpu.PhaseTimeout):
        with gpu.time_limit(0.2):
            time.sleep(5)
    with gpu.time_limit(5):
        pass  # and leaves no alarm behind
    time.sleep(0.1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="sized for the CPU rehearsal")
def test_a_run_near_its_bound_checkpoints_early_and_resumes_from_there(tmp_path):
    state = gpu.State(gpu.make_plan(gpu=False, quick=True), torch.device("cpu"), tmp_path)
    state.phase_end = time.monotonic() + 1e6
    gpu.phase_data(state)
    state.phase_end = time.monotonic() + gpu.STOP_MARGIN_S + 2.0  # asked to stop 2 s from now
    _, result, flops = gpu.train_run(state, tmp_path / "run", 100_000, 5, StepProbe())
    assert 1 <= result.step < 100_000 and flops > 0
    assert ck.latest_checkpoint(tmp_path / "run" / "checkpoints").name == f"step-{result.step:06d}"
    assert "VSSL_STOP_FILE" not in os.environ and not (tmp_path / "stop").exists()
    state.phase_end = time.monotonic() + 1e6
    _, resumed, _ = gpu.train_run(state, tmp_path / "run", result.step + 2, 5, StepProbe())
    assert resumed.resumed_from == result.step and resumed.step == result.step + 2
