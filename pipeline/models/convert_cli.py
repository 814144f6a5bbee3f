"""`vssl convert SRC DST`: import a checkpoint into a vssl backbone folder (safetensors + json).

    vssl convert hf-videomae-base/ out/videomae-b                  # HF VideoMAE / TimeSformer / ViViT
    vssl convert videomae_pretrain.pth out/vmae --num-heads 12     # original VideoMAE layout
    vssl convert vit_s16.safetensors out/vit-s-video --attention divided --inflate average --num-frames 16
    vssl convert out/vmae out/vmae-32f --num-frames 32             # re-save for another clip length

Prints what was imported, the source keys left unused (heads, decoders) and the values filled by
rule; exits 2 with a one-line error when the source does not fit (pipeline/models/convert.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.models.checkpoint import CheckpointError, save_backbone
from pipeline.models.convert import import_checkpoint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="HF folder, vssl backbone folder, VideoMAE .pth or timm ViT weights")
    parser.add_argument("dst", help="output folder (backbone.safetensors + backbone.json)")
    parser.add_argument("--num-frames", type=int, help="clip length to build the model for")
    parser.add_argument("--img-size", type=int, help="input resolution to build the model for")
    parser.add_argument("--num-heads", type=int, help="attention heads, for state dicts that do not record them")
    parser.add_argument("--attention", default="joint", choices=["joint", "divided"],
                        help="timm ViT inflation target (default joint)")
    parser.add_argument("--inflate", default="center", choices=["center", "average"],
                        help="timm ViT inflation of the patch kernel (default center)")
    parser.add_argument("--tubelet", type=int, default=2, help="timm ViT inflation: frames per tubelet")


def run(args: argparse.Namespace) -> int:
    sizes = {k: v for k, v in (("num_frames", args.num_frames), ("img_size", args.img_size)) if v is not None}
    if Path(args.dst).resolve() == Path(args.src).resolve():
        print("vssl convert: error: DST must differ from SRC", file=sys.stderr)
        return 2
    try:
        model, report = import_checkpoint(args.src, num_heads=args.num_heads, attention=args.attention,
                                          inflate=args.inflate, tubelet=args.tubelet, **sizes)
    except CheckpointError as e:
        print(f"vssl convert: error: {e}", file=sys.stderr)
        return 2
    save_backbone(model, args.dst)
    print("\n".join(report.lines()))
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.dst}: {model.config['name']} ({model.attention} attention), {params / 1e6:.1f}M parameters")
    return 0
