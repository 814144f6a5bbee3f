"""The pretraining loop: Accelerate for devices and processes, exact resume, non-finite guards.

    vssl pretrain recipes/pretrain/quickstart.yaml --set train.max_steps=20
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m pipeline.cli pretrain R.yaml

One optimizer step consumes `train.grad_accum` batches from each rank's loader. Everything that
decides the next step - weights, optimizer moments, step, RNG, loader position - is checkpointed
(pipeline/train/checkpoint.py), so a run killed at any step and resumed logs the same losses as
one never killed (bit-identical on CPU with the same process count).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from pipeline.config import ConfigError, PretrainConfig, to_dict
from pipeline.data.loader import ClipLoader
from pipeline.data.normalize import batch_to_device
from pipeline.host import read_on_host
from pipeline.train import checkpoint as ck
from pipeline.train.engine import make_engine
from pipeline.train.monitor import Monitor, warn
from pipeline.train.online_eval import OnlineEval
from pipeline.train.optim import build_optimizer, cosine_lr, set_lr

FAULT_CRASH_IN_SAVE = "VSSL_FAULT_CRASH_IN_SAVE"  # test hook: die mid-write of this step's checkpoint
DEEPSPEED_TAG = "deepspeed"  # sub-folder of a checkpoint holding DeepSpeed's engine state
STOP_FILE_ENV = "VSSL_STOP_FILE"  # a path: once it exists, checkpoint and exit at the next step
MIN_LOSS_SCALE = 2.0 ** -8  # fp16: overflowing at a smaller loss scale counts as non-finite


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. repeated non-finite losses); the message says why and where."""


@dataclass
class TrainResult:
    step: int
    last_loss: float
    output_dir: Path
    resumed_from: int | None
    data_skipped: dict[str, int]  # samples the loader skipped, by reason


def _from_collective(e: BaseException) -> bool:
    """True for what torch.distributed raises when a collective fails: a peer died or timed out.
    (gloo raises a plain RuntimeError from the collective's wait(), so the raising frame decides.)"""
    if isinstance(e, getattr(torch.distributed, "DistError", ())):
        return True
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return isinstance(e, RuntimeError) and tb is not None and "torch/distributed/" in tb.tb_frame.f_code.co_filename


def _first_words(e: BaseException) -> str:
    """The gist of a backend error: its first sentence, without the source-location prefix."""
    line = re.sub(r"^\[[^\]]*\]\s*", "", str(e).strip().split("\n")[0])
    return line.split(". ")[0][:200] or e.__class__.__name__


@contextlib.contextmanager
def _checkpoint_write(root: Path, step: int) -> Iterator[None]:
    """A failed checkpoint write (full disk, I/O error) -> CheckpointError naming the cause. The
    partial folder is removed, so the previous checkpoint stays the latest and its space comes back."""
    try:
        yield
    except Exception as e:
        if isinstance(e, TrainingError) or _from_collective(e):
            raise
        shutil.rmtree(root / f"step-{step:06d}.tmp", ignore_errors=True)
        disk = next(p for p in (root, *root.parents) if p.exists())
        free = shutil.disk_usage(disk).free
        # torch.save reports a full disk only as "unexpected pos ..."; the free space tells
        full = (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left" in str(e) or free < 1 << 20
        cause = "no space left on device" if full else f"{e.__class__.__name__}: {_first_words(e)}"
        raise ck.CheckpointError(
            f"step {step}: writing checkpoint {ck.step_dir(root, step)} failed ({cause}; {free / 2**20:.1f} MiB "
            f"free); the previous checkpoint is intact: {ck.latest_checkpoint(root)}") from None


def _save(engine, model, optimizer, loader, root: Path, step: int, cfg: PretrainConfig, extra: dict) -> None:
    """Every rank writes its own state; rank 0 writes the shared parts and commits the folder.
    Under DeepSpeed the (possibly partitioned) optimizer state is DeepSpeed's own checkpoint."""
    acc = engine.acc
    tmp = root / f"step-{step:06d}.tmp"
    if acc.is_main_process:
        ck.begin_save(root, step)
    acc.wait_for_everyone()
    state_dict = acc.get_state_dict(model)  # gathers ZeRO-3 shards; collective
    if acc.is_main_process:
        finite = [torch.isfinite(v).all() for v in state_dict.values() if v.is_floating_point()]
        if finite and not all(read_on_host(torch.stack(finite))):
            raise TrainingError(f"step {step}: parameters are not finite; refusing to write a checkpoint")
        ck.write_model(tmp, state_dict)
        if os.environ.get(FAULT_CRASH_IN_SAVE) == str(step):
            os._exit(137)
        if not engine.deepspeed:
            ck.write_optimizer(tmp, optimizer.state_dict())
    if engine.deepspeed:
        model.save_checkpoint(str(tmp), tag=DEEPSPEED_TAG)
    ck.write_rank_state(tmp, acc.process_index, {
        "step": step, "rng": ck.rng_state(), "loader": loader.state_dict(),
        "precision": engine.precision.state_dict(), **extra})
    acc.wait_for_everyone()
    if acc.is_main_process:
        ck.finish_save(tmp, step, {"config": to_dict(cfg), "world_size": acc.num_processes},
                       keep_last=cfg.train.keep_last)
    acc.wait_for_everyone()


def _resume_folder(cfg: PretrainConfig, root: Path) -> Path | None:
    mode = cfg.train.resume
    if mode == "never":
        return None
    if mode == "auto":
        return ck.latest_checkpoint(root)
    folder = Path(mode)
    if ck.read_metadata(folder) is None:
        raise ConfigError(f"train.resume: {folder} is not a complete checkpoint folder")
    return folder


def _rank_state(folder: Path, engine, monitor_warn) -> dict:
    """This rank's saved state. A checkpoint from another number of processes (elastic resume)
    gives every rank rank 0's loader position (the loader re-plans the rest of the epoch over the
    new ranks) and fresh RNG streams; DeepSpeed's partitioned optimizer state cannot be re-split."""
    acc = engine.acc
    saved_world = int((ck.read_metadata(folder) or {}).get("world_size", acc.num_processes))
    if saved_world == acc.num_processes:
        return ck.load_rank_state(folder, acc.process_index)
    if engine.deepspeed:
        raise ConfigError(f"train.resume: {folder} was saved by {saved_world} DeepSpeed processes; its partitioned "
                          f"optimizer state cannot resume on {acc.num_processes} (relaunch with {saved_world} "
                          f"processes, or convert it with DeepSpeed's ds_to_universal)")
    state = ck.load_rank_state(folder, 0)
    monitor_warn(f"resuming a {saved_world}-process checkpoint on {acc.num_processes} processes: the data order "
                 f"continues exactly, random draws (augmentation, masks' RNG) start afresh")
    state["rng"] = None
    return state


def default_optimizer(objective: torch.nn.Module, cfg: PretrainConfig) -> torch.optim.Optimizer:
    """AdamW over every trainable parameter (pipeline/train/optim.py)."""
    tc = cfg.train
    return build_optimizer(objective, tc.lr, tc.weight_decay, tuple(tc.betas))


class _StopRequest:
    """SIGUSR1 (what SLURM's --signal sends before a time limit) or the file that VSSL_STOP_FILE
    names: checkpoint at the next step boundary and exit cleanly (recipes/slurm requeues)."""

    def __init__(self) -> None:
        self.signalled = False
        self.file = os.environ.get(STOP_FILE_ENV)
        try:
            self._previous = signal.signal(signal.SIGUSR1, self._handle)
        except ValueError:  # not the main thread
            self._previous = None

    def _handle(self, signum, frame) -> None:
        self.signalled = True

    def requested(self) -> bool:
        return self.signalled or bool(self.file and os.path.exists(self.file))

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGUSR1, self._previous)


def _agree(acc, values: list) -> list[float]:
    """Sum of `values` (floats or 0-d device tensors) over ranks, read on the host: the step's one
    collective and one host sync."""
    flags = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=acc.device).reshape(()) for v in values])
    if acc.num_processes > 1:
        flags = acc.reduce(flags, reduction="sum")
    return read_on_host(flags)


def _finite_flag(x: torch.Tensor) -> torch.Tensor:
    return (~torch.isfinite(x.detach().float())).any().float()


def train(cfg: PretrainConfig, build_objective, build_loader, make_optimizer=default_optimizer) -> TrainResult:
    """Run pretraining (or fine-tuning: any config with `data` and `train` sections).
    `build_objective(cfg) -> nn.Module` returns a module whose forward maps a batch to
    (loss, logs) and may have `after_step()` (called after every optimizer update, on every rank)
    and `flops(batch)` (for MFU); `build_loader(cfg, rank, world, objective) -> loader` returns an
    iterable of batches with state_dict / load_state_dict / set_epoch / stats (a ClipLoader is told
    to hand its batches over on the accelerator; any other loader's batches are moved there and a
    uint8 video normalised with data.mean/std); `make_optimizer(objective, cfg)` returns the
    optimizer (its groups' `lr_scale` scale the scheduled lr)."""
    tc = cfg.train
    engine = make_engine(cfg)
    acc = engine.acc
    torch.manual_seed(tc.seed + acc.process_index)
    out = Path(tc.output_dir)
    ckpt_root = out / "checkpoints"
    objective = build_objective(cfg)
    loader = build_loader(cfg, acc.process_index, acc.num_processes, objective)
    if isinstance(loader, ClipLoader):
        loader.device = acc.device  # uint8 clips are normalised on the accelerator
    if not engine.deepspeed:
        objective.to(acc.device)  # before the optimizer, which then picks its fused CUDA kernels
    optimizer = make_optimizer(objective, cfg)

    resumed_from = None
    state: dict = {"epoch": 0, "nonfinite": 0}
    folder = _resume_folder(cfg, ckpt_root)
    if folder is not None:
        objective.load_state_dict(ck.load_model_state(folder))
    model, optimizer = acc.prepare(objective, optimizer)
    monitor_warn = warn if acc.is_main_process else (lambda message: None)
    if folder is not None:
        rank_state = _rank_state(folder, engine, monitor_warn)
        if engine.deepspeed:
            model.load_checkpoint(str(folder), tag=DEEPSPEED_TAG, load_module_strict=True)
        else:  # after prepare: the state lands beside its parameters, Adam's step stays on the host
            optimizer.load_state_dict(ck.load_optimizer_state(folder))
        if rank_state["rng"] is not None:
            ck.set_rng_state(rank_state["rng"])
        else:
            torch.manual_seed(tc.seed + 1_000_003 * rank_state["step"] + acc.process_index)
        try:
            loader.load_state_dict(rank_state["loader"])
        except ValueError as e:  # the loader says in one line what it cannot honour
            raise ConfigError(f"train.resume: {folder}: {e}") from None
        engine.precision.load_state_dict(rank_state.get("precision", {}))
        state = {k: rank_state[k] for k in state}
        resumed_from = rank_state["step"]
    # forwards go through the compiled module; everything else (accumulate, DeepSpeed's backward and
    # step, saving) through `model` itself: unwrapping a compiled DDP module for its state dict
    # re-points the compiled module at the bare one, after which its forwards would skip DDP
    compiled = torch.compile(model, backend=tc.compile_backend) if tc.compile else model

    step = resumed_from or 0
    monitor = Monitor(cfg, acc, objective, resumed_from=step, zero3=engine.zero_stage == 3)
    online = OnlineEval(cfg, objective) if tc.eval_every else None
    after_step = getattr(objective, "after_step", None)
    stop = _StopRequest()
    loader.set_epoch(state["epoch"])
    batches = iter(loader)

    def next_batch():
        """The next batch holding at least one clip. A batch whose every sample was bad (skipped and
        counted by the loader) is passed over; every rank still takes one batch per micro-step."""
        nonlocal batches
        empty = 0
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                state["epoch"] += 1
                loader.set_epoch(state["epoch"])
                batches = iter(loader)
                continue
            if len(batch["video"]):
                return batch_to_device(batch, acc.device, cfg.data.mean, cfg.data.std)
            empty += 1
            if empty > len(loader):
                raise TrainingError(f"step {step}: {empty} batches in a row held no usable sample "
                                    f"(skipped so far: {loader.stats()['skipped']})")

    def forward(batch):
        with engine.precision.autocast():
            return compiled(batch)

    def micro_steps():
        """Forward and backward of train.grad_accum batches -> (mean loss, logs, last batch, wait,
        loss_bad, stop). DDP all-reduces gradients only on the last; DeepSpeed, which steps inside
        its last backward, has each loss checked on every rank before its backward runs (with the
        stop request: one collective and one host sync per micro-step)."""
        total, logs, batch, wait, bad, stop_now = 0.0, {}, None, 0.0, 0.0, 0.0
        for micro in range(tc.grad_accum):
            last = micro == tc.grad_accum - 1
            t0 = time.perf_counter()
            batch = next_batch()
            wait += time.perf_counter() - t0
            if engine.deepspeed:
                loss, logs = forward(batch)
                if bad:
                    continue  # the step is dropped: its remaining batches are drawn, not trained on
                bad, stop_now = _agree(acc, [_finite_flag(loss), float(stop.requested())])
                if bad:
                    continue
                model.set_gradient_accumulation_boundary(last)
                model.backward(loss)  # DeepSpeed scales by 1 / gradient_accumulation_steps itself
                if last:
                    model.step()
            else:
                with acc.accumulate(model):  # syncs on every grad_accum-th call: the last one here
                    loss, logs = forward(batch)
                    acc.backward(engine.precision.scale(loss))  # divided by grad_accum inside
            total = total + loss.detach().float() / tc.grad_accum
        return total, logs, batch, wait, bad, stop_now

    loss_value = float("nan")
    try:
        while step < tc.max_steps:
            lr = cosine_lr(step, tc.lr, tc.warmup_steps, tc.max_steps, tc.min_lr)
            set_lr(optimizer, lr)
            total, logs, batch, wait, loss_bad, stop_now = micro_steps()
            grad_norm = None
            if engine.deepspeed:
                grad_bad = loss_bad
                if loss_bad:
                    model.zero_grad()
            else:
                engine.precision.unscale_(optimizer)
                grad_norm = acc.clip_grad_norm_(model.parameters(), tc.grad_clip if tc.grad_clip > 0 else math.inf)
                loss_bad, grad_bad, stop_now = _agree(acc, [_finite_flag(total), _finite_flag(grad_norm),
                                                            float(stop.requested())])
                overflow = grad_bad and not loss_bad and engine.precision.scaler is not None
                if overflow or not (loss_bad or grad_bad):
                    engine.precision.step(optimizer)  # fp16: the scaler skips an overflowed step, lowers its scale
                optimizer.zero_grad(set_to_none=True)
                if overflow:
                    scale = engine.precision.scaler.get_scale()
                    monitor.warn(f"step {step}: fp16 gradients overflowed; update skipped, loss scale now {scale:g}")
                    if scale >= MIN_LOSS_SCALE:
                        continue
                    grad_bad = True  # scaled down to nothing and still overflowing: not an overflow
            if loss_bad or grad_bad:
                state["nonfinite"] += 1
                monitor.warn(f"step {step}: non-finite loss or gradient, update skipped "
                             f"({state['nonfinite']}/{tc.max_nonfinite_retries})")
                if state["nonfinite"] > tc.max_nonfinite_retries:
                    raise TrainingError(
                        f"step {step}: loss or gradient non-finite {state['nonfinite']} times in a row "
                        f"(train.max_nonfinite_retries={tc.max_nonfinite_retries}); stopped without "
                        f"writing a checkpoint; last good one: {ck.latest_checkpoint(ckpt_root)}")
                continue
            state["nonfinite"] = 0
            if after_step is not None:
                after_step()
            step += 1
            monitor.accumulate(total, grad_norm, logs, batch["video"].shape[0] * tc.grad_accum * acc.num_processes,
                               wait)
            last_step = step == tc.max_steps or stop_now
            if online is not None and step % tc.eval_every == 0 and (acc.is_main_process or engine.zero_stage == 3):
                figures, collapse = online.run(acc.device)  # under ZeRO-3 every rank encodes (gathers)
                monitor.note(step, figures)
                if collapse:
                    monitor.warn(f"step {step}: {collapse}")
            if step % tc.log_every == 0 or last_step:
                extra = {}
                if engine.deepspeed:
                    extra["grad_norm"] = float(model.get_global_grad_norm() or float("nan"))
                if engine.precision.scaler is not None:
                    extra["loss_scale"] = float(engine.precision.scaler.get_scale())
                loss_value = monitor.flush(step, lr, loader, batch, extra)["loss"]
            if step % tc.image_every == 0 or step == tc.max_steps:
                monitor.picture(step, batch)
            if step % tc.checkpoint_every == 0 or last_step:
                with _checkpoint_write(ckpt_root, step):
                    _save(engine, model, optimizer, loader, ckpt_root, step, cfg, state)
            if stop_now:
                monitor.warn(f"step {step}: stop requested (SIGUSR1 or {STOP_FILE_ENV}); checkpoint written, "
                             f"exiting; re-run the same command to resume")
                break
    except Exception as e:
        if acc.num_processes > 1 and _from_collective(e):
            raise TrainingError(
                f"rank {acc.process_index}, step {step}: lost contact with the other processes "
                f"({_first_words(e)}; train.dist_timeout_s={tc.dist_timeout_s:g}); last complete checkpoint: "
                f"{ck.latest_checkpoint(ckpt_root)}; relaunch the job to resume from it") from None
        raise
    finally:
        stop.close()
        monitor.close()
    acc.wait_for_everyone()  # the process group stays up for the caller (pipeline/cli.py ends it)
    return TrainResult(step=step, last_loss=loss_value, output_dir=out, resumed_from=resumed_from,
                       data_skipped=dict(loader.stats()["skipped"]))
