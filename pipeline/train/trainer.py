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
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import torch

from pipeline.config import ConfigError, PretrainConfig, to_dict
from pipeline.data.loader import ClipLoader
from pipeline.data.normalize import batch_to_device
from pipeline.train import checkpoint as ck
from pipeline.train.monitor import Monitor
from pipeline.train.optim import build_optimizer, cosine_lr, set_lr

FAULT_NAN_STEPS = "VSSL_FAULT_NAN_STEPS"  # test hook: steps whose loss becomes NaN, once per mention
FAULT_CRASH_IN_SAVE = "VSSL_FAULT_CRASH_IN_SAVE"  # test hook: die mid-write of this step's checkpoint
DEEPSPEED_TAG = "deepspeed"  # sub-folder of a checkpoint holding DeepSpeed's engine state


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. repeated non-finite losses); the message says why and where."""


@dataclass
class TrainResult:
    step: int
    last_loss: float
    output_dir: Path
    resumed_from: int | None
    data_skipped: dict[str, int]  # samples the loader skipped, by reason


def make_accelerator(train_cfg):
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    on_gpu = torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true")
    precision = train_cfg.mixed_precision
    if precision == "auto":
        precision = "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "no"
    timeout = timedelta(seconds=train_cfg.dist_timeout_s)
    backend = "nccl" if on_gpu else "gloo"
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    handlers = [InitProcessGroupKwargs(backend=backend, timeout=timeout)] if distributed else []
    # DeepSpeed on CPU (DS_ACCELERATOR=cpu) runs over gloo, but only if Accelerate is not forced to CPU mode
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    return Accelerator(mixed_precision=precision, cpu=not on_gpu and not deepspeed, kwargs_handlers=handlers)


def _nan_steps() -> list[int]:
    text = os.environ.get(FAULT_NAN_STEPS, "")
    return [int(s) for s in text.split(",") if s.strip()]


def _all_finite(acc, value: torch.Tensor) -> bool:
    """True when `value` is finite on every rank (a collective: all ranks must call it)."""
    bad = torch.tensor([0.0 if bool(torch.isfinite(value).all()) else 1.0], device=acc.device)
    return acc.reduce(bad, reduction="sum").item() == 0


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


def _uses_deepspeed(acc) -> bool:
    from accelerate.utils import DistributedType

    return acc.distributed_type == DistributedType.DEEPSPEED


def _save(acc, model, optimizer, loader, root: Path, step: int, cfg: PretrainConfig, extra: dict) -> None:
    """Every rank writes its own state; rank 0 writes the shared parts and commits the folder.
    Under DeepSpeed the (possibly partitioned) optimizer state is DeepSpeed's own checkpoint."""
    tmp = root / f"step-{step:06d}.tmp"
    if acc.is_main_process:
        ck.begin_save(root, step)
    acc.wait_for_everyone()
    state_dict = acc.get_state_dict(model)  # gathers ZeRO-3 shards; collective
    if acc.is_main_process:
        if any(not torch.isfinite(v).all() for v in state_dict.values() if v.is_floating_point()):
            raise TrainingError(f"step {step}: parameters are not finite; refusing to write a checkpoint")
        ck.write_model(tmp, state_dict)
        if os.environ.get(FAULT_CRASH_IN_SAVE) == str(step):
            os._exit(137)
        if not _uses_deepspeed(acc):
            ck.write_optimizer(tmp, optimizer.state_dict())
    if _uses_deepspeed(acc):
        model.save_checkpoint(str(tmp), tag=DEEPSPEED_TAG)
    ck.write_rank_state(tmp, acc.process_index, {
        "step": step, "rng": ck.rng_state(), "loader": loader.state_dict(), **extra})
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


def default_optimizer(objective: torch.nn.Module, cfg: PretrainConfig) -> torch.optim.Optimizer:
    """AdamW over every trainable parameter (pipeline/train/optim.py)."""
    tc = cfg.train
    return build_optimizer(objective, tc.lr, tc.weight_decay, tuple(tc.betas))


def train(cfg: PretrainConfig, build_objective, build_loader, make_optimizer=default_optimizer) -> TrainResult:
    """Run pretraining (or fine-tuning: any config with `data` and `train` sections).
    `build_objective(cfg) -> nn.Module` returns a module whose forward maps a batch to
    (loss, logs); `build_loader(cfg, rank, world, objective) -> loader` returns an iterable of
    batches with state_dict / load_state_dict / set_epoch / stats (a ClipLoader is told to hand its
    batches over on the accelerator; any other loader's batches are moved there and a uint8
    video normalised with data.mean/std); `make_optimizer(objective, cfg)` returns the optimizer
    (its groups' `lr_scale` scale the scheduled lr)."""
    tc = cfg.train
    acc = make_accelerator(tc)
    torch.manual_seed(tc.seed + acc.process_index)
    out = Path(tc.output_dir)
    ckpt_root = out / "checkpoints"
    objective = build_objective(cfg)
    loader = build_loader(cfg, acc.process_index, acc.num_processes, objective)
    if isinstance(loader, ClipLoader):
        loader.device = acc.device  # uint8 clips are normalised on the accelerator
    optimizer = make_optimizer(objective, cfg)

    resumed_from = None
    state: dict = {"epoch": 0, "nonfinite": 0}
    folder = _resume_folder(cfg, ckpt_root)
    deepspeed = _uses_deepspeed(acc)
    if deepspeed:
        if tc.grad_accum != 1:
            raise ConfigError("train.grad_accum: with DeepSpeed set gradient_accumulation_steps in its JSON instead")
        ds = acc.state.deepspeed_plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = cfg.data.batch_size * cfg.data.repeated_samples
        ds["gradient_clipping"] = tc.grad_clip
    if folder is not None:
        objective.load_state_dict(ck.load_model_state(folder))
        if not deepspeed:
            optimizer.load_state_dict(ck.load_optimizer_state(folder))
    if tc.grad_checkpointing:
        objective.set_grad_checkpointing(True)
    model, optimizer = acc.prepare(objective, optimizer)
    if folder is not None:
        if deepspeed:
            model.load_checkpoint(str(folder), tag=DEEPSPEED_TAG, load_module_strict=True)
        rank_state = ck.load_rank_state(folder, acc.process_index)
        ck.set_rng_state(rank_state["rng"])
        loader.load_state_dict(rank_state["loader"])
        state = {k: rank_state[k] for k in state}
        resumed_from = rank_state["step"]
    if tc.compile:
        model = torch.compile(model)

    step = resumed_from or 0
    monitor = Monitor(cfg, acc, objective, resumed_from=step)
    nan_steps = _nan_steps()
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

    loss_value = float("nan")
    try:
        while step < tc.max_steps:
            lr = cosine_lr(step, tc.lr, tc.warmup_steps, tc.max_steps, tc.min_lr)
            set_lr(optimizer, lr)
            t_start = time.perf_counter()
            wait = 0.0
            total, logs, batch, finite = 0.0, {}, None, True
            for micro in range(tc.grad_accum):
                t0 = time.perf_counter()
                batch = next_batch()
                wait += time.perf_counter() - t0
                sync = micro == tc.grad_accum - 1
                with contextlib.nullcontext() if sync else acc.no_sync(model):
                    with acc.autocast():
                        loss, logs = model(batch)
                    if step in nan_steps:
                        nan_steps.remove(step)
                        loss = loss * float("nan")
                    # decided before backward (DeepSpeed steps inside backward), the same on every rank
                    finite = _all_finite(acc, loss.detach())
                    if not finite:
                        break
                    acc.backward(loss / tc.grad_accum)
                total += loss.detach().float() / tc.grad_accum
            grad_norm = float("nan")
            if finite:
                norm = acc.clip_grad_norm_(model.parameters(), tc.grad_clip if tc.grad_clip > 0 else math.inf)
                grad_norm = float(norm) if norm is not None else float("nan")
                finite = deepspeed or _all_finite(acc, torch.as_tensor(grad_norm))
            if not finite:
                optimizer.zero_grad(set_to_none=True)
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
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_value = acc.reduce(total.to(acc.device), reduction="mean").item()
            monitor.step(step, loss_value, lr, grad_norm, logs, batch, model,
                         step_time=time.perf_counter() - t_start, data_wait=wait, loader=loader)
            if step % tc.checkpoint_every == 0 or step == tc.max_steps:
                with _checkpoint_write(ckpt_root, step):
                    _save(acc, model, optimizer, loader, ckpt_root, step, cfg, state)
    except Exception as e:
        if acc.num_processes > 1 and _from_collective(e):
            raise TrainingError(
                f"rank {acc.process_index}, step {step}: lost contact with the other processes "
                f"({_first_words(e)}; train.dist_timeout_s={tc.dist_timeout_s:g}); last complete checkpoint: "
                f"{ck.latest_checkpoint(ckpt_root)}; relaunch the job to resume from it") from None
        raise
    finally:
        monitor.close()
    acc.wait_for_everyone()
    acc.end_training()
    return TrainResult(step=step, last_loss=loss_value, output_dir=out, resumed_from=resumed_from,
                       data_skipped=dict(loader.stats()["skipped"]))
