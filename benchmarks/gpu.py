"""One lent GPU, one command: what the pretraining pipeline gets out of it, every figure measured.

    VSSL_BENCH_OUT=$OUT python -m benchmarks gpu [--quick]

Phases, in order. Each runs under its own time bound and within what is left of BUDGET_S (a
phase that would start with less than its floor left is skipped); one that fails records its
error line and the next runs. A training run still going STOP_MARGIN_S before its phase's bound
is asked to stop (VSSL_STOP_FILE: it checkpoints and exits at its next step), so a slow machine
shortens runs instead of losing them; figures cover the steps that ran. The report
($VSSL_BENCH_OUT/gpu.json, default runs/benchmarks/) is rewritten after every phase.

1 environment  torch / CUDA build, device, driver, CPUs, /dev/shm, bf16 peak (monitor.peak_flops)
2 data         `vssl synth` + `vssl shard`: 256 videos (quick 64) of 64 frames at 256 px, all cores
3 model        ViT-B (vit_base_joint, 16x224x224, tubelet 2x16x16) bf16 autocast forward+backward
               on 32 clips (quick 16), best of 10 (quick 3) repeats; FLOPs 3 x the model's
               analytic forward count -> mfu_bf16_vit_b
  decode       (after model) GPU vs CPU video decoding through the loader: benchmarks/loader.py's
               gpu_decode_vs_cpu at its --quick size (torchcodec NVDEC in the loader's process vs
               torchcodec in one worker per core, same shards) -> gpu_decode_vs_cpu
4 pretrain     120 steps (quick 40) of recipes/pretrain/videomae_vit_b_k400.yaml (its batch; data
               workers at most cores - 2 and what /dev/shm holds) through the real trainer,
               logging every 5 steps. Timed at the loader over the steps after the first 20
               (quick 15): clips/s, data-wait fraction (time blocked in next(loader) / step time),
               the trainer-side step time (the rest), MFU from the objective's analytic FLOPs,
               peak memory (torch.cuda.max_memory_allocated); loss first -> last (metrics.jsonl)
5 resume       the same run for 20 more steps (quick 10): it resumes from phase 4's last
               checkpoint; clips/s and trainer-side step time after 5 steps vs phase 4's (a
               wrongly restored optimizer shows as slower steps; when the run is data-bound only
               the trainer-side ratio says anything)
6 syncs        25 steps (quick 15), log_every 10, under torch.cuda.set_sync_debug_mode("warn"): the
               sync warnings recorded between two batch hand-overs are one step's host-device
               syncs; median over the non-logging steps after 5 -> syncs_per_step, plus the sites
7 deepspeed    10 steps (quick 5) of the same recipe under `accelerate launch --use_deepspeed
               --deepspeed_config_file recipes/deepspeed/zero2.json --num_processes 1`, in a
               subprocess killed at the phase's bound -> deepspeed_ok (and the last error line)
8 compile      phase 4's first batch held on the GPU: 20 steps eager, 40 (quick 25) with
               train.compile=true; step time after 5 / 15 steps (compilation happens in the first)
               -> compile_speedup (eager / compiled), model_only_clips_per_s

Goals (printed met / missed / not measured): mfu_bf16_vit_b >= 0.45, pretrain_mfu >= 0.35,
data_wait_fraction < 0.05, syncs_per_step <= 2.
Without a CUDA GPU the same phases run at a tiny size (64 px clips, a one-block tiny ViT; --quick
leaves out deepspeed and compile) to check the code path; every GPU figure is then null and the
CPU's figures go to the report's `cpu_rehearsal`, never to the metrics.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks import _results
from benchmarks._steps import StepProbe, instrument, is_sync, steady, step_syncs
from benchmarks.common import synthetic_shards
from benchmarks.model import best_times
from benchmarks.train import MemoryLoader
from pipeline.config import PretrainConfig, load_config
from pipeline.recipe_files import recipe_path
from pipeline.data.loader import shm_free_bytes
from pipeline.durable import atomic_write
from pipeline.train import checkpoint as ck
from pipeline.train.monitor import package_versions, peak_flops, train_flops_per_clip
from pipeline.train.build import build_objective, build_train_loader
from pipeline.train.trainer import STOP_FILE_ENV, train

ROOT = Path(__file__).resolve().parent.parent
RECIPE = recipe_path("pretrain/videomae_vit_b_k400.yaml")
OUT_ENV = "VSSL_BENCH_OUT"
BUDGET_S = 450.0  # the phases together; start-up and clean-up keep the command under 8 minutes
STOP_MARGIN_S = 25.0  # a run is asked to stop (checkpoint, exit) this long before its phase's bound
GOALS = {"mfu_bf16_vit_b": (">=", 0.45), "pretrain_mfu": (">=", 0.35), "data_wait_fraction": ("<", 0.05),
         "syncs_per_step": ("<=", 2.0), "gpu_decode_vs_cpu": (">=", 3.0)}
METRICS = ("mfu_bf16_vit_b", "pretrain_mfu", "pretrain_clips_per_s", "data_wait_fraction", "peak_mem_gb",
           "syncs_per_step", "compile_speedup", "deepspeed_ok", "resume_clips_per_s_ratio",
           "resume_step_time_ratio", "pretrain_mfu_trainer_side", "syncs_per_logging_step",
           "model_only_clips_per_s", "pretrain_vs_model_only", "deepspeed_clips_per_s", "gpu_decode_vs_cpu",
           "gpu_decode_clips_per_s", "cpu_decode_clips_per_s", "nvdec_cpu_fallback")
TINY = ("model.name=vit_tiny_joint", "model.overrides.depth=1", "objective.decoder_dim=32",
        "objective.decoder_depth=1", "objective.decoder_heads=2", "data.num_frames=8", "data.frame_stride=2",
        "data.crop_size=64", "data.batch_size=2", "data.num_workers=1", 'train.mixed_precision="no"')


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: steps, warm-up steps left out of each figure, and per-phase time bounds."""

    per_class: int = 32  # synthetic videos per class (8 classes)
    size: int = 256
    frames: int = 64
    model: tuple = ("vit_base_joint", 32, 10, (16, 224, 224))  # name, clips, repeats, (T, H, W)
    steps: tuple = (120, 20)  # pretrain: steps, warm-up
    resume: tuple = (20, 5)
    syncs: tuple = (25, 5, 10)  # steps, warm-up, log_every
    deepspeed_steps: int = 10
    eager: tuple = (20, 5)
    compiled: tuple = (40, 15)
    log_every: int = 5
    overrides: tuple = ()
    skip: tuple = ()  # phases left out
    bounds: dict = field(default_factory=lambda: {  # phase: (most seconds, least seconds left to start)
        "environment": (30, 0), "data": (120, 20), "model": (90, 20), "decode": (75, 30), "pretrain": (180, 60),
        "resume": (75, 40),
        "syncs": (75, 40), "deepspeed": (120, 60), "compile": (180, 60)})


def make_plan(gpu: bool, quick: bool) -> Plan:
    if gpu:
        return Plan(per_class=8, model=("vit_base_joint", 16, 3, (16, 224, 224)), steps=(40, 15), resume=(10, 5),
                    syncs=(15, 5, 10), deepspeed_steps=5, eager=(10, 3), compiled=(25, 15)) if quick else Plan()
    return Plan(per_class=2, size=64, frames=32, model=("vit_tiny_joint", 2, 1, (8, 32, 32)), steps=(6, 2),
                resume=(3, 1), syncs=(5, 1, 2), deepspeed_steps=2, eager=(3, 1), compiled=(4, 2), log_every=2,
                overrides=TINY, skip=("deepspeed", "compile") if quick else ())


def mfu(flops: float | None, seconds: float | None, peak: float | None) -> float | None:
    """Model FLOP utilisation: FLOPs done in `seconds` over the device's peak FLOP/s."""
    return flops / seconds / peak if flops and seconds and peak else None


def goal_status(value, goal: tuple[str, float]) -> str:
    if value is None:
        return "not measured"
    op, threshold = goal
    return "met" if _results.OPS[op](value, threshold) else "missed"


def fit_workers(workers: int, slots: int, batch_bytes: int, free: int | None) -> int:
    """Loader workers whose batch rings (slots batches each) fit in 90% of /dev/shm's free bytes."""
    if free is None:
        return workers
    return max(0, min(workers, int(0.9 * free) // (slots * batch_bytes)))


def last_error_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error:" in line or "Exception" in line]
    return (errors or lines or [""])[-1][:300]


class PhaseTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """PhaseTimeout in the main thread after `seconds` (no limit elsewhere)."""
    def expire(signum, frame):
        raise PhaseTimeout(f"timed out after {seconds:.0f} s")
    try:
        previous = signal.signal(signal.SIGALRM, expire)
    except ValueError:  # not the main thread
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class State:
    plan: Plan
    device: torch.device
    work: Path
    peak: float | None = None
    data: list[str] = field(default_factory=list)  # recipe overrides naming the shards and loader
    before: dict | None = None  # phase 4's steady figures
    pretrained_to: int = 0  # the step phase 4's run reached
    first_batch: dict | None = None  # phase 4's first batch, on the host
    held: dict | None = None  # the batch the compile phase serves from the device
    phase_end: float = 0.0


@contextlib.contextmanager
def soft_stop(state: State, env: dict = os.environ):
    """A trainer started inside sees STOP_FILE_ENV; the file appears STOP_MARGIN_S before the
    phase's bound, so the run checkpoints and exits at its next step with what it has measured."""
    stop = state.work / "stop"
    stop.unlink(missing_ok=True)
    timer = threading.Timer(max(0.0, state.phase_end - time.monotonic() - STOP_MARGIN_S), stop.touch)
    env[STOP_FILE_ENV] = str(stop)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        env.pop(STOP_FILE_ENV, None)
        stop.unlink(missing_ok=True)


def train_run(state: State, out: Path, steps: int, log_every: int, probe: StepProbe, extra: tuple = (),
              hold_batch: bool = False) -> tuple[PretrainConfig, object, float | None]:
    """The recipe through the trainer in this process -> (config, TrainResult, FLOPs per clip).
    hold_batch: the loader's first batch, on the device, served for every step (no data cost)."""
    if not state.data:
        raise RuntimeError("needs the shards of the data phase")
    sets = [*state.plan.overrides, *state.data, f"train.output_dir={out}", f"train.max_steps={steps}",
            f"train.checkpoint_every={steps}", f"train.image_every={steps}", f"train.log_every={log_every}", *extra]
    cfg = load_config(PretrainConfig, RECIPE, sets)
    built = {}

    def objective(c):
        built["objective"] = build_objective(c)
        return built["objective"]

    def loader(c, rank, world, obj):
        real = build_train_loader(c, rank, world, obj)
        if hold_batch:
            if state.held is None and state.first_batch is not None:
                state.held = {k: v.to(state.device) if torch.is_tensor(v) else v for k, v in state.first_batch.items()}
            if state.held is None:
                real.device = state.device
                state.held = next(iter(real))
            real = MemoryLoader([state.held], steps + 1)
        return instrument(real, probe)

    with soft_stop(state):
        result = train(cfg, objective, loader)
    flops = train_flops_per_clip(built.pop("objective"), probe.first) if probe.first else None
    return cfg, result, flops


def metrics_records(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def phase_environment(state: State) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda_build": torch.version.cuda,
           "cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)), **package_versions()}
    with contextlib.suppress(OSError):
        shm = shutil.disk_usage("/dev/shm")
        env.update(shm_gb=round(shm.total / 1e9, 1), shm_free_gb=round(shm.free / 1e9, 1))
    with contextlib.suppress(ValueError, OSError):
        env["ram_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    if state.device.type == "cuda":
        props = torch.cuda.get_device_properties(state.device)
        env.update(device=props.name, gpu_memory_gb=round(props.total_memory / 1e9, 1),
                   capability=f"{props.major}.{props.minor}", cudnn=torch.backends.cudnn.version(),
                   driver=nvidia_driver(), bf16_peak_tflops=state.peak and state.peak / 1e12)
    print(f"environment: torch {env['torch']} (CUDA build {env['cuda_build']}), {env.get('device', 'no CUDA GPU')}"
          f" ({env.get('gpu_memory_gb', '-')} GB, driver {env.get('driver', '-')}, bf16 peak "
          f"{env.get('bf16_peak_tflops') or 'unknown'} TFLOP/s), {env['cpus_usable']} of {env['cpus']} CPUs, "
          f"/dev/shm {env.get('shm_gb', '-')} GB ({env.get('shm_free_gb', '-')} free), RAM {env.get('ram_gb', '-')} GB",
          flush=True)
    return {"environment": env}


def nvidia_driver() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
        if out:
            return out.splitlines()[0]
    with contextlib.suppress(OSError):
        return Path("/proc/driver/nvidia/version").read_text().splitlines()[0].strip()
    return None


def phase_data(state: State) -> dict:
    cpus = len(os.sched_getaffinity(0))
    t0 = time.perf_counter()
    _, shards = synthetic_shards(state.work / "data", per_class=state.plan.per_class, val_fraction=0.0, max_samples=8,
                                 size=state.plan.size, frames=state.plan.frames, gop=16, workers=min(cpus, 32),
                                 davis=False)
    cfg = load_config(PretrainConfig, RECIPE, list(state.plan.overrides))
    d = cfg.data
    want = min(d.num_workers, max(1, cpus - 2))
    batch_bytes = d.batch_size * d.repeated_samples * 3 * d.num_frames * d.crop_size ** 2
    workers = fit_workers(want, d.prefetch_factor + 2, batch_bytes, shm_free_bytes())
    longest = state.plan.steps[0] + state.plan.resume[0] + 50  # the resumed run's steps, and some
    state.data = [f"data.shards={shards}", f"data.num_workers={workers}",
                  f"data.epoch_samples={d.batch_size * longest}"]  # one epoch spans every run
    note = "" if workers == want else f" (lowered from {want}: /dev/shm holds no more batch rings)"
    tars = sorted(shards.glob("*.tar"))
    print(f"data: {len(tars)} shards ({sum(t.stat().st_size for t in tars) / 1e6:.0f} MB) in "
          f"{time.perf_counter() - t0:.0f} s; loader: {workers} workers{note}, batches of {batch_bytes / 1e6:.0f} MB",
          flush=True)
    return {"data_workers": workers, "batch_mb": round(batch_bytes / 1e6, 1)}


def phase_model(state: State) -> dict:
    from pipeline.models import create_model

    name, clips, repeats, (t, h, w) = state.plan.model
    model = create_model(name, num_frames=t, img_size=h).to(state.device)
    video = torch.randn(clips, 3, t, h, w, device=state.device)
    seconds = best_times({name: (model, video, None)}, repeats, bf16=True)[name]
    flops = 3 * model.flops(t, h, w) * clips
    value = mfu(flops, seconds, state.peak)
    print(f"model: {name} {t}x{h}x{w} x {clips} clips, bf16 forward+backward {seconds * 1e3:.1f} ms = "
          f"{flops / seconds / 1e12:.2f} TFLOP/s" + (f", MFU {value:.3f}" if value else ", MFU: no bf16 peak known"),
          flush=True)
    return {"mfu_bf16_vit_b": value, "model_step_ms": seconds * 1e3, "model_tflops": flops / seconds / 1e12}


def phase_decode(state: State) -> dict:
    if state.device.type != "cuda":
        print("decode: no CUDA device, GPU decoding not measured", flush=True)
        return {}
    from benchmarks.loader import gpu_decode_comparison

    return gpu_decode_comparison(quick=True)["metrics"]


def phase_pretrain(state: State) -> dict:
    steps, warmup = state.plan.steps
    probe = StepProbe(keep=True)
    if state.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _, result, flops = train_run(state, state.work / "pretrain", steps, state.plan.log_every, probe)
    s = state.before = steady(probe, warmup)
    state.pretrained_to, state.first_batch = result.step, probe.kept
    records = metrics_records(state.work / "pretrain")
    late = [r for r in records if r["step"] > warmup]
    fig = {"pretrain_steps": result.step, "pretrain_clips_per_s": s["clips_per_s"], "data_wait_fraction": s["data_wait_fraction"],
           "pretrain_mfu": mfu(flops, s["step_s"] / s["clips_per_step"], state.peak),
           "pretrain_mfu_trainer_side": mfu(flops, s["trainer_step_s"] / s["clips_per_step"], state.peak),
           "pretrain_step_s": s["step_s"], "pretrain_trainer_step_s": s["trainer_step_s"],
           "train_gflops_per_clip": flops and flops / 1e9, "loss_first": records[0].get("loss") if records else None,
           "loss_last": records[-1].get("loss") if records else None,
           "trainer_mfu": statistics.median(r["mfu"] for r in late) if late and "mfu" in late[0] else None,
           "trainer_data_wait": statistics.median(r["data_wait"] for r in late) if late and "data_wait" in late[0] else None}
    if state.device.type == "cuda":
        fig["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
    print(f"pretrain: {result.step} steps of {s['clips_per_step']} clips; steady ({s['steps']} steps): "
          f"{s['clips_per_s']:.1f} clips/s, step {s['step_s']:.3f} s of which data wait {100 * s['data_wait_fraction']:.1f}%"
          f" (trainer side {s['trainer_step_s']:.3f} s); MFU {_fmt(fig['pretrain_mfu'])} (trainer side "
          f"{_fmt(fig['pretrain_mfu_trainer_side'])}); peak memory {_fmt(fig.get('peak_mem_gb'))} GB; loss "
          f"{_fmt(fig['loss_first'])} -> {_fmt(fig['loss_last'])}", flush=True)
    return fig


def phase_resume(state: State) -> dict:
    if state.before is None:
        raise RuntimeError("needs the pretrain phase's run")
    steps, warmup = state.pretrained_to, state.plan.resume[1]
    probe = StepProbe()
    _, result, _ = train_run(state, state.work / "pretrain", steps + state.plan.resume[0], state.plan.log_every, probe)
    if result.resumed_from != steps:
        raise RuntimeError(f"did not resume from step {steps} (resumed_from={result.resumed_from})")
    after, before = steady(probe, warmup), state.before
    fig = {"resume_clips_per_s_ratio": after["clips_per_s"] / before["clips_per_s"],
           "resume_step_time_ratio": before["trainer_step_s"] / after["trainer_step_s"]}
    print(f"resume: from step {steps}, {after['clips_per_s']:.1f} clips/s ({fig['resume_clips_per_s_ratio']:.2f}x "
          f"before), trainer-side step {after['trainer_step_s']:.3f} s ({fig['resume_step_time_ratio']:.2f}x as fast)",
          flush=True)
    return fig


def phase_syncs(state: State) -> dict:
    steps, warmup, log_every = state.plan.syncs
    cuda = state.device.type == "cuda"
    with warnings.catch_warnings(record=True) as log:
        warnings.simplefilter("always")
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            if cuda:  # a known sync must show up, or zero syncs would read as a goal met
                torch.ones(1, device=state.device).item()
                if not any(is_sync(w) for w in log):
                    raise RuntimeError("torch.cuda.set_sync_debug_mode('warn') emitted no warning for .item()")
            probe = StepProbe(log)
            train_run(state, state.work / "syncs", steps, log_every, probe, extra=("train.resume=never",))
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
    fig = step_syncs(log, probe.marks, log_every, warmup)
    print(f"syncs: {_fmt(fig['syncs_per_step'])} per step, {_fmt(fig['syncs_per_logging_step'])} per logging step "
          f"(log_every {log_every}; by step {fig['syncs_by_step']}); per step at {fig['sync_sites_per_plain_step']}",
          flush=True)
    return fig


def phase_deepspeed(state: State) -> dict:
    out, steps = state.work / "deepspeed", state.plan.deepspeed_steps
    if not state.data:
        raise RuntimeError("needs the shards of the data phase")
    sets = [*state.plan.overrides, *state.data, f"train.output_dir={out}", f"train.max_steps={steps}",
            f"train.checkpoint_every={steps}", f"train.log_every={max(1, steps // 2)}", "train.resume=never"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--use_deepspeed", "--deepspeed_config_file",
           str(recipe_path("deepspeed/zero2.json")), "--num_processes", "1", "--num_machines", "1",
           "--main_process_port", str(_free_port()), "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "pipeline.cli", "pretrain", str(RECIPE), *[a for s in sets for a in ("--set", s)]]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    if state.device.type != "cuda":
        env["DS_ACCELERATOR"] = "cpu"
    with soft_stop(state, env):
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            output = proc.communicate(timeout=max(5.0, state.phase_end - time.monotonic() - 5))[0]
        except BaseException:  # the timeout or the phase's own bound: the launcher and its ranks go
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    final = ck.latest_checkpoint(out / "checkpoints")
    ok = proc.returncode == 0 and final is not None and (final / "deepspeed").is_dir()
    records = metrics_records(out)
    fig = {"deepspeed_ok": ok, "deepspeed_clips_per_s": records[-1].get("clips_per_s") if ok and records else None}
    if not ok:
        fig["deepspeed_error"] = last_error_line(output) or f"exit status {proc.returncode}, no final checkpoint"
        print("deepspeed output (last 30 lines):\n" + "\n".join(output.splitlines()[-30:]), flush=True)
    print(f"deepspeed: ZeRO-2, {steps} steps: " + (f"ok to {final.name}, {_fmt(fig['deepspeed_clips_per_s'])} "
          f"clips/s (last record)" if ok else f"FAILED: {fig['deepspeed_error']}"), flush=True)
    return fig


def phase_compile(state: State) -> dict:
    runs = {}
    for name, (steps, warmup), extra in (("eager", state.plan.eager, ()), ("compiled", state.plan.compiled,
                                                                            ("train.compile=true",))):
        probe = StepProbe()
        train_run(state, state.work / name, steps, steps, probe, extra=("train.resume=never", *extra), hold_batch=True)
        runs[name] = steady(probe, warmup)
    eager, compiled = runs["eager"], runs["compiled"]
    fig = {"compile_speedup": eager["step_s"] / compiled["step_s"], "model_only_clips_per_s": eager["clips_per_s"],
           "pretrain_vs_model_only": state.before and state.before["clips_per_s"] / eager["clips_per_s"]}
    print(f"compile: data from memory, step {eager['step_s']:.3f} s eager vs {compiled['step_s']:.3f} s compiled "
          f"({fig['compile_speedup']:.2f}x); model-only {eager['clips_per_s']:.1f} clips/s; streamed pretraining "
          f"ran at {_fmt(fig['pretrain_vs_model_only'])} of that", flush=True)
    return fig


PHASES = {"environment": phase_environment, "data": phase_data, "model": phase_model, "decode": phase_decode,
          "pretrain": phase_pretrain,
          "resume": phase_resume, "syncs": phase_syncs, "deepspeed": phase_deepspeed, "compile": phase_compile}


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write(report: dict) -> Path:
    folder = Path(os.environ.get(OUT_ENV) or ROOT / "runs" / "benchmarks")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ("gpu-quick.json" if report["quick"] else "gpu.json")
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(report, indent=2, default=str)))


def run(quick: bool) -> dict:
    start = time.monotonic()
    gpu = torch.cuda.is_available()
    state = State(make_plan(gpu, quick), torch.device("cuda" if gpu else "cpu"), Path(),
                  peak=peak_flops(torch.cuda.get_device_name(0)) if gpu else None)
    report = {"benchmark": "gpu", "quick": quick, "device": "cuda" if gpu else "cpu", "phases": {}}
    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix="vssl-bench-gpu-") as work:
        state.work = Path(work)
        for name, phase in PHASES.items():
            bound, floor = state.plan.bounds[name]
            left = start + BUDGET_S - time.monotonic()
            if name in state.plan.skip or left < floor:
                why = "left out on CPU with --quick" if name in state.plan.skip else f"{left:.0f} s left"
                report["phases"][name] = {"status": f"skipped ({why})"}
                print(f"== {name}: skipped ({why})", flush=True)
                continue
            print(f"== {name} (at most {min(bound, left):.0f} s)", flush=True)
            t0 = time.monotonic()
            state.phase_end = t0 + min(bound, left)
            entry: dict = {"status": "ok"}
            try:
                with time_limit(min(bound, left)):
                    found = phase(state)
                figures.update(found)
                entry["figures"] = found
            except (Exception, SystemExit) as e:
                entry = {"status": "failed", "error": f"{type(e).__name__}: {last_error_line(str(e))}",
                         "traceback": traceback.format_exc()[-4000:]}
                print(f"{name}: FAILED: {entry['error']}\n{entry['traceback']}", file=sys.stderr, flush=True)
            finally:
                state.held = None
                gc.collect()
                if gpu:
                    torch.cuda.empty_cache()
            entry["seconds"] = round(time.monotonic() - t0, 1)
            report["phases"][name] = entry
            report["environment"] = figures.get("environment")
            _write(report)
    metrics = {k: (_round(figures.get(k)) if gpu else None) for k in METRICS}
    report.update(metrics=metrics, goals={k: {"goal": f"{op} {v:g}", "value": metrics[k],
                                              "status": goal_status(metrics[k], (op, v))} for k, (op, v) in GOALS.items()})
    if not gpu:
        report["cpu_rehearsal"] = {k: v for k, v in figures.items() if k != "environment"}
    for k, g in report["goals"].items():
        print(f"goal {k} {g['goal']}: {g['status']}" + ("" if g["value"] is None else f" ({g['value']})"), flush=True)
    print(f"report: {_write(report)} ({time.monotonic() - start:.0f} s)", flush=True)
    return {"metrics": metrics, "goals": {k: f"{op} {v:g}" for k, (op, v) in GOALS.items()}}


def _round(value):
    return round(value, 4) if isinstance(value, float) else value
