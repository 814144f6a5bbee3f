"""What pretraining buys, measured as the field measures it: frozen probes, then fine-tuning with
10% of the labels, segmentation and label propagation, on the synthetic test bed.

    python -m benchmarks transfer            # at most 45 min on 2 CPU cores
    python -m benchmarks transfer --quick    # a few minutes: smaller budgets, same metric keys
    python -m benchmarks transfer --device cuda   # scaled up for one GPU (<= 10 min there)

1. `vssl synth` with its default settings (8 motion classes) + `vssl shard`.
2. Encoders, one architecture (MODEL, a tiny joint ViT with 2x8x8 tubelets on RGB): VideoMAE as
   in the paper (tube mask 0.9, per-patch normalised pixel targets, visible tokens only), the
   next-frame predictive objective with its defaults, the same architecture at random init, and a
   supervised reference trained from scratch with every label.
3. Frozen evaluation of each encoder (pipeline/probe, `vssl probe`): weighted k-NN (k 20), linear
   and attentive probes, each grid chosen on held-out training labels.
4. With a class-balanced 10% of the training labels: full fine-tuning from each pretrained
   encoder and from scratch, the same budget and seeds (`seeds`); segmentation (light decoder on
   the masks) likewise, one seed; label propagation (no training) on the DAVIS-layout val
   folder, pretrained vs untrained encoder.

Metrics (points = percentage points; every peer measured in this run):
    videomae_probe_gain, predictive_probe_gain            attentive-probe top-1 minus random init's
    videomae_minus_scratch_top1, predictive_minus_scratch_top1   10%-label fine-tuning, mean of seeds
    miou_gain, predictive_miou_gain, jf_gain, predictive_jf_gain   vs scratch / untrained
    and every raw score: {knn,linear,attentive}_{encoder}, finetune_top1_{init}, miou_*, jf_*.
A table with every score, the seeds (mean, spread) and the budgets is printed before the JSON.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmarks.common import synthetic_shards
from pipeline.config import FinetuneConfig, PretrainConfig, ProbeConfig, from_dict, read_yaml
from pipeline.probe.run import run_probes
from pipeline.recipe_files import recipe_path
from pipeline.tasks.evaluate import evaluate
from pipeline.tasks.finetune import finetune
from pipeline.tasks.kinds import trains
from pipeline.train.pretrain_cli import build_objective, build_train_loader
from pipeline.train.trainer import train

SEED = 0
MODEL = {"name": "vit_tiny_joint", "overrides": {"patch_size": [2, 8, 8], "depth": 6}}
OBJECTIVES = {"videomae": {"name": "videomae", "decoder_dim": 128, "decoder_depth": 2, "decoder_heads": 4},
              "predictive": {"name": "predictive", "decoder_dim": 128, "decoder_depth": 2, "decoder_heads": 4}}
ENCODERS = ("videomae", "predictive", "random", "supervised")
INITS = ("videomae", "predictive", "scratch")
CLIP = (8, 2)  # frames, stride: the whole 16-frame synthetic video, as the quickstart samples it


@dataclass(frozen=True)
class Budget:
    per_class: int  # synthetic videos per class (a fifth of them val)
    pretrain_steps: int
    pretrain_batch: int
    supervised_steps: int  # the all-labels reference
    finetune_steps: int  # 10% labels
    segment_steps: int
    finetune_batch: int
    propagation_sequences: int  # the first ones of the DAVIS val split
    seeds: tuple[int, ...] = (0, 1, 2)  # fine-tuning seeds (head / scratch init, batches, crops)
    label_fraction: float = 0.1
    workers: int = 2
    decode_timeout_s: float = 30.0  # 0: decode in the loader worker (no helper process)
    probe_epochs: tuple[int, int] = (100, 20)  # linear, attentive


BUDGETS = {
    "quick": Budget(per_class=24, pretrain_steps=40, pretrain_batch=8, supervised_steps=40, finetune_steps=20,
                    segment_steps=10, finetune_batch=8, propagation_sequences=6, seeds=(0, 1)),
    "full": Budget(per_class=100, pretrain_steps=600, pretrain_batch=16, supervised_steps=600, finetune_steps=200,
                   segment_steps=60, finetune_batch=16, propagation_sequences=16),
    "cuda": Budget(per_class=200, pretrain_steps=3000, pretrain_batch=32, supervised_steps=2000,
                   finetune_steps=400, segment_steps=200, finetune_batch=32, propagation_sequences=24, workers=8),
}


def data_section(shards: Path, batch: int, budget: Budget, seed: int = SEED, **extra) -> dict:
    return {"shards": str(shards), "num_frames": CLIP[0], "frame_stride": CLIP[1], "crop": "multiscale", "crop_size": 64,
            "flip_prob": 0.0, "batch_size": batch, "num_workers": budget.workers, "seed": seed,
            "decode_timeout_s": budget.decode_timeout_s, **extra}


def pretrain(root: Path, shards: Path, objective: str, budget: Budget) -> Path:
    out = root / f"pretrain-{objective}"
    steps = budget.pretrain_steps
    cfg = from_dict(PretrainConfig, {
        "data": data_section(shards, budget.pretrain_batch, budget, mask_type="tube", mask_ratio=0.9),
        "model": MODEL, "objective": OBJECTIVES[objective],
        "train": {"output_dir": str(out), "max_steps": steps, "lr": 1.5e-3, "warmup_steps": max(1, steps // 10),
                  "weight_decay": 0.05, "checkpoint_every": steps, "image_every": steps, "seed": SEED}})
    train(cfg, build_objective, build_train_loader)
    return out


def propagation_settings() -> dict:
    """The propagation_* settings of the shipped propagation recipe (frame enlargement, window,
    top-k): the benchmark evaluates as a user running that recipe on these videos does."""
    task = read_yaml(recipe_path("finetune/propagation.yaml"))["task"]
    return {key: value for key, value in task.items() if key.startswith("propagation_")}


def task_config(root: Path, shards: Path, davis: Path, kind: str, init: Path | None, steps: int, budget: Budget,
                seed: int, label_fraction: float, name: str) -> FinetuneConfig:
    task, lr = {"classification": ({"head": "linear", "head_norm": "batch", "label_smoothing": 0.1}, 1e-3),
                "segmentation": ({"head": "decoder"}, 3e-3),
                "propagation": ({"davis_root": str(davis), "davis_split": "bench", **propagation_settings()},
                                1e-3)}[kind]
    return from_dict(FinetuneConfig, {
        "data": data_section(shards, budget.finetune_batch, budget, seed, mask_type="none", eval_clips=1),
        "model": {**MODEL, "pretrained": str(init or "")},
        "task": {"kind": kind, "label_fraction": label_fraction, "pictures": 2, **task},
        "train": {"output_dir": str(root / f"{kind}-{name}-seed{seed}"), "max_steps": max(steps, 1), "lr": lr,
                  "warmup_steps": max(1, steps // 10), "weight_decay": 0.05, "betas": [0.9, 0.999],
                  "checkpoint_every": max(steps, 1), "image_every": max(steps, 1), "seed": seed}})


def score(cfg: FinetuneConfig) -> dict[str, float]:
    """Fine-tune (a kind that trains: not propagation) then evaluate; the task's metrics, in %."""
    if not trains(cfg.task.kind):
        torch.manual_seed(cfg.train.seed)  # the untrained encoder's init
        metrics = evaluate(cfg, cfg.model.pretrained or None, cfg.train.output_dir)["metrics"]
    else:
        metrics = evaluate(cfg, finetune(cfg).output_dir)["metrics"]
    return {k: 100 * v for k, v in metrics.items() if isinstance(v, float)}


def probe(root: Path, shards: Path, name: str, init: Path | None, budget: Budget) -> dict[str, float]:
    cfg = from_dict(ProbeConfig, {
        "data": data_section(shards, 16, budget, crop="center", mask_type="none", eval_clips=2),
        "model": {**MODEL, "pretrained": str(init or "")},
        "probe": {"knn_k": [20], "max_tokens": 64, "output_dir": str(root / f"probe-{name}"), "seed": SEED,
                  "linear_epochs": budget.probe_epochs[0], "attentive_epochs": budget.probe_epochs[1]}})
    report = run_probes(cfg)
    return {"knn": 100 * report["knn"]["k20"], "linear": 100 * report["linear"]["top1"],
            "attentive": 100 * report["attentive"]["top1"]}


def run(quick: bool, device: str = "cpu") -> dict:
    budget = BUDGETS["cuda" if device == "cuda" else "quick" if quick else "full"]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    seconds: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp:
            root = Path(tmp)
            clock = time.perf_counter()
            raw, shards = synthetic_shards(root, budget.per_class, val_fraction=0.2, max_samples=64, seed=SEED)
            davis = raw / "davis"
            sets = davis / "ImageSets" / "2017"
            val = (sets / "val.txt").read_text().splitlines()
            (sets / "bench.txt").write_text("".join(f"{name}\n" for name in val[:budget.propagation_sequences]))
            seconds["data"], clock = time.perf_counter() - clock, time.perf_counter()
            encoders: dict[str, Path | None] = {"random": None}
            for objective in ("videomae", "predictive"):
                encoders[objective] = pretrain(root, shards, objective, budget)
                seconds[f"pretrain_{objective}"], clock = time.perf_counter() - clock, time.perf_counter()
            supervised = task_config(root, shards, davis, "classification", None, budget.supervised_steps, budget,
                                     SEED, 1.0, "supervised")
            supervised_top1 = score(supervised)["top1"]
            encoders["supervised"] = Path(supervised.train.output_dir)
            seconds["supervised"], clock = time.perf_counter() - clock, time.perf_counter()
            probes = {name: probe(root, shards, name, encoders[name], budget) for name in ENCODERS}
            seconds["probes"], clock = time.perf_counter() - clock, time.perf_counter()
            inits = {"videomae": encoders["videomae"], "predictive": encoders["predictive"], "scratch": None}
            tuned = {init: [score(task_config(root, shards, davis, "classification", path, budget.finetune_steps,
                                              budget, seed, budget.label_fraction, init))["top1"]
                            for seed in budget.seeds] for init, path in inits.items()}
            seconds["finetune"], clock = time.perf_counter() - clock, time.perf_counter()
            miou = {init: score(task_config(root, shards, davis, "segmentation", path, budget.segment_steps, budget,
                                            SEED, budget.label_fraction, init))["mIoU"] for init, path in inits.items()}
            seconds["segmentation"], clock = time.perf_counter() - clock, time.perf_counter()
            jf = {init: score(task_config(root, shards, davis, "propagation", path, 0, budget, SEED, 1.0, init))["J&F"]
                  for init, path in inits.items()}
            seconds["propagation"] = time.perf_counter() - clock
    finally:
        torch.set_num_threads(threads)
    mean = {init: statistics.mean(v) for init, v in tuned.items()}
    print_table(budget, probes, supervised_top1, tuned, miou, jf, seconds)
    metrics = {f"{p}_probe_gain": round(probes[p]["attentive"] - probes["random"]["attentive"], 1)
               for p in ("videomae", "predictive")}
    metrics.update({f"{p}_minus_scratch_top1": round(mean[p] - mean["scratch"], 1) for p in ("videomae", "predictive")})
    metrics.update({"miou_gain": round(miou["videomae"] - miou["scratch"], 1),
                    "predictive_miou_gain": round(miou["predictive"] - miou["scratch"], 1),
                    "jf_gain": round(jf["videomae"] - jf["scratch"], 1),
                    "predictive_jf_gain": round(jf["predictive"] - jf["scratch"], 1)})
    metrics.update({f"{method}_{name}": round(value, 1) for name, row in probes.items() for method, value in row.items()})
    metrics.update({f"finetune_top1_{init}": round(value, 1) for init, value in mean.items()})
    metrics.update({f"miou_{init}": round(v, 1) for init, v in miou.items()})
    metrics.update({f"jf_{init}": round(v, 1) for init, v in jf.items()})
    metrics.update({"supervised_top1": round(supervised_top1, 1), "seeds": len(budget.seeds),
                    "minutes": round(sum(seconds.values()) / 60, 1)})
    goals = {"videomae_probe_gain": ">= 25", "predictive_probe_gain": ">= 25",
             "videomae_minus_scratch_top1": ">= 5 (aim 10)", "predictive_minus_scratch_top1": ">= 5 (aim 10)",
             "miou_gain": "> 0", "predictive_miou_gain": "> 0", "jf_gain": "> 0", "predictive_jf_gain": "> 0",
             "minutes": "<= 45 (2 CPU cores), <= 10 (--device cuda)"}
    return {"metrics": metrics, "goals": goals}


def print_table(budget: Budget, probes: dict, supervised_top1: float, tuned: dict, miou: dict, jf: dict,
                seconds: dict) -> None:
    print(f"transfer: data/pretraining seed {SEED}, model {MODEL}, budgets {asdict(budget)}")
    print(f"transfer: frozen encoder top-1 %  {'':<4}" + "".join(f"{name:>12}" for name in ENCODERS))
    for method in ("knn", "linear", "attentive"):
        print(f"transfer:   {method + (' (k 20)' if method == 'knn' else ''):<30}"
              + "".join(f"{probes[name][method]:>12.1f}" for name in ENCODERS))
    print(f"transfer: supervised reference (all labels, fine-tuned) val top-1 {supervised_top1:.1f}")
    print(f"transfer: {int(budget.label_fraction * 100)}% labels {'':<22}" + "".join(f"{i:>30}" for i in INITS))
    cells = [f"{statistics.mean(v):.1f} +- {statistics.pstdev(v):.1f} ({', '.join(f'{x:.1f}' for x in v)})"
             for v in tuned.values()]
    print(f"transfer:   fine-tune top-1 %{'':<16}" + "".join(f" {c:>29}" for c in cells))
    print(f"transfer:   segmentation mIoU %{'':<13}" + "".join(f"{miou[i]:>30.1f}" for i in INITS))
    print(f"transfer:   propagation J&F %{'':<15}" + "".join(f"{jf[i]:>30.1f}" for i in INITS)
          + "   (scratch = untrained encoder)")
    print("transfer: seconds " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))

