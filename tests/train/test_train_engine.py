"""Device, precision and accounting of the trainer (pipeline/train/engine.py, monitor.py):
the GPU-or-refuse device rule, fp16 loss scaling, bf16 autocast, analytic FLOPs and MFU,
logging intervals, and the stop request that checkpoints before a time limit."""

from __future__ import annotations

import json
import os
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from pipeline.config import ConfigError, ObjectiveConfig, PretrainConfig, load_config
from pipeline.data.masking import tube_mask
from pipeline.host import READS
from pipeline.models import create_model
from pipeline.objectives.predictive import NextFramePredictive
from pipeline.objectives.videomae import VideoMAE
from pipeline.train import checkpoint as ck
from pipeline.train import engine as eng
from pipeline.train.monitor import peak_flops, train_flops_per_clip
from pipeline.train.build import build_objective, build_train_loader
from pipeline.train.trainer import STOP_FILE_ENV, train
from pipeline.testing.tiny_train import assert_same_weights, losses, tiny_recipe, tiny_shards

TINY = dict(embed_dim=32, depth=2, num_heads=2, num_frames=8, img_size=32, patch_size=(2, 8, 8))
DEC = dict(decoder_dim=32, decoder_depth=2, decoder_heads=2)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return tiny_shards(tmp_path_factory.mktemp("shards"))


# -- device -----------------------------------------------------------------------------------


@pytest.fixture
def no_gpu(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(eng, "_NVIDIA_DRIVER", tmp_path / "absent")
    for name in ("ACCELERATE_USE_CPU", "DS_ACCELERATOR", "WORLD_SIZE", "LOCAL_RANK", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_gpu_meant_and_missing_is_refused_in_one_line(no_gpu, tmp_path):
    assert eng.resolve_device("auto") == "cpu"  # a plain single process on a CPU machine
    assert eng.resolve_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match=r"train.device: cuda, but torch finds no usable GPU \(torch .* built"):
        eng.resolve_device("cuda")
    no_gpu.setenv("WORLD_SIZE", "2")  # under a launcher: a GPU job that found none
    with pytest.raises(ConfigError, match="launched as 2 processes but torch finds no usable GPU") as e:
        eng.resolve_device("auto")
    assert "\n" not in str(e.value) and "train.device=cpu" in str(e.value)
    no_gpu.setenv("ACCELERATE_USE_CPU", "1")  # ... unless the launch asked for CPUs
    assert eng.resolve_device("auto") == "cpu"
    no_gpu.delenv("ACCELERATE_USE_CPU")
    no_gpu.setenv("DS_ACCELERATOR", "cpu")
    assert eng.resolve_device("auto") == "cpu"
    no_gpu.delenv("DS_ACCELERATOR")
    no_gpu.delenv("WORLD_SIZE")
    driver = tmp_path / "version"  # one process on a GPU node whose driver torch cannot use
    driver.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n")
    no_gpu.setattr(eng, "_NVIDIA_DRIVER", driver)
    with pytest.raises(ConfigError, match="this machine has an NVIDIA driver .*535.104.05") as e:
        eng.resolve_device("auto")
    if torch.version.cuda:
        assert f"CUDA {torch.version.cuda}" in str(e.value) and "too old" in str(e.value)


def test_mixed_precision_auto_follows_the_launcher(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert eng.resolve_precision("auto", "cpu") == "no"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert eng.resolve_precision("auto", "cpu") == "bf16"
    assert eng.resolve_precision("no", "cpu") == "no"  # the recipe's explicit choice wins
    with pytest.raises(ConfigError, match="train.device"):
        load_config(PretrainConfig, None, ["train.device=tpu"])


# -- FLOPs and MFU ----------------------------------------------------------------------------


def _measured_forward(objective, batch) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        objective(batch)
    return counter.get_total_flops()


@pytest.mark.parametrize("name,kind,options", [
    ("vit_tiny_joint", "videomae", {}),
    ("vit_tiny_joint", "videomae", dict(latent_target=True, precision_weighted=True, decoder_mask_ratio=0.5)),
    ("vit_tiny_divided", "videomae", dict(latent_target=True)),
    ("mvit_tiny", "videomae", dict(precision_weighted=True)),
    ("vit_tiny_joint", "predictive", dict(latent_target=True)),
    ("swin3d_tiny", "predictive", {}),
])
def test_analytic_flops_match_a_counted_forward(name, kind, options):
    """objective.flops(batch) = (learning modules, EMA target) forward FLOPs, summing to what
    FlopCounterMode counts in one forward (the MFU formula then takes 3x the first plus the second)."""
    torch.manual_seed(0)
    size = 32 if name.startswith("vit") else 64
    kwargs = dict(TINY) if name.startswith("vit") else dict(num_frames=8, img_size=size)
    encoder = create_model(name, **kwargs)
    cls = VideoMAE if kind == "videomae" else NextFramePredictive
    objective = cls(encoder, ObjectiveConfig(**DEC, name=kind, **options)).train()
    grid = encoder.token_grid(8, size, size)
    batch = {"video": torch.randn(2, 3, 8, size, size), "mask": tube_mask(2, grid, 0.75, torch.Generator())}
    trained, frozen = objective.flops(batch)
    assert (frozen > 0) == bool(options.get("latent_target"))
    measured = _measured_forward(objective, batch) / 2
    assert trained + frozen == pytest.approx(measured, rel=0.02)
    assert train_flops_per_clip(objective, batch) == 3 * trained + frozen


def test_peak_table_tells_gpu_variants_apart():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA H100 NVL") == 835e12
    assert peak_flops("NVIDIA H200") == 989e12 and peak_flops("NVIDIA H200 NVL") == 835e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12 and peak_flops("cpu") is None


def test_mfu_and_log_interval(tmp_path, shards):
    """With train.peak_tflops set, every record carries mfu = clips/s x FLOPs per clip / peak;
    with log_every=3 a record covers three steps and its loss is their mean."""
    every = tiny_recipe(tmp_path / "a.yaml", shards, tmp_path / "every", max_steps=6)
    train(load_config(PretrainConfig, every, []), build_objective, build_train_loader)
    per_step = losses(tmp_path / "every")
    grouped = tiny_recipe(tmp_path / "b.yaml", shards, tmp_path / "grouped", max_steps=6, log_every=3,
                          peak_tflops=0.5)
    cfg = load_config(PretrainConfig, grouped, [])
    train(cfg, build_objective, build_train_loader)
    records = [json.loads(line) for line in (tmp_path / "grouped" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6]
    assert records[0]["loss"] == pytest.approx(sum(per_step[:3]) / 3, rel=1e-5)
    assert records[1]["loss"] == pytest.approx(sum(per_step[3:]) / 3, rel=1e-5)
    objective = build_objective(cfg)
    loader = build_train_loader(cfg, 0, 1, objective)
    flops = train_flops_per_clip(objective, next(iter(loader)))
    for r in records:
        assert r["mfu"] == pytest.approx(r["clips_per_s"] * flops / 0.5e12, rel=1e-6)


# -- precision --------------------------------------------------------------------------------


def test_fp16_overflow_lowers_the_loss_scale_and_training_goes_on(tmp_path, shards, monkeypatch):
    """fp16: a step whose scaled gradients overflow is skipped by the scaler, which lowers its
    scale and is updated every step (an overflow used to leave it un-updated, and the next
    unscale_ raised). The scale is checkpointed: a resumed run continues with it."""
    real = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device: real(device, init_scale=2.0 ** 40))
    recipe = tiny_recipe(tmp_path / "r.yaml", shards, tmp_path / "out", max_steps=4, mixed_precision="fp16",
                         checkpoint_every=2)
    result = train(load_config(PretrainConfig, recipe, []), build_objective, build_train_loader)
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert result.step == 4 and [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert records[0]["loss_scale"] < 2.0 ** 40  # overflowed at the huge initial scale, lowered
    saved = ck.load_rank_state(ck.latest_checkpoint(tmp_path / "out" / "checkpoints"), 0)["precision"]
    assert saved["scale"] == records[-1]["loss_scale"]
    recipe = tiny_recipe(tmp_path / "r.yaml", shards, tmp_path / "out", max_steps=5, mixed_precision="fp16")
    train(load_config(PretrainConfig, recipe, []), build_objective, build_train_loader)
    last = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 5 and last["loss_scale"] >= saved["scale"]


def test_bf16_autocast_trains_close_to_fp32(tmp_path, shards):
    traces = {}
    for precision in ("no", "bf16"):
        recipe = tiny_recipe(tmp_path / f"{precision}.yaml", shards, tmp_path / precision, max_steps=3,
                             mixed_precision=precision)
        train(load_config(PretrainConfig, recipe, []), build_objective, build_train_loader)
        traces[precision] = losses(tmp_path / precision)
    assert traces["bf16"] != traces["no"]  # autocast really ran
    assert traces["bf16"] == pytest.approx(traces["no"], rel=0.05)


# -- stop request -----------------------------------------------------------------------------


def test_stop_file_checkpoints_and_exits_then_resumes(tmp_path, shards, monkeypatch):
    stop = tmp_path / "stop"
    stop.touch()
    monkeypatch.setenv(STOP_FILE_ENV, str(stop))
    recipe = tiny_recipe(tmp_path / "r.yaml", shards, tmp_path / "out", max_steps=6, checkpoint_every=100)
    result = train(load_config(PretrainConfig, recipe, []), build_objective, build_train_loader)
    assert result.step == 1 and ck.latest_checkpoint(tmp_path / "out" / "checkpoints").name == "step-000001"
    os.remove(stop)
    result = train(load_config(PretrainConfig, recipe, []), build_objective, build_train_loader)
    assert result.resumed_from == 1 and result.step == 6


# -- host reads -------------------------------------------------------------------------------

SCALAR_READS = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.is_nonzero.default"}


HOST_SIDE = ("/pipeline/data/", "/torch/optim/")  # the loader's tensors and Adam's step counters live on the host


class _ScalarReads(TorchDispatchMode):
    """Counts ops that read a tensor's value on the host implicitly (.item(), bool(), int(),
    nonzero) outside code whose tensors are on the host anyway: on a GPU each would be a sync
    that pipeline/host.read_on_host does not see."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in SCALAR_READS:
            frames = [f.filename for f in traceback.extract_stack()]
            self.count += not any(part in name for name in frames for part in HOST_SIDE)
        return func(*args, **(kwargs or {}))


def _reads(recipe, steps: int, overrides: list[str]) -> tuple[int, int]:
    cfg = load_config(PretrainConfig, recipe, [f"train.max_steps={steps}", "train.resume=never", *overrides])
    before = READS.count
    with _ScalarReads() as implicit:
        train(cfg, build_objective, build_train_loader)
    return READS.count - before, implicit.count


MODELS = {"vit_tiny_joint": [], "vit_tiny_divided": ["model.name=vit_tiny_divided"],
          "mvit_tiny": ["model.name=mvit_tiny", "model.overrides={depths: [1, 1], stem_dim: 16, num_heads: 1}"]}


@pytest.mark.parametrize("model,objective", [("vit_tiny_joint", "videomae"), ("vit_tiny_divided", "predictive"),
                                             ("mvit_tiny", "videomae")])
def test_a_training_step_reads_the_host_at_most_twice(tmp_path, shards, model, objective):
    """Outside logging steps a step reads device values on the host at most twice - the trainer's
    finite/stop check and a visible-only encoder's mask check - and never implicitly. Counted as
    the difference between a 6-step and a 3-step run that log, picture and checkpoint only at
    their end (on a GPU, `python -m benchmarks gpu` counts real syncs)."""
    recipe = tiny_recipe(tmp_path / "r.yaml", shards, tmp_path / "out", objective=objective, log_every=100,
                         image_every=100, checkpoint_every=100)
    short, long = _reads(recipe, 3, MODELS[model]), _reads(recipe, 6, MODELS[model])
    explicit, implicit = (long[0] - short[0]) / 3, (long[1] - short[1]) / 3
    assert implicit == 0, f"{implicit} implicit host reads per step"
    assert explicit <= 2, f"{explicit} host reads per step"


# -- gradient accumulation --------------------------------------------------------------------


class _FixedBatches:
    """A loader serving a fixed list of batches, in order, forever."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)

    def set_epoch(self, epoch):
        pass

    def state_dict(self):
        return {}

    def stats(self):
        return {"skipped_total": 0, "skipped": {}}


def test_grad_accumulation_of_two_halves_equals_one_whole_batch(tmp_path, shards):
    """grad_accum=2 over batches A, B makes the same update as one step on A+B (the loss is
    divided by the accumulation count once)."""
    cfg = load_config(PretrainConfig, tiny_recipe(tmp_path / "r.yaml", shards, tmp_path / "unused"),
                      ["data.batch_size=4"])
    source = build_train_loader(cfg, 0, 1, build_objective(cfg))
    whole = [b for _, b in zip(range(2), source)]
    halves = [{k: v[i * 2:(i + 1) * 2] if torch.is_tensor(v) or isinstance(v, list) else v for k, v in b.items()}
              for b in whole for i in range(2)]
    weights = {}
    for name, accum, batches in (("whole", 1, whole), ("halves", 2, halves)):
        recipe = tiny_recipe(tmp_path / f"{name}.yaml", shards, tmp_path / name, max_steps=2, grad_accum=accum,
                             checkpoint_every=2)
        train(load_config(PretrainConfig, recipe, []), build_objective, lambda *a, b=batches: _FixedBatches(b))
        weights[name] = ck.load_model_state(ck.latest_checkpoint(tmp_path / name / "checkpoints"))
        assert len(losses(tmp_path / name)) == 2
    assert losses(tmp_path / "halves") == pytest.approx(losses(tmp_path / "whole"), rel=1e-5)
    norms = {name: [json.loads(line)["grad_norm"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
             for name in weights}  # Adam would hide a gradient scaled twice; its norm does not
    assert norms["halves"] == pytest.approx(norms["whole"], rel=1e-4)
    assert_same_weights(weights["halves"], weights["whole"])


def test_a_launcher_accumulation_count_other_than_the_recipes_is_refused(monkeypatch):
    """accelerate launch --gradient_accumulation_steps would override train.grad_accum inside
    Accelerate (dividing the loss by its count): refused in one line instead."""
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4")
    cfg = load_config(PretrainConfig, None, ["train.grad_accum=2", "train.device=cpu"])
    with pytest.raises(ConfigError, match="train.grad_accum: 2, but the launcher says --gradient_accumulation_steps 4"):
        eng.make_engine(cfg)
