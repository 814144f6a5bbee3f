"""`vssl eval`: a task's standard metric for a fine-tuned checkpoint, with pictures.

    vssl eval recipes/finetune/classification.yaml --checkpoint runs/finetune/cls
    from pipeline.tasks.evaluate import evaluate
    report = evaluate(cfg, "runs/finetune/cls/checkpoints/step-000300")   # also writes eval.json

The checkpoint (a `vssl finetune` run folder -> its latest complete checkpoint, or a step folder)
decides the model: its metadata.json holds the recorded config (pipeline/tasks/finetune.py), so
the encoder architecture and head are rebuilt from it and its weights loaded with exact key and
shape checks. The recipe decides what to evaluate on: data (split task.eval_split, multi-view
data.eval_clips x data.eval_crops) and task.davis_root. What each kind measures and draws is its
module's `evaluate` (pipeline/tasks/<task.kind>.py); a kind that trains nothing (propagation)
evaluates an encoder: any checkpoint pipeline/models/build.py load_encoder reads, or none (the
recipe's model.pretrained, else a fresh model.name: the untrained baseline).
Writes OUT/eval.json (atomically) and pictures under OUT/eval/; OUT defaults to the checkpoint's
run folder (else train.output_dir). The loader pads the last batches by wrapping around, so a
video seen before is skipped: every video counts once.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from pipeline.config import ConfigError, FinetuneConfig, from_dict, to_dict, without_removed
from pipeline.durable import atomic_write
from pipeline.models.base import VideoBackbone
from pipeline.models.build import build_encoder, load_encoder
from pipeline.models.checkpoint import (CheckpointError, build_model, load_checked, read_safetensors, run_kind,
                                        step_folder)
from pipeline.tasks.finetune import build_task_model
from pipeline.tasks.heads import TaskModel
from pipeline.tasks.kinds import eval_device, kind_module, trains
from pipeline.train import checkpoint as run_checkpoint
from pipeline.train.engine import evaluation_autocast

TASK_MODEL_PREFIX = "model."  # the task loss module holds the TaskModel as `model`
# task fields the recipe decides at evaluation; every other one comes from the checkpoint
EVAL_FIELDS = ("eval_split", "pictures", "davis_root", "davis_split", "propagation_context",
               "propagation_topk", "propagation_temperature", "propagation_radius", "propagation_scale")


def load_finetuned(checkpoint: str | Path) -> tuple[FinetuneConfig, TaskModel, Path]:
    """(recorded config, task model with the checkpoint's weights, step folder)."""
    folder = step_folder(checkpoint)
    if folder is None:
        raise CheckpointError(f"{checkpoint}: not a `vssl finetune` run or step folder (no metadata.json)")
    saved = run_checkpoint.read_metadata(folder)["config"]
    if run_kind(saved) != "finetune":
        raise CheckpointError(f"{folder}: a pretraining checkpoint; fine-tune it first (vssl finetune --init)")
    saved["model"]["pretrained"] = ""  # the weights come from this checkpoint, not the init
    try:
        cfg = from_dict(FinetuneConfig, without_removed(FinetuneConfig, saved))
    except ConfigError as e:
        raise CheckpointError(f"{folder / run_checkpoint.METADATA}: config: {e}") from None
    encoder = build_model({"name": cfg.model.name, **cfg.model.overrides}, str(folder))
    model = build_task_model(cfg, encoder)
    weights = folder / "model.safetensors"
    state = {k[len(TASK_MODEL_PREFIX):]: v for k, v in read_safetensors(weights).items()
             if k.startswith(TASK_MODEL_PREFIX)}
    load_checked(model, state, str(weights))
    return cfg, model.eval(), folder


def _write_json(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(report, indent=2)))


def encoder_to_evaluate(cfg: FinetuneConfig, checkpoint: str | Path | None) -> tuple[VideoBackbone, str]:
    """(encoder, what it is) for a kind that trains nothing: a fine-tuned model's encoder, any
    encoder checkpoint, or none given: the recipe's model (model.pretrained, else a fresh model.name)."""
    if checkpoint is None:
        return build_encoder(cfg.model, cfg.data.num_frames, cfg.data.crop_size), "recipe model"
    folder = step_folder(checkpoint)
    if folder is not None and run_kind(run_checkpoint.read_metadata(folder)["config"]) == "finetune":
        return load_finetuned(folder)[1].encoder, "fine-tuned encoder"
    return load_encoder(checkpoint)[0], "encoder checkpoint"


def _load(cfg: FinetuneConfig, checkpoint: str | Path | None):
    """(config to evaluate with, task model or None, encoder, what it is, step folder or None)."""
    kind = cfg.task.kind
    folder = step_folder(checkpoint) if checkpoint is not None else None
    if not trains(kind):
        encoder, source = encoder_to_evaluate(cfg, checkpoint)
        return cfg, None, encoder, source, folder
    if checkpoint is None:
        raise ConfigError(f"--checkpoint: task.kind {kind} evaluates a `vssl finetune` checkpoint; give one")
    trained, model, folder = load_finetuned(checkpoint)
    if trained.task.kind != kind:
        raise ConfigError(f"task.kind: the recipe says {kind}, the checkpoint was fine-tuned for {trained.task.kind}")
    evaluation = {name: getattr(cfg.task, name) for name in EVAL_FIELDS}
    cfg = dataclasses.replace(cfg, model=trained.model, task=dataclasses.replace(trained.task, **evaluation))
    model = model.to(eval_device())
    return cfg, model, model.encoder, "fine-tuned model", folder


def evaluate(cfg: FinetuneConfig, checkpoint: str | Path | None, out: str | Path | None = None) -> dict:
    """Evaluate `checkpoint` on the recipe's task and data; write OUT/eval.json; return the report
    (its "output" is OUT)."""
    try:
        cfg, model, encoder, source, folder = _load(cfg, checkpoint)
    except CheckpointError as e:
        raise ConfigError(f"--checkpoint: {e}") from None
    if out is None:
        in_run = folder is not None and folder.parent.name == "checkpoints"
        out = folder.parent.parent if in_run else cfg.train.output_dir
    out = Path(out)
    with evaluation_autocast(cfg.train.mixed_precision, eval_device().type):  # as the run trained (bf16 on a GPU)
        details = kind_module(cfg.task.kind).evaluate(encoder if model is None else model, cfg, out)
    report = {"task": cfg.task.kind, "head": cfg.task.head, "checkpoint": str(folder or checkpoint),
              "model": source, **details, "output": str(out), "recipe": to_dict(cfg)}
    _write_json(out / "eval.json", report)
    return report
