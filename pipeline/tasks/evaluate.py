"""`vssl eval`: a task's standard metric for a fine-tuned checkpoint, with pictures.

    vssl eval recipes/finetune/classification.yaml --checkpoint runs/finetune/cls
    from pipeline.tasks.evaluate import evaluate
    report = evaluate(cfg, "runs/finetune/cls/checkpoints/step-000300")   # also writes eval.json

The checkpoint (a `vssl finetune` run folder -> its latest complete checkpoint, or a step folder)
decides the model: its metadata.json holds the recorded config (pipeline/tasks/finetune.py), so
the encoder architecture and head are rebuilt from it and its weights loaded with exact key and
shape checks. The recipe decides what to evaluate on: data (split task.eval_split, multi-view
data.eval_clips x data.eval_crops) and task.davis_root.

    classification  softmax averaged over every view of a video; top-1 / top-5, mean and
                    per-class accuracy; confusion-matrix picture
    segmentation    mIoU and per-class IoU over every labelled pixel; truth | prediction strips
    tracking        template = first frame's box, search = every later frame (OTB one-pass):
                    success AUC, precision@20px; truth | prediction box strips
    propagation     label propagation on a DAVIS-layout folder (no training): J, F, J&F; the
                    checkpoint may be any encoder pipeline/models/build.py load_encoder reads, or none
                    (a fresh model.name: the untrained baseline); truth | prediction strips.
                    task.propagation_scale > 1 enlarges small videos first, so an object spans
                    several token cells (64 px synthetic frames: 2-4)
Writes OUT/eval.json (atomically) and pictures under OUT/eval/; OUT defaults to the checkpoint's
run folder (else train.output_dir). The loader pads the last batches by wrapping around, so a
video seen before is skipped: every video counts once.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import ConfigError, DataConfig, FinetuneConfig, from_dict, to_dict, without_removed
from pipeline.data.normalize import normalize_video
from pipeline.durable import atomic_write
from pipeline.models.base import VideoBackbone
from pipeline.models.build import build_encoder, load_encoder
from pipeline.models.checkpoint import (CheckpointError, build_model, load_checked, read_safetensors, run_kind,
                                        step_folder)
from pipeline.tasks import davis, metrics, overlays
from pipeline.tasks.finetune import IGNORE_INDEX, TASK_ANNOTATIONS, build_task_model
from pipeline.tasks.heads import TaskModel
from pipeline.tasks.label_subset import source_classes
from pipeline.tasks.propagation import (PropagationConfig, PropagationResult, evaluate_sequence, segment_sequence,
                                        summarize)
from pipeline.tasks.track_pairs import sequence_pairs
from pipeline.tasks.tracking import decode_boxes
from pipeline.objectives.common import to_uint8_frames
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


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fresh_batches(data: DataConfig, patch_size: tuple[int, int, int], split: str,
                  annotations: tuple[str, ...] = ()):
    """Evaluation batches of `split` with every video's views counted once: (batch, rows to keep);
    the video normalised on the evaluation device, everything else on the CPU; `annotations` as
    build_loader takes them."""
    from pipeline.data.loader import build_loader

    device = _device()
    loader = build_loader(data, patch_size=patch_size, split=split, train=False, annotations=annotations,
                          device=None)  # uint8, normalised below straight from the workers' buffers
    seen: set[str] = set()
    for batch in loader:
        keep, fresh, previous = [], False, None
        for row, key in enumerate(batch["key"]):  # a video's views are consecutive rows
            if key != previous:
                fresh, previous = key not in seen, key
                seen.add(key)
            if fresh:
                keep.append(row)
        if keep:
            batch["video"] = normalize_video(batch["video"], device, data.mean, data.std)
            yield batch, torch.tensor(keep, dtype=torch.long)


def _frames(video: torch.Tensor, cfg: FinetuneConfig) -> np.ndarray:
    return to_uint8_frames(video.float().cpu(), cfg.data.mean, cfg.data.std)


@torch.no_grad()
def evaluate_classification(model: TaskModel, cfg: FinetuneConfig, out: Path) -> dict:
    device = _device()
    scores, keys, labels = [], [], {}
    for batch, keep in fresh_batches(cfg.data, model.encoder.patch_size, cfg.task.eval_split):
        scores.append(model(batch["video"][keep].to(device)).float().cpu())
        keys += [batch["key"][i] for i in keep]
        labels.update({batch["key"][i]: int(batch["label"][i]) for i in keep})
    videos, probs = metrics.aggregate_views(torch.cat(scores), keys)
    target = torch.tensor([labels[k] for k in videos])
    labelled = target >= 0
    probs, target = probs[labelled], target[labelled]
    num_classes = probs.shape[1]
    conf = metrics.confusion_matrix(probs.argmax(dim=1), target, num_classes)
    names = source_classes(cfg.data.shards, cfg.data.manifest) or [str(i) for i in range(num_classes)]
    names = names if len(names) == num_classes else [str(i) for i in range(num_classes)]
    picture = overlays.save_confusion_matrix(out / "eval" / "confusion.png", conf, names)
    per_class = metrics.per_class_accuracy(conf).tolist()
    return {"metrics": {**metrics.topk_accuracy(probs, target, (1, 5)),
                        "mean_class_accuracy": metrics.mean_class_accuracy(conf)},
            "per_class_accuracy": {n: (None if np.isnan(a) else a) for n, a in zip(names, per_class)},
            "videos": len(target), "views_per_video": cfg.data.eval_clips * cfg.data.eval_crops,
            "confusion": conf.tolist(), "pictures": [str(picture)]}


@torch.no_grad()
def evaluate_segmentation(model: TaskModel, cfg: FinetuneConfig, out: Path) -> dict:
    device, num_classes = _device(), cfg.task.num_classes
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    pictures, clips = [], 0
    for batch, keep in fresh_batches(cfg.data, model.encoder.patch_size, cfg.task.eval_split,
                                     TASK_ANNOTATIONS[cfg.task.kind]):
        if "masks" not in batch:
            raise ConfigError(f"data.shards: segmentation needs samples with masks ({batch['key'][0]} has none)")
        video, truth = batch["video"][keep], batch["masks"][keep].long()
        predicted = model(video.to(device)).argmax(dim=1).cpu()
        conf += metrics.confusion_matrix(predicted, truth, num_classes, ignore_index=IGNORE_INDEX)
        for i in range(len(keep)):
            if len(pictures) < cfg.task.pictures:
                shown = np.where(truth[i].numpy() == IGNORE_INDEX, 0, truth[i].numpy()).astype(np.uint8)
                pictures.append(str(overlays.save_mask_comparison(
                    out / "eval" / f"segmentation-{len(pictures)}.png", _frames(video[i], cfg),
                    predicted[i].to(torch.uint8).numpy(), shown)))
        clips += len(keep)
    iou = metrics.class_iou(conf).tolist()
    return {"metrics": {"mIoU": metrics.mean_iou(conf)},
            "class_iou": [None if np.isnan(v) else v for v in iou], "clips": clips, "pictures": pictures}


@torch.no_grad()
def evaluate_tracking(model: TaskModel, cfg: FinetuneConfig, out: Path) -> dict:
    device, task = _device(), cfg.task
    predicted_all, truth_all, pictures, clips = [], [], [], 0
    for batch, keep in fresh_batches(cfg.data, model.encoder.patch_size, cfg.task.eval_split,
                                     TASK_ANNOTATIONS[cfg.task.kind]):
        if "boxes" not in batch:
            raise ConfigError(f"data.shards: tracking needs samples with boxes ({batch['key'][0]} has none)")
        for i in keep.tolist():
            clip, boxes = batch["video"][i].to(device), batch["boxes"][i].to(device)
            pairs = sequence_pairs(clip, boxes, task.template_size, task.template_context)
            if not len(pairs.boxes):
                continue
            guess = decode_boxes(model(pairs.template, pairs.search), tuple(clip.shape[-2:])).cpu()
            predicted_all.append(guess)
            truth_all.append(pairs.boxes.cpu())
            clips += 1
            if len(pictures) < task.pictures:
                shown = boxes.cpu().nan_to_num(0.0)  # the template frame shows its given box
                track = shown.clone()
                track[pairs.frame.cpu()] = guess
                pictures.append(str(overlays.save_box_comparison(
                    out / "eval" / f"tracking-{len(pictures)}.png", _frames(clip, cfg), track.numpy(),
                    shown.numpy())))
    if not predicted_all:
        raise ConfigError(f"data.shards: no {task.eval_split} clip has two frames with known boxes")
    predicted, truth = torch.cat(predicted_all), torch.cat(truth_all)
    return {"metrics": {"success_auc": metrics.success_auc(predicted, truth),
                        "precision_20px": metrics.precision_at(predicted, truth, 20.0)},
            "pairs": len(truth), "clips": clips, "pictures": pictures}


def propagate_scaled(encoder: VideoBackbone, sequence: davis.DavisSequence, config: PropagationConfig,
                     scale: int) -> PropagationResult:
    """Label propagation on frames enlarged `scale` times (bicubic; the first mask by repetition),
    so a small video's objects span several token cells; predictions are scored at the original
    size (each enlarged block's centre pixel)."""
    if scale == 1:
        return evaluate_sequence(encoder, sequence, config)
    frames = torch.from_numpy(sequence.frames).permute(0, 3, 1, 2).float()
    frames = F.interpolate(frames, scale_factor=scale, mode="bicubic", align_corners=False)
    frames = frames.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    first = np.kron(sequence.masks[0], np.ones((scale, scale), dtype=np.uint8))
    masks = segment_sequence(encoder, frames, first, config)[:, scale // 2::scale, scale // 2::scale]
    return PropagationResult(sequence.name, masks, metrics.davis_sequence_scores(masks, sequence.masks))


@torch.no_grad()
def evaluate_propagation(encoder: VideoBackbone, cfg: FinetuneConfig, out: Path) -> dict:
    task = cfg.task
    config = PropagationConfig(context=task.propagation_context, topk=task.propagation_topk,
                               temperature=task.propagation_temperature, radius=task.propagation_radius)
    encoder = encoder.to(_device()).eval()
    results, pictures = [], []
    try:
        names = davis.sequence_names(task.davis_root, task.davis_split)
        for name in names:
            sequence = davis.read_sequence(task.davis_root, name)
            results.append(propagate_scaled(encoder, sequence, config, task.propagation_scale))
            if len(pictures) < task.pictures:
                pictures.append(str(overlays.save_mask_comparison(
                    out / "eval" / f"propagation-{name}.png", sequence.frames, results[-1].masks, sequence.masks)))
    except davis.DavisError as e:
        raise ConfigError(f"task.davis_root: {e}") from None
    return {"metrics": summarize(results), "sequences": {r.name: r.summary for r in results},
            "pictures": pictures}


def _write_json(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(report, indent=2)))


def propagation_encoder(cfg: FinetuneConfig, checkpoint: str | Path | None) -> tuple[VideoBackbone, str]:
    """(encoder, what it is): a fine-tuned model's encoder, any encoder checkpoint, or none given:
    the recipe's model (model.pretrained, else a fresh model.name)."""
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
    if kind == "propagation":
        encoder, source = propagation_encoder(cfg, checkpoint)
        return cfg, None, encoder, source, folder
    if checkpoint is None:
        raise ConfigError(f"--checkpoint: task.kind {kind} evaluates a `vssl finetune` checkpoint; give one")
    trained, model, folder = load_finetuned(checkpoint)
    if trained.task.kind != kind:
        raise ConfigError(f"task.kind: the recipe says {kind}, the checkpoint was fine-tuned for {trained.task.kind}")
    evaluation = {name: getattr(cfg.task, name) for name in EVAL_FIELDS}
    cfg = dataclasses.replace(cfg, model=trained.model, task=dataclasses.replace(trained.task, **evaluation))
    model = model.to(_device())
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
    with evaluation_autocast(cfg.train.mixed_precision, _device().type):  # as the run trained (bf16 on a GPU)
        if cfg.task.kind == "propagation":
            details = evaluate_propagation(encoder, cfg, out)
        else:
            evaluators = {"classification": evaluate_classification, "segmentation": evaluate_segmentation,
                          "tracking": evaluate_tracking}
            details = evaluators[cfg.task.kind](model, cfg, out)
    report = {"task": cfg.task.kind, "head": cfg.task.head, "checkpoint": str(folder or checkpoint),
              "model": source, **details, "output": str(out), "recipe": to_dict(cfg)}
    _write_json(out / "eval.json", report)
    return report
