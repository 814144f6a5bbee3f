"""The transfer proof: do our pretrained encoders beat training from scratch with 10% of the labels?

    python -m benchmarks transfer            # under 30 min on 2 CPU cores
    python -m benchmarks transfer --quick    # a few minutes: smaller budgets, same metric keys

1. `vssl synth` (8 motion classes, 16 frames, 64 px) + `vssl shard` into a temp folder.
2. Pretrain a tiny joint ViT (patch 2x8x8, depth 4; a 3x3x3 conv stem fed frame differences, the
   smallest ViT that learns these motion classes at all on a CPU budget) on every training video,
   labels unused: VideoMAE (tube mask 0.75, hidden tokens encoded as a mask token, a learned
   precision per hidden token: objective.precision_weighted) and next-frame predictive (plus the
   latents of an EMA target encoder, objective.latent_target), both with frame-difference targets
   without per-patch normalisation, each with its own steps and batch.
3. With a class-balanced 10% of the training labels (task.label_fraction), fine-tune the same
   architecture from the VideoMAE encoder, the predictive encoder and from scratch, each with
   the same budget (steps, batch, lr) and the same fine-tuning seeds (head and scratch init,
   batch order, crops): classification (full fine-tuning, no layer decay, a linear head behind an
   affine-free BatchNorm: task.head_norm=batch) and segmentation (light decoder on the masks);
   evaluate on the whole val split, one clip per video. Classification runs every seed in
   `seeds`, segmentation those in `segment_seeds`.
4. Label propagation (no training) on the synthetic DAVIS val folder with each encoder, frames
   enlarged 3x and each token attending within 1 grid cell (the best of the settings measured,
   README); the frame-difference encoders get each frame's features from a window of the frames
   up to it (pipeline/tasks/features.py: sequence_features).

Metrics (points = percentage points; means over the fine-tuning seeds; every peer is measured in
this run):
    videomae_minus_scratch_top1, predictive_minus_scratch_top1   val top-1 difference, points
    jf_gain, predictive_jf_gain       VideoMAE / predictive J&F minus untrained-encoder J&F, points
    jf_copy_first_mask                J&F of repeating frame 0's mask: the bar features must clear
    miou_gain, predictive_miou_gain   VideoMAE / predictive mIoU minus scratch mIoU, points
A table with every score (the mean, then each seed's), the seeds and the budgets is printed
before the JSON line.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmarks.common import synthetic_shards
from pipeline.config import FinetuneConfig, PretrainConfig, from_dict
from pipeline.tasks import davis as davis_io
from pipeline.tasks.evaluate import evaluate
from pipeline.tasks.metrics import davis_sequence_scores, davis_summary
from pipeline.tasks.finetune import finetune
from pipeline.train.pretrain_cli import build_objective, build_train_loader
from pipeline.train.trainer import train

SEED = 0
MODEL = {"name": "vit_tiny_joint", "overrides": {"patch_size": [2, 8, 8], "depth": 4, "num_frames": 8,
                                                 "img_size": 64, "stem": "conv", "input_transform": "frame_diff"}}
OBJECTIVES = {"videomae": {"target": "frame_diff", "norm_pix_loss": False, "precision_weighted": True},
              "predictive": {"target": "frame_diff", "norm_pix_loss": False, "latent_target": True}}
# VideoMAE encodes every token, a hidden one as a mask token (SimMIM-style), so its encoder sees as
# many tokens as in fine-tuning. Measured outside this benchmark (same data, 200 classification
# steps, seed 0; scratch 20.8% top-1): 500 steps at batch 8 24.0%, 250 at batch 16 (the same
# compute) about scratch's, 400 at batch 16 26.0%; visible-only encoding 12.0% (tube 0.9, 750
# steps) and 20.0% (multiblock 0.8); no norm_pix 18.5% (22.0% at mask 0.75); plus an EMA latent
# target (objective.latent_target) 21.3%. The fine-tuned model is the same either way (the mask
# token goes unused). Norm-pix frame differences stay at the predict-zero loss whatever the mask
# (README); the learned precision (with raw differences) is what VideoMAE learns here: tube 0.75
# 30.0% (seed 1: 27.0%, scratch 19.3%), tube 0.9 27.2%, tube 0.5 24.7%, random 0.9 25.3%, plus
# the latent target 24.0%.
PRETRAIN_MODEL = {"videomae": {"mask_mode": "mask_token"}}
MASK_RATIO = {"videomae": 0.75, "predictive": 0.9}  # the predictive objective takes no mask
PRETRAIN_LR = {"videomae": 1.5e-3, "predictive": 1e-3}
INITS = ("videomae", "predictive", "scratch")


@dataclass(frozen=True)
class Budget:
    per_class: int  # synthetic videos per class (a fifth of them val)
    videomae_steps: int
    predictive_steps: int
    videomae_batch: int
    predictive_batch: int
    classify_steps: int
    segment_steps: int
    finetune_batch: int
    propagation_sequences: int  # the first ones of the DAVIS val split
    seeds: tuple[int, ...] = (0, 1)  # classification fine-tuning seeds (head / scratch init, batches, crops)
    segment_seeds: tuple[int, ...] = (0,)
    label_fraction: float = 0.1

    def pretraining(self, objective: str) -> tuple[int, int]:
        """(steps, batch) of one objective's pretraining."""
        return {"videomae": (self.videomae_steps, self.videomae_batch),
                "predictive": (self.predictive_steps, self.predictive_batch)}[objective]


BUDGETS = {
    "quick": Budget(per_class=24, videomae_steps=40, predictive_steps=30, videomae_batch=8, predictive_batch=16,
                    classify_steps=20, segment_steps=10, finetune_batch=8, propagation_sequences=8),
    "full": Budget(per_class=375, videomae_steps=500, predictive_steps=400, videomae_batch=8, predictive_batch=16,
                   classify_steps=170, segment_steps=60, finetune_batch=16, propagation_sequences=16),
}


def make_dataset(root: Path, budget: Budget) -> tuple[Path, Path]:
    """(shards folder, DAVIS folder) of a fresh synthetic dataset; the DAVIS folder gets a split
    "bench" of its first `propagation_sequences` val sequences."""
    raw, shards = synthetic_shards(root, budget.per_class, val_fraction=0.2, max_samples=64, seed=SEED)
    sets = raw / "davis" / "ImageSets" / "2017"
    val = (sets / "val.txt").read_text().splitlines()
    (sets / "bench.txt").write_text("".join(f"{name}\n" for name in val[:budget.propagation_sequences]))
    return shards, raw / "davis"


def data_section(shards: Path, batch: int, seed: int = SEED, **extra) -> dict:
    return {"shards": str(shards), "num_frames": 8, "frame_stride": 2, "crop": "multiscale", "crop_size": 64,
            "flip_prob": 0.0, "batch_size": batch, "num_workers": 1, "decode_timeout_s": 0.0, "seed": seed,
            **extra}


def pretrain(root: Path, shards: Path, objective: str, budget: Budget) -> Path:
    out = root / f"pretrain-{objective}"
    steps, batch = budget.pretraining(objective)
    cfg = from_dict(PretrainConfig, {
        "data": data_section(shards, batch, mask_type="tube", mask_ratio=MASK_RATIO[objective]),
        "model": {**MODEL, "overrides": {**MODEL["overrides"], **PRETRAIN_MODEL.get(objective, {})}},
        "objective": {"name": objective, "decoder_dim": 128, "decoder_depth": 2, "decoder_heads": 4,
                      **OBJECTIVES[objective]},
        "train": {"output_dir": str(out), "max_steps": steps, "lr": PRETRAIN_LR[objective],
                  "warmup_steps": max(1, steps // 10), "weight_decay": 0.05, "checkpoint_every": 100,
                  "image_every": steps, "seed": SEED}})
    train(cfg, build_objective, build_train_loader)
    return out


def task_config(root: Path, shards: Path, davis: Path, kind: str, init: str, encoders: dict[str, Path],
                steps: int, budget: Budget, seed: int = SEED) -> FinetuneConfig:
    task, lr = {"classification": ({"head": "linear", "head_norm": "batch", "label_smoothing": 0.1}, 1e-3),
                "segmentation": ({"head": "decoder"}, 3e-3),
                "propagation": ({"davis_root": str(davis), "davis_split": "bench", "propagation_scale": 3,
                                 "propagation_radius": 1}, 1e-3)}[kind]  # propagation trains nothing
    return from_dict(FinetuneConfig, {
        "data": data_section(shards, budget.finetune_batch, seed, mask_type="none", eval_clips=1),
        "model": {**MODEL, "pretrained": str(encoders.get(init, ""))},
        "task": {"kind": kind, "label_fraction": budget.label_fraction, "pictures": 2, **task},
        "train": {"output_dir": str(root / f"{kind}-{init}-seed{seed}"), "max_steps": max(steps, 1), "lr": lr,
                  "warmup_steps": max(1, steps // 10), "weight_decay": 0.05, "betas": [0.9, 0.999],
                  "checkpoint_every": 100, "image_every": max(steps, 1), "seed": seed}})


def score(cfg: FinetuneConfig) -> dict[str, float]:
    """Fine-tune (not for propagation) then evaluate; the task's metrics."""
    if cfg.task.kind == "propagation":
        torch.manual_seed(cfg.train.seed)  # the untrained encoder's init
        return evaluate(cfg, cfg.model.pretrained or None, cfg.train.output_dir)["metrics"]
    result = finetune(cfg)
    return evaluate(cfg, result.output_dir)["metrics"]


def copy_first_mask_jf(davis: Path) -> float:
    """J&F of the no-feature baseline that repeats frame 0's mask through the video (context for the
    propagation row: features must beat it to be worth anything)."""
    scores = []
    for name in davis_io.sequence_names(davis, "bench"):
        sequence = davis_io.read_sequence(davis, name)
        scores.append(davis_sequence_scores(sequence.masks[:1].repeat(len(sequence.masks), 0), sequence.masks))
    return davis_summary(scores)["J&F"]


def run(quick: bool) -> dict:
    budget = BUDGETS["quick" if quick else "full"]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the loader's decoding of 64 px clips takes a few % of a core
    seconds: dict[str, float] = {}
    scores: dict[str, dict[str, list[dict[str, float]]]] = {}  # kind -> init -> one metrics dict per seed
    try:
        with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp:
            root = Path(tmp)
            start = time.perf_counter()
            shards, davis = make_dataset(root, budget)
            seconds["data"] = time.perf_counter() - start
            encoders = {}
            for objective in ("videomae", "predictive"):
                start = time.perf_counter()
                encoders[objective] = pretrain(root, shards, objective, budget)
                seconds[f"pretrain_{objective}"] = time.perf_counter() - start
            for kind, steps, seeds in (("classification", budget.classify_steps, budget.seeds),
                                       ("segmentation", budget.segment_steps, budget.segment_seeds),
                                       ("propagation", 0, (SEED,))):  # trains nothing: one run
                start = time.perf_counter()
                scores[kind] = {init: [score(task_config(root, shards, davis, kind, init, encoders, steps, budget, seed))
                                       for seed in seeds] for init in INITS}
                seconds[kind] = time.perf_counter() - start
            copy_jf = 100 * copy_first_mask_jf(davis)
    finally:
        torch.set_num_threads(threads)
    mean = {kind: {init: {name: 100 * sum(run[name] for run in runs) / len(runs) for name in runs[0]}
                   for init, runs in by_init.items()} for kind, by_init in scores.items()}
    print_table(budget, scores, mean, seconds)
    print(f"transfer: reference J&F of frame 0's mask repeated (no features): {copy_jf:.1f}")
    top1, miou, jf = ({init: mean[kind][init][name] for init in INITS}
                      for kind, name in (("classification", "top1"), ("segmentation", "mIoU"), ("propagation", "J&F")))
    metrics = {"videomae_minus_scratch_top1": round(top1["videomae"] - top1["scratch"], 1),
               "predictive_minus_scratch_top1": round(top1["predictive"] - top1["scratch"], 1),
               "jf_gain": round(jf["videomae"] - jf["scratch"], 1),
               "miou_gain": round(miou["videomae"] - miou["scratch"], 1),
               "predictive_jf_gain": round(jf["predictive"] - jf["scratch"], 1),
               "predictive_miou_gain": round(miou["predictive"] - miou["scratch"], 1),
               **{f"top1_{init}": round(top1[init], 1) for init in INITS},
               "jf_copy_first_mask": round(copy_jf, 1),
               "classification_seeds": len(budget.seeds),
               "minutes": round(sum(seconds.values()) / 60, 1)}
    goals = {"videomae_minus_scratch_top1": ">= 10", "predictive_minus_scratch_top1": ">= 10",
             "jf_gain": "> 0", "miou_gain": "> 0", "predictive_jf_gain": "> 0", "predictive_miou_gain": "> 0",
             "minutes": "< 30 (full)"}
    return {"metrics": metrics, "goals": goals}


def print_table(budget: Budget, scores: dict, mean: dict, seconds: dict) -> None:
    """Per init: the mean over seeds (`mean`, in %), then each seed's score in brackets."""
    rows = [("classification top-1 %", "classification", "top1"), ("classification top-5 %", "classification", "top5"),
            ("segmentation mIoU %", "segmentation", "mIoU"), ("propagation J&F %", "propagation", "J&F")]
    print(f"transfer: data/pretraining seed {SEED}, budgets {asdict(budget)}")
    print(f"transfer: {'':<24}" + "".join(f"{init:>24}" for init in INITS))
    for title, kind, name in rows:
        cells = []
        for init in INITS:
            runs = scores[kind][init]
            each = f" ({', '.join(f'{100 * run[name]:.1f}' for run in runs)})" if len(runs) > 1 else ""
            cells.append(f"{mean[kind][init][name]:.1f}{each}")
        print(f"transfer: {title:<24}" + "".join(f"{cell:>24}" for cell in cells))
    print("transfer: seconds " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
