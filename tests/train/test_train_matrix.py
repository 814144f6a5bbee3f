"""The distributed matrix: 2 CPU processes (gloo) over a covering set of backbone x objective x
engine x precision x compile x gradient accumulation - every pair of values appears in some
case - each checked four ways:

1. it trains train.max_steps (4) steps without an error or a hang (the launch is bounded);
2. its losses match one process fed both ranks' batches (the same global batch), within the
   precision's tolerance (TOLERANCE);
3. resumed from its step-2 checkpoint, it logs the same steps 3-4 again;
4. its checkpoint's backbone loads as a fine-tuning encoder with the trained weights;
and every case draws its pictures and logs MFU every 2 steps.

One `accelerate launch` per engine runs that engine's four cases in turn
(tests/train/train_matrix_worker.py). torch.compile runs with the aot_eager backend: graph capture,
DDP's graph splitting and AOT autograd, without inductor's C++ build (~80 s per case here).
Also here: resuming on another number of processes (2 -> 1, 1 -> 2) sees every sample of the
epoch once, and a launch that means GPUs but finds none stops with one line.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from pipeline.config import PretrainConfig, load_config
from pipeline.models.build import load_encoder
from pipeline.train import checkpoint as ck
from pipeline.train.build import build_objective
from pipeline.train.trainer import train
from pipeline.testing.tiny_train import ROOT, BothRanks, env, free_port, tiny_recipe, tiny_shards

pytestmark = pytest.mark.slow

BACKBONES = {  # tiny versions that run at 8 x 32 x 32
    "vit_joint": ("vit_tiny_joint", {"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": [2, 8, 8]}),
    "vit_divided": ("vit_tiny_divided", {"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": [2, 8, 8]}),
    "mvit": ("mvit_tiny", {"depths": [1, 1], "stem_dim": 16, "num_heads": 1, "drop_path_rate": 0.0}),
    "swin3d": ("swin3d_tiny", {"depths": [1, 1], "num_heads": [1, 2], "stem_dim": 16, "window_size": [2, 4, 4],
                               "patch_size": [2, 4, 4], "drop_path_rate": 0.0}),
}  # no stochastic depth: its draws differ between two ranks and one process fed both batches
OBJECTIVES = {"videomae": ["objective.name=videomae"],
              "predictive_latent": ["objective.name=predictive", "objective.latent_target=true",
                                    "objective.ema_momentum=0.5"]}  # a fast EMA: a frozen target would show
ENGINES = ("ddp", "zero1", "zero2", "zero3")
PRECISIONS = ("no", "bf16")
TOLERANCE = {"no": 2e-4, "bf16": 3e-2}  # relative, on each step's loss vs one process

# (backbone, objective, engine, precision, compile, grad_accum); test_cases_cover_every_pair checks
# it. ZeRO-3 with compile is refused (REFUSED, checked by test_refused_pair_says_so in one line).
CASES = [
    ("vit_joint", "videomae", "ddp", "bf16", False, 2),
    ("vit_joint", "videomae", "zero1", "no", False, 1),
    ("vit_joint", "videomae", "zero2", "no", True, 2),
    ("vit_joint", "predictive_latent", "zero3", "no", False, 1),
    ("vit_divided", "videomae", "ddp", "no", True, 2),
    ("vit_divided", "predictive_latent", "zero1", "bf16", False, 2),
    ("vit_divided", "predictive_latent", "zero2", "bf16", True, 2),
    ("vit_divided", "predictive_latent", "zero3", "bf16", False, 1),
    ("mvit", "predictive_latent", "ddp", "no", True, 1),
    ("mvit", "videomae", "zero1", "bf16", False, 1),
    ("mvit", "videomae", "zero2", "bf16", False, 1),
    ("mvit", "videomae", "zero3", "bf16", False, 2),
    ("swin3d", "videomae", "ddp", "bf16", False, 1),
    ("swin3d", "videomae", "zero1", "no", True, 2),
    ("swin3d", "videomae", "zero2", "no", False, 1),
    ("swin3d", "predictive_latent", "zero3", "bf16", False, 1),
]
STEPS = 4


def case_name(case) -> str:
    backbone, objective, engine, precision, compiled, accum = case
    return f"{backbone}-{objective}-{engine}-{'fp32' if precision == 'no' else precision}" \
           f"{'-compile' if compiled else ''}-accum{accum}"


def overrides(case, out: Path) -> list[str]:
    backbone, objective, _, precision, compiled, accum = case
    name, model = BACKBONES[backbone]
    result = [f"model.name={name}", f"model.overrides={json.dumps(model)}", *OBJECTIVES[objective],
              f"train.mixed_precision={precision}", f"train.grad_accum={accum}", f"train.max_steps={STEPS}",
              "train.checkpoint_every=2", "train.image_every=2", "train.peak_tflops=1", f"train.output_dir={out}"]
    return result + (["train.compile=true", "train.compile_backend=aot_eager"] if compiled else [])


def launch_command(engine: str, *args: str, processes: int = 2) -> list[str]:
    common = ["--num_processes", str(processes), "--num_machines", "1", "--main_process_port", str(free_port()),
              "--mixed_precision", "no", "--dynamo_backend", "no"]
    if engine == "ddp":
        head = ["--multi_gpu"] if processes > 1 else []
    else:
        head = ["--use_deepspeed", "--deepspeed_config_file", str(ROOT / f"recipes/deepspeed/{engine}.json")]
    return [sys.executable, "-m", "accelerate.commands.launch", *head, *common, *args]


def launch_env(engine: str) -> dict:
    return env(ACCELERATE_USE_CPU="1") if engine == "ddp" else env(DS_ACCELERATOR="cpu")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("matrix")
    shards = tiny_shards(tmp / "shards")
    return tmp, tiny_recipe(tmp / "base.yaml", shards, tmp / "unused")


_launched: dict[str, str] = {}


def run_engine(workspace, engine: str) -> str:
    """Launch `engine`'s cases once (module-wide); the launcher's output."""
    if engine not in _launched:
        tmp, recipe = workspace
        cases = [{"recipe": str(recipe), "overrides": overrides(c, tmp / case_name(c))}
                 for c in CASES + [REFUSED] if c[2] == engine]
        spec = tmp / f"{engine}.json"
        spec.write_text(json.dumps(cases))
        cmd = launch_command(engine, "-m", "tests.train.train_matrix_worker", str(spec))
        proc = subprocess.run(cmd, cwd=ROOT, env=launch_env(engine), capture_output=True, text=True, timeout=600)
        _launched[engine] = proc.stdout + proc.stderr
    return _launched[engine]


def trace(path: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in path.read_text().splitlines() if line.strip()]


REFUSED = ("vit_joint", "videomae", "zero3", "no", True, 1)  # ZeRO-3 x torch.compile


def test_cases_cover_every_pair():
    levels = [list(BACKBONES), list(OBJECTIVES), list(ENGINES), list(PRECISIONS), [False, True], [1, 2]]
    for i, j in itertools.combinations(range(len(levels)), 2):
        seen = {(c[i], c[j]) for c in CASES + [REFUSED]}
        assert seen == set(itertools.product(levels[i], levels[j])), (i, j)


def test_refused_pair_says_so(workspace):
    pytest.importorskip("deepspeed")
    tmp, _ = workspace
    run_engine(workspace, "zero3")
    errors = (tmp / case_name(REFUSED) / "error-rank0.txt").read_text().strip().splitlines()
    assert errors[-1].startswith("pipeline.config.ConfigError: train.compile: not supported with DeepSpeed ZeRO-3")


@pytest.mark.parametrize("case", CASES, ids=case_name)
def test_case(workspace, case):
    if case[2] != "ddp":
        pytest.importorskip("deepspeed")
    tmp, recipe = workspace
    logs = run_engine(workspace, case[2])
    out = tmp / case_name(case)
    errors = sorted(out.glob("error-rank*.txt"))
    assert not errors, errors[0].read_text()[-3000:]
    first = out / "metrics.first.jsonl"
    assert first.is_file(), logs[-3000:]  # gloo may abort at exit after a correct run: the files decide
    # 1 + 2: the trace of two processes is the trace of one process fed both ranks' batches
    cfg = load_config(PretrainConfig, recipe, overrides(case, tmp / f"{case_name(case)}-reference"))
    train(cfg, build_objective, lambda c, rank, world, obj: BothRanks(c, obj.encoder.patch_size))
    reference = trace(tmp / f"{case_name(case)}-reference" / "metrics.jsonl")
    assert len(reference) == STEPS
    assert trace(first) == pytest.approx(reference, rel=TOLERANCE[case[3]])
    # 3: resumed from step 2, steps 3 and 4 again
    assert trace(out / "metrics.jsonl") == pytest.approx(trace(first), rel=1e-6)
    final = ck.latest_checkpoint(out / "checkpoints")
    assert final is not None and final.name == f"step-{STEPS:06d}"
    # pictures and MFU on every engine (under ZeRO-3 a rank-0-only forward used to hang the job)
    assert (out / "images" / f"step-{STEPS:06d}.png").is_file()
    assert all(json.loads(line)["mfu"] > 0 for line in first.read_text().splitlines())
    # 4: the backbone of the checkpoint is a fine-tuning encoder, with the trained weights
    encoder, _ = load_encoder(final)
    saved = ck.load_model_state(final)
    for name, value in encoder.state_dict().items():
        if f"encoder.{name}" in saved:
            torch.testing.assert_close(value, saved[f"encoder.{name}"], msg=name)
    if case[1] == "predictive_latent":  # the EMA target encoder moved (under ZeRO-3 too)
        initial = ck.load_model_state(ck.step_dir(out / "checkpoints", 2))
        moved = [k for k in saved if k.startswith("target_encoder.") and not torch.equal(saved[k], initial[k])]
        assert moved, "the EMA target encoder did not move between steps 2 and 4"


# -- elastic resume -----------------------------------------------------------------------------


def _keys_seen(out: Path) -> Counter:
    seen = Counter()
    for path in out.glob("keys-rank*.jsonl"):
        for line in path.read_text().splitlines():
            seen.update(json.loads(line)["keys"])
    return seen


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)])
def test_resume_on_another_number_of_processes_sees_each_sample_once(workspace, before, after):
    """The global batch is kept (4 clips: 2 x 2 or 1 x 4); 18 samples give 4 steps per epoch.
    Two steps before the checkpoint and two after it finish epoch 0: 16 different samples."""
    tmp, recipe = workspace
    out = tmp / f"elastic-{before}-{after}"
    for processes, steps in ((before, 2), (after, 4)):
        batch = 4 // processes
        case = {"recipe": str(recipe), "record_keys": True, "resume_check": False,
                "overrides": [f"train.output_dir={out}", f"train.max_steps={steps}", "train.checkpoint_every=2",
                              f"data.batch_size={batch}"]}
        spec = tmp / f"elastic-{before}-{after}-{processes}.json"
        spec.write_text(json.dumps([case]))
        cmd = launch_command("ddp", "-m", "tests.train.train_matrix_worker", str(spec), processes=processes)
        proc = subprocess.run(cmd, cwd=ROOT, env=launch_env("ddp"), capture_output=True, text=True, timeout=300)
        final = ck.latest_checkpoint(out / "checkpoints")
        assert final is not None and final.name == f"step-{steps:06d}", (proc.stdout + proc.stderr)[-3000:]
    assert f"resuming a {before}-process checkpoint on {after} processes" in proc.stderr + proc.stdout
    seen = _keys_seen(out)
    assert sum(seen.values()) == 16 and max(seen.values()) == 1, seen
    assert len(trace(out / "metrics.jsonl")) == 4


def test_a_launch_that_means_gpus_and_finds_none_stops_in_one_line(workspace):
    tmp, recipe = workspace
    cmd = launch_command("ddp", "-m", "pipeline.cli", "pretrain", str(recipe), "--set",
                         f"train.output_dir={tmp / 'no-gpu'}")
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "vssl pretrain: error: train.device" in line]
    assert proc.returncode != 0 and lines, (proc.stdout + proc.stderr)[-3000:]
    assert "launched as 2 processes but torch finds no usable GPU" in lines[0]
    assert not (tmp / "no-gpu" / "metrics.jsonl").exists()
