"""`vssl export RUN_OR_CKPT OUT --format hf`: one of our encoders as a Hugging Face transformers folder.

    vssl export runs/pretrain out/hf-videomae            # a run: its latest complete checkpoint
    vssl export runs/pretrain/checkpoints/step-000200 out/hf --overwrite
    vssl export out/vmae-backbone out/hf                 # a backbone folder (vssl convert writes them)
    python -c "from transformers import AutoModel; AutoModel.from_pretrained('out/hf-videomae')"
    from pipeline.models.export_cli import export_hf
    report = export_hf("runs/pretrain", "out/hf")        # print("\\n".join(report.lines()))

RUN_OR_CKPT is anything `model.pretrained` takes (pipeline/models/build.py load_encoder); what the
encoder becomes, or why it cannot, is pipeline/models/export.py. OUT gets config.json,
model.safetensors and README.md, a model card: architecture, objective, steps and the data
manifest hash that the checkpoint and its run.json record, and how to load it. Prints what was
written, the notes (values dropped or split by rule) and what stays behind (a decoder, a head);
a refusal is one line, exit 2.

OUT is written whole or not at all: into a hidden sibling `.OUT.partial-PID`, flushed, then
renamed. A killed export leaves no OUT, only its partial folder, which the next export to OUT
removes; an existing OUT is replaced only with --overwrite.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import save_file

from pipeline.config import DataConfig
from pipeline.durable import fsync_dir, fsync_file, replace_folder
from pipeline.models.backbones.vit import VideoViT
from pipeline.models.base import VideoBackbone
from pipeline.models.build import load_encoder
from pipeline.models.checkpoint import CheckpointError, read_json, run_kind, step_folder
from pipeline.models.export import ENCODER_ONLY, ExportError, HFModel, to_hf
from pipeline.train import checkpoint as run_checkpoint

LAYOUT = {  # the model card's word on what the outputs hold
    "VideoMAEModel": "`last_hidden_state` (B, t*h*w, D): the tokens in (t, h, w) order.",
    "VideoMAEForVideoClassification": "`AutoModel` gives `last_hidden_state` (B, t*h*w, D), the tokens in (t, h, w) "
                                      "order; `AutoModelForVideoClassification(...).logits` (B, D) is the pooled "
                                      "vector (fc_norm of the token mean; num_labels 0).",
    "VivitModel": "`last_hidden_state[:, 0]` is the cls token (the pooled vector), `[:, 1:]` the tokens in "
                  "(t, h, w) order. `pooler_output` is not part of this model.",
    "TimesformerModel": "`last_hidden_state[:, 0]` is the cls token (the pooled vector); `[:, 1:]` holds the "
                        "tokens in (h*w, t) order: `.reshape(B, h*w, t, D).transpose(1, 2)` gives (t, h, w).",
}


@dataclass
class Source:
    """Where an encoder came from, for the report and the model card."""

    path: str
    kind: str
    step: int | None = None
    run_config: dict | None = None  # the run's saved config (checkpoints only)
    manifest_sha256: str | None = None


@dataclass
class ExportReport:
    source: Source
    out: Path
    hf: HFModel
    left_behind: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        params = sum(v.numel() for v in self.hf.state.values())
        head = [f"exported {self.source.path} ({self.source.kind}) -> {self.out}: {self.hf.architecture} "
                f"(transformers {self.hf.model_type}), {params / 1e6:.2f}M parameters"]
        return head + [f"  note: {n}" for n in self.hf.notes] + [f"  {line}" for line in self.left_behind]


def read_source(path: str | Path) -> tuple[VideoBackbone, Source]:
    """The encoder at `path` (anything load_encoder takes) and what its checkpoint records."""
    model, report = load_encoder(path)
    source = Source(str(path), report.kind)
    folder = step_folder(path)
    if folder is None:
        return model, source
    meta = run_checkpoint.read_metadata(folder)
    source.step, source.run_config = int(meta["step"]), meta.get("config") or {}
    run_json = folder.parent.parent / "run.json"  # <run>/checkpoints/step-NNNNNN
    if run_json.is_file():
        source.manifest_sha256 = read_json(run_json).get("manifest_sha256")
    return model, source


def left_behind(source: Source) -> str | None:
    """The one line saying what of the checkpoint stays behind, if anything."""
    if source.run_config is None:
        return None
    if run_kind(source.run_config) == "finetune":
        return ENCODER_ONLY["finetune"]
    return ENCODER_ONLY.get(source.run_config.get("objective", {}).get("name"))


def model_card(model: VideoViT, source: Source, hf: HFModel, notes: list[str], out: Path) -> str:
    """README.md: what the model is, where it came from, how to load it."""
    cfg, run = model.config, source.run_config or {}
    data = run.get("data", {})
    pt, ph, pw = cfg["patch_size"]
    if not run:
        trained = "not recorded (not a run checkpoint)"
    elif run_kind(run) == "finetune":
        trained = f"fine-tuned: {json.dumps(run.get('task', {}))}"
    else:
        trained = run.get("objective", {}).get("name", "?")
        if trained == "videomae":
            trained += f" ({data.get('mask_type')} mask, ratio {data.get('mask_ratio')})"
    mean, std = data.get("mean", DataConfig().mean), data.get("std", DataConfig().std)
    rows = [("transformers class", f"`{hf.architecture}` (model_type `{hf.model_type}`)"),
            ("vssl architecture", f"`{cfg['name']}`: {cfg['attention']} attention, width {cfg['embed_dim']}, "
                                  f"depth {cfg['depth']}, {cfg['num_heads']} heads, tubelet {pt}x{ph}x{pw}, "
                                  f"{cfg['num_frames']} frames of {cfg['img_size']}x{cfg['img_size']}"),
            ("objective", trained), ("steps", source.step if source.step is not None else "not recorded"),
            ("data manifest sha256", source.manifest_sha256 or "not recorded"),
            ("input", f"(B, T, C, H, W) float, (x / 255 - mean) / std with mean {list(mean)}, std {list(std)}"),
            ("source", f"`{source.path}` ({source.kind})")]
    sections = [
        f"---\nlibrary_name: transformers\ntags: [video, self-supervised, vssl, {hf.model_type}]\n---\n",
        f"# {cfg['name']} as {hf.architecture}\n\nExported by `vssl export`.\n",
        "| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows),
        "## Load\n\n```python\nimport torch\nfrom transformers import AutoModel\n\n"
        f"model = AutoModel.from_pretrained(\"{out}\").eval()\n"
        f"video = torch.randn(1, {cfg['num_frames']}, {cfg['in_chans']}, {cfg['img_size']}, {cfg['img_size']})\n"
        "out = model(pixel_values=video)\n```\n\n" + LAYOUT[hf.architecture] + "\n",
        "## Notes\n\n" + "".join(f"- {n}\n" for n in notes) if notes else "",
        "## vssl config\n\n```json\n" + json.dumps(cfg, indent=1) + "\n```\n",
        "## Objective\n\n```json\n" + json.dumps(run["objective"], indent=1) + "\n```\n"
        if run.get("objective") else "",
    ]
    return "\n".join(s for s in sections if s)


def _remove_dead_exports(out: Path) -> None:
    """Partial / set-aside folders of exports to `out` whose process is gone (killed mid-write)."""
    for folder in [*out.parent.glob(f".{out.name}.partial-*"), *out.parent.glob(f".{out.name}.old-*")]:
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)


def write_folder(out: Path, files: dict[str, object], overwrite: bool) -> None:
    """`files` (name -> text, or a state dict for safetensors) written whole at `out`, or not at all."""
    out = out.absolute()  # its siblings are named after it (also for OUT ".")
    if out.exists() and not overwrite:
        raise ExportError(f"{out}: already exists (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_exports(out)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        for name, content in files.items():
            if isinstance(content, str):
                (partial / name).write_text(content)
            else:  # transformers reads safetensors only with format "pt" in their metadata
                save_file(content, str(partial / name), metadata={"format": "pt"})
            fsync_file(partial / name)
        fsync_dir(partial)
        replace_folder(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def export_hf(src: str | Path, out: str | Path, *, overwrite: bool = False) -> ExportReport:
    """Export the encoder at `src` to a transformers folder `out`; ExportError (one line) if it cannot."""
    out, src_path = Path(out), Path(src).resolve()
    if src_path == out.resolve() or out.resolve() in src_path.parents:
        raise ExportError(f"{out}: must not be SRC or hold it")
    try:
        model, source = read_source(src)
    except CheckpointError as e:
        raise ExportError(str(e)) from None
    hf = to_hf(model.eval())
    left = left_behind(source)
    report = ExportReport(source, out, hf, [left] if left else [])
    files = {"config.json": json.dumps(hf.config, indent=2) + "\n", "model.safetensors": hf.state,
             "README.md": model_card(model, source, hf, [*hf.notes, *report.left_behind], out)}
    write_folder(out, files, overwrite)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="RUN_OR_CKPT",
                        help="a vssl pretrain / finetune run, a step-NNNNNN folder or a backbone folder")
    parser.add_argument("out", metavar="OUT", help="folder to write (config.json, model.safetensors, README.md)")
    parser.add_argument("--format", default="hf", choices=["hf"], help="hf: Hugging Face transformers (default)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def run(args: argparse.Namespace) -> int:
    try:
        report = export_hf(args.src, args.out, overwrite=args.overwrite)
    except ExportError as e:
        print(f"vssl export: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(report.lines()))
    return 0
