"""`vssl quickstart`: the whole pipeline end to end on embedded synthetic data (what `make quickstart` runs).

    vssl quickstart --out runs/quickstart [--steps 200]

1. `vssl synth`    labelled synthetic videos (motion classes, boxes, masks) -> OUT/raw
2. `vssl shard`    the Kinetics-style CSV -> WebDataset shards + manifest -> OUT/shards
3. `vssl pretrain` pretrain/quickstart.yaml (VideoMAE, tiny ViT) -> OUT/pretrain
4. `vssl probe`    probe/synth.yaml, k-NN on frozen features, twice: --init OUT/pretrain
   -> OUT/probe/pretrained, and the same architecture at random init -> OUT/probe/random
   (what pretraining bought, measured as the field measures it; the fine-tuning verbs are in
   the README)

Every step is the real verb, called as a user would, and each is resumable: re-running skips
finished synthesis, finished shards and finished training steps (and reuses cached features).
The recipes are named as shipped (pipeline/recipe_files.py), so this runs from any install.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/quickstart", help="folder for everything it makes")
    parser.add_argument("--per-class", type=int, default=16, help="synthetic videos per class (8 classes)")
    parser.add_argument("--steps", type=int, default=150, help="pretraining steps")
    parser.add_argument("--workers", type=int, default=2, help="worker processes for synth, shard and loading")


def _step(title: str, argv: list[str]) -> None:
    from pipeline.cli import main

    print(f"\n== {title}: vssl {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    code = main(argv)
    if code != 0:
        raise SystemExit(f"vssl quickstart: step '{title}' failed (exit {code})")
    print(f"== {title}: done in {time.perf_counter() - t0:.0f} s", flush=True)


def plot_losses(records: list[dict], path: Path) -> Path:
    """A loss-curve PNG of metrics.jsonl records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("VideoMAE loss (normalised pixels)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    raw, shards, pretrain = out / "raw", out / "shards", out / "pretrain"
    if not (raw / "synth.json").is_file():
        _step("synthesize", ["synth", "--out", str(raw), "--per-class", str(args.per_class), "--frames", "16",
                             "--size", "64", "--seed", "0", "--workers", str(args.workers)])
    _step("shard", ["shard", str(raw / "kinetics.csv"), "--root", str(raw / "videos"), "--classes",
                    str(raw / "classes.txt"), "--out", str(shards), "--workers", str(args.workers),
                    "--inputs-per-shard", "32"])
    _step("pretrain", ["pretrain", "pretrain/quickstart.yaml", "--set", f"data.shards={shards}",
                       "--set", f"train.output_dir={pretrain}", "--set", f"train.max_steps={args.steps}",
                       "--set", f"data.num_workers={args.workers}"])
    probes = {}
    for name, init in (("pretrained", ["--init", str(pretrain)]), ("random", [])):
        _step(f"probe ({name})", ["probe", "probe/synth.yaml", *init, "--out",
                                  str(out / "probe" / name), "--set", f"data.shards={shards}", "--set",
                                  "probe.methods=[knn]", "--set", f"data.num_workers={args.workers}"])
        probes[name] = json.loads((out / "probe" / name / "probe.json").read_text())
    records = [json.loads(line) for line in (pretrain / "metrics.jsonl").read_text().splitlines() if line.strip()]
    pictures = sorted((pretrain / "images").glob("step-*.png"))
    print(f"\nquickstart: pretraining loss {records[0]['loss']:.3f} -> {records[-1]['loss']:.3f} "
          f"over {records[-1]['step']} steps")
    if pictures:
        print(f"quickstart: reconstructions (input / masked / reconstruction): {pictures[-1]}")
    print(f"quickstart: loss curve: {plot_losses(records, pretrain / 'loss.png')}")
    classes = probes["random"]["num_classes"]
    for k in probes["pretrained"]["knn"]:
        print(f"quickstart: frozen k-NN ({k}) top-1 on {probes['pretrained']['videos']['eval']} val videos: "
              f"pretrained {probes['pretrained']['knn'][k]:.3f}, random init {probes['random']['knn'][k]:.3f} "
              f"(chance {1 / classes:.3f})")
    print(f"quickstart: TensorBoard: tensorboard --logdir {out}")
    return 0
