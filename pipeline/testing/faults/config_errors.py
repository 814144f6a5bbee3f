"""Bad configuration through `vssl pretrain`: every typo, wrong type, missing path and impossible
combination is exit code 2 and ONE stderr line naming the key; nothing trains, nothing is written.

    report = bad_configs(setup)       # setup: pipeline.testing.faults.training.TrainSetup (tiny shards + recipe)

The cases run in-process through pipeline.cli.main (each may get as far as building the loader or
the model); one also runs as a real process to show the exit status and the absence of a traceback.
"""

from __future__ import annotations

import io
import subprocess
from contextlib import redirect_stderr

import yaml

from pipeline.cli import main
from pipeline.testing.faults.tally import Report, one_line_error
from pipeline.testing.faults.training import TrainSetup
from pipeline.testing.tiny_train import ROOT, env, pretrain_cmd

ERROR = "vssl pretrain: error:"

# (--set overrides, text the one error line must hold); the tiny recipe's videos have 8 frames
CASES: list[tuple[list[str], str]] = [
    (["data.num_framez=8"], "data.num_framez: unknown key"),
    (["trian.max_steps=3"], "trian: unknown key"),
    (["train.max_steps=ten"], "train.max_steps: expected an integer"),
    (["data.crop_size=[32]"], "data.crop_size: expected an integer"),
    (["train.lr=fast"], "train.lr: expected a number"),
    (["data.shuffle=maybe"], "data.shuffle: expected true/false"),
    (["train.max_steps"], "expected KEY=VALUE"),
    (["data.shards=/nonexistent/shards"], "data.shards: '/nonexistent/shards' matches no shard"),
    (["data.shards="], "data.shards: no shards given"),
    (["data.mask_ratio=1.0"], "data.mask_ratio: must be in [0, 1)"),
    (["data.num_frames=16"], "data.num_frames: a clip of 16 frames"),
    (["data.frame_stride=2"], "data.num_frames: a clip of 8 frames, 2 apart"),
    (["data.num_frames=7"], "num_frames is data.num_frames, img_size data.crop_size): input 7x32x32 is not"),
    (["data.crop_size=36"], "num_frames is data.num_frames, img_size data.crop_size): input 8x36x36 is not"),
    (["data.batch_size=64"], "data.batch_size: 18 samples of split 'train' make no batch of 64"),
    (["data.decoder=ffmpeg"], "data.decoder: must be one of"),
    (["data.sampling=fps"], "data.target_fps: sampling 'fps' needs target_fps > 0"),
    (["data.mask_type=none"], "data.mask_type: videomae needs a mask"),
    (["data.num_workers=3", "data.streams_per_rank=4"], "data.num_workers: 3 must divide data.streams_per_rank 4"),
    (["model.name=vit_gigantic_nope"], "vit_gigantic_nope"),
    (["model.overrides={embed_dimm: 32}"], "model: cannot build 'vit_tiny_joint'"),
    (["model.pretrained=/nonexistent/backbone"], "model.pretrained: no such file or folder"),
    (["objective.name=mae"], "objective.name: must be one of videomae, predictive"),
    (["objective.decoder_heads=3"], "objective.decoder_dim: 32 not divisible by decoder_heads"),
    (["train.mixed_precision=fp8"], "train.mixed_precision: must be one of auto, no, bf16, fp16"),
    (["train.grad_accum=0"], "train.grad_accum: must be >= 1"),
    (["train.resume=/nonexistent/step-000004"], "train.resume: /nonexistent/step-000004 is not a complete"),
]


def _in_process(args: list[str]) -> tuple[int, str]:
    stderr = io.StringIO()
    with redirect_stderr(stderr):
        code = main(["pretrain", *args])
    return code, stderr.getvalue()


def bad_configs(setup: TrainSetup) -> Report:
    report = Report("bad configuration")
    out = setup.tmp / "config_errors"
    for overrides, needle in CASES:
        args = [str(setup.recipe), "--set", f"train.output_dir={out}"] + [a for o in overrides for a in ("--set", o)]
        code, stderr = _in_process(args)
        line = one_line_error(stderr, ERROR)
        report.check(" ".join(overrides), code == 2 and line is not None and needle in line,
                     f"exit {code}, stderr: {stderr.strip()[-600:]!r}")
    report.check(None, not (out / "checkpoints").exists(), "a bad configuration started training")

    recipe = yaml.safe_load(setup.recipe.read_text())
    recipe["data"]["shardz"] = recipe["data"].pop("shards")
    typo = setup.tmp / "typo.yaml"
    typo.write_text(yaml.safe_dump(recipe))
    code, stderr = _in_process([str(typo)])
    line = one_line_error(stderr, ERROR)
    report.check("typo in the recipe file", code == 2 and line is not None and f"{typo}: data.shardz: unknown key"
                 in line, f"exit {code}: {stderr[-600:]!r}")
    code, stderr = _in_process([str(setup.tmp / "missing.yaml")])
    report.check("recipe file missing", code == 2 and "recipe file not found" in (one_line_error(stderr, ERROR) or ""),
                 f"exit {code}: {stderr[-600:]!r}")

    done = subprocess.run(pretrain_cmd(setup.recipe, "data.mask_ratio=1.0"), cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=120)
    report.check("mask ratio 1.0, as a process", done.returncode == 2 and one_line_error(done.stderr, ERROR)
                 is not None, f"exit {done.returncode}: {done.stderr[-1500:]!r}")
    report.inputs_tried = len(CASES) + 3
    return report
