"""Where and how a run computes: device, mixed precision and the engine (one process, DDP,
DeepSpeed ZeRO 1-3), decided once before the model is built.

    from pipeline.train.engine import make_engine
    engine = make_engine(cfg)             # train.device, train.mixed_precision, the launcher's env
    with engine.autocast():
        loss, logs = model(batch)
    engine.backward(loss)                 # scaled under fp16

Device (`train.device`): `cpu` runs on the CPU; `cuda` needs a usable CUDA GPU; `auto` takes the
GPU when torch can use one. A job that evidently meant a GPU - started by a launcher as several
processes, or on a machine with an NVIDIA driver - and finds none is refused with one line naming
what torch was built for and the driver present (a driver too old for the CUDA build makes
`torch.cuda.is_available()` False, and training would otherwise crawl on the CPU in fp32 unseen).
Launches that mean the CPU say so: ACCELERATE_USE_CPU=1 (`accelerate launch --cpu`) or
DS_ACCELERATOR=cpu, or train.device=cpu.

Mixed precision is torch autocast, owned here for every engine rather than by Accelerate or
DeepSpeed: weights, gradients and optimizer state stay fp32, so the fp32 video meets fp32
weights, an EMA target encoder can move by 0.004 x delta (bf16 weights would round that away),
and DDP and ZeRO compute the same thing. `train.mixed_precision: auto` takes the launcher's
`--mixed_precision` when one was given, else bf16 on a GPU that has it and fp32 on the CPU.
fp16 adds a GradScaler; a step whose scaled gradients overflowed is skipped by the scaler, which
then lowers its scale (the normal fp16 warm-up, not a failure). DeepSpeed with fp16 is refused
(its loss scaler would step inside backward, before vssl could unscale); a DeepSpeed JSON that
enables its own bf16/fp16 section is refused too.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

from pipeline.config import ConfigError, Device, MixedPrecision, PretrainConfig

CPU_LAUNCH_ENV = {"ACCELERATE_USE_CPU": ("1", "true"), "DS_ACCELERATOR": ("cpu",)}
_LAUNCHER_ENV = ("LOCAL_RANK", "WORLD_SIZE")  # set by torchrun / accelerate launch in every process
_NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")


def _env_true(name: str, values: tuple[str, ...]) -> bool:
    return os.environ.get(name, "").strip().lower() in values


def cpu_requested() -> bool:
    """The launcher asked for CPU processes."""
    return any(_env_true(name, values) for name, values in CPU_LAUNCH_ENV.items())


def uses_deepspeed_launch() -> bool:
    return _env_true("ACCELERATE_USE_DEEPSPEED", ("true", "1"))


def nvidia_driver() -> str | None:
    """The loaded NVIDIA kernel driver's version line, if any."""
    try:
        return " ".join(_NVIDIA_DRIVER.read_text().split("\n")[0].split())
    except OSError:
        return None


def _no_gpu_reason() -> str:
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "the CPU only"
    driver = nvidia_driver()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    parts = [f"torch {torch.__version__} is built for {build}",
             f"NVIDIA driver: {driver}" if driver else "no NVIDIA driver loaded"]
    if visible is not None:
        parts.append(f"CUDA_VISIBLE_DEVICES={visible!r}")
    hint = ("a driver too old for this CUDA build? install a torch build for your driver "
            "(https://pytorch.org/get-started/locally)" if driver and torch.version.cuda else
            "install a CUDA build of torch" if driver else "check the node's GPUs and driver")
    return f"{'; '.join(parts)}; {hint}"


def resolve_device(choice: Device, world_size: int | None = None) -> str:
    """train.device -> "cuda" or "cpu", or ConfigError when a GPU was meant and none is usable."""
    if choice == "cpu":
        return "cpu"
    if torch.cuda.is_available() and not cpu_requested():
        return "cuda"
    if choice == "cuda":
        raise ConfigError(f"train.device: cuda, but torch finds no usable GPU ({_no_gpu_reason()})")
    if cpu_requested():
        return "cpu"
    world = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    launched = world > 1 or any(name in os.environ for name in _LAUNCHER_ENV[:1])
    if launched or nvidia_driver():
        why = f"launched as {world} processes" if launched else "this machine has an NVIDIA driver"
        raise ConfigError(f"train.device: {why} but torch finds no usable GPU ({_no_gpu_reason()}); "
                          f"to train on CPUs on purpose set train.device=cpu or ACCELERATE_USE_CPU=1")
    return "cpu"


def resolve_precision(choice: MixedPrecision, device: str) -> str:
    """train.mixed_precision -> "no" | "bf16" | "fp16"."""
    if choice == "auto":
        launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "").lower()
        if launcher in ("no", "bf16", "fp16"):
            return launcher
        return "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "no"
    return choice


class Precision:
    """Autocast for forward passes and, under fp16, the loss scaler."""

    def __init__(self, mode: str, device: str) -> None:
        self.mode, self.device = mode, device
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)
        self.scaler = torch.amp.GradScaler(device) if mode == "fp16" else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device, dtype=self.dtype)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss if self.scaler is None else self.scaler.scale(loss)

    def unscale_(self, optimizer) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(getattr(optimizer, "optimizer", optimizer))

    def step(self, optimizer) -> None:
        """optimizer.step(); under fp16 through the scaler, which skips it after an overflow and
        then updates its scale (always both: an unscaled optimizer cannot be unscaled again)."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(getattr(optimizer, "optimizer", optimizer))
        self.scaler.update()

    def state_dict(self) -> dict:
        return {} if self.scaler is None else {"scale": float(self.scaler.get_scale()),
                                               "growth_tracker": int(self.scaler._get_growth_tracker())}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict({**self.scaler.state_dict(), "scale": state["scale"],
                                         "_growth_tracker": state["growth_tracker"]})


def evaluation_autocast(mixed_precision: str | bool, device: str):
    """The autocast a run's forwards use (train.mixed_precision), for evaluating it."""
    choice = "no" if mixed_precision is False else mixed_precision
    return Precision(resolve_precision(choice, device), device).autocast()


@dataclass
class Engine:
    acc: object  # accelerate.Accelerator
    device: str
    precision: Precision
    zero_stage: int | None  # None: not DeepSpeed

    @property
    def deepspeed(self) -> bool:
        return self.zero_stage is not None


def _check_deepspeed(acc, cfg: PretrainConfig, precision: str) -> int:
    """Fill the DeepSpeed config from the recipe; refuse what vssl does not run. Returns the stage."""
    ds = acc.state.deepspeed_plugin.deepspeed_config
    if precision == "fp16":
        raise ConfigError("train.mixed_precision: fp16 is not supported with DeepSpeed (use bf16)")
    for section in ("bf16", "fp16"):
        if str(ds.get(section, {}).get("enabled", False)).lower() == "true":
            raise ConfigError(f"DeepSpeed config: {section}.enabled must be false or auto; vssl runs autocast over "
                              f"fp32 weights itself (train.mixed_precision)")
    ds["train_micro_batch_size_per_gpu"] = cfg.data.batch_size * cfg.data.repeated_samples
    ds["gradient_accumulation_steps"] = cfg.train.grad_accum
    ds["train_batch_size"] = ds["train_micro_batch_size_per_gpu"] * cfg.train.grad_accum * acc.num_processes
    ds["gradient_clipping"] = cfg.train.grad_clip
    stage = int(ds.get("zero_optimization", {}).get("stage", 0))
    if stage == 3 and cfg.train.compile:
        raise ConfigError("train.compile: not supported with DeepSpeed ZeRO-3 (its partitioned weights are empty "
                          "tensors to torch.compile's tracer); use ZeRO-1/2 or DDP, or train.compile=false")
    return stage


def make_engine(cfg: PretrainConfig):
    """The Accelerator for this process, with the device and precision decided above."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    tc = cfg.train
    device = resolve_device(tc.device)
    precision = resolve_precision(tc.mixed_precision, device)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls (outside autocast) on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    deepspeed = uses_deepspeed_launch()
    handlers = []
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if device == "cuda" else "gloo"
        handlers = [InitProcessGroupKwargs(backend=backend, timeout=timedelta(seconds=tc.dist_timeout_s))]
    # DeepSpeed on CPU (DS_ACCELERATOR=cpu) runs over gloo, but only if Accelerate is not forced to CPU mode
    # gradient accumulation: Accelerate's accumulate() (no all-reduce before the last micro-step, the
    # loss divided by the count in backward); under DeepSpeed its own, by its JSON's count
    accum = 1 if deepspeed else cfg.train.grad_accum
    acc = Accelerator(mixed_precision="no", cpu=device == "cpu" and not deepspeed, kwargs_handlers=handlers,
                      gradient_accumulation_steps=accum)
    if acc.gradient_accumulation_steps != accum:  # accelerate launch --gradient_accumulation_steps wins inside it
        raise ConfigError(f"train.grad_accum: {accum}, but the launcher says --gradient_accumulation_steps "
                          f"{acc.gradient_accumulation_steps}; drop that flag (the recipe decides)")
    stage = _check_deepspeed(acc, cfg, precision) if deepspeed else None
    return Engine(acc, device, Precision(precision, acc.device.type), stage)
