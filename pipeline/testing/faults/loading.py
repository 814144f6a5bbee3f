"""Loading under fire: shards with corrupt members, malformed json, annotations that do not match
their frames, a pickled member and a truncated tar. The loader skips and counts each bad sample,
loses no good one, and `vssl pretrain` on these shards trains to max_steps and reports the count.

    report = train_on_damaged_shards(tmp_path)   # tests/faults/test_faults_loading.py, benchmarks/faults.py
"""

from __future__ import annotations

import io
import json
import os
import pickle
from contextlib import redirect_stderr
from pathlib import Path

from pipeline.cli import main
from pipeline.config import DataConfig
from pipeline.data.loader import build_loader
from pipeline.testing.faults.tally import Report, one_line_error
from pipeline.testing.shards import sample_key, write_shards
from pipeline.testing.tiny_train import tiny_recipe

SIZES = [6, 5, 7]  # samples per shard; batch_size 2 and no shuffling: 9 batches per epoch


class Planted:
    """Unpickling this creates the file it names: proof, if the file exists, that something unpickled."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def damaged_shards(folder: Path, planted: Path) -> tuple[dict[str, str], set[str]]:
    """Write the shards; returns (bad key -> the skip reason expected, keys that must come through)."""
    boxes_for_one_frame = json.dumps({"format": "xyxy", "boxes": [[0, 0, 4, 4]]}).encode()
    bad = {sample_key("train", 0, 0): ({"mp4": b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000)}, "decode_error"),
           sample_key("train", 0, 1): ({"json": b'{"label": 1, "fps": '}, "bad_json"),  # with 0,0: a batch of none
           sample_key("train", 1, 2): ({"boxes.json": boxes_for_one_frame}, "bad_annotation"),
           sample_key("train", 1, 3): ({"mp4": None}, "missing_video")}
    pickled = sample_key("train", 1, 4)
    overrides = {key: members for key, (members, _) in bad.items()}
    overrides[pickled] = {"pyd": pickle.dumps(Planted(str(planted)))}
    keys = write_shards(folder, SIZES, overrides=overrides)
    last = folder / "train-000002.tar"
    last.write_bytes(last.read_bytes()[: int(last.stat().st_size * 0.55)])  # cut inside sample 3 or 4
    return {key: reason for key, (_, reason) in bad.items()}, {k for k in keys if k not in bad}


def _loader_epoch(shards: Path, bad: dict[str, str], good: set[str], report: Report) -> None:
    cfg = DataConfig(shards=str(shards), num_frames=8, frame_stride=1, crop_size=32, batch_size=2, num_workers=0,
                     decode_timeout_s=0.0, mask_ratio=0.5, shuffle=False)
    loader = build_loader(cfg, patch_size=(2, 16, 16), annotations=("boxes",))  # as tracking reads them
    keys = [k for batch in loader for k in batch["key"]]
    skipped = loader.stats()["skipped"]
    # a cut inside a member's data reads as truncated_shard, one inside a header as the end of the tar
    truncated = skipped.get("truncated_shard", 0) + skipped.get("shard_short", 0)
    for reason in set(bad.values()):
        report.check(f"{reason} member", skipped.get(reason) == list(bad.values()).count(reason),
                     f"skipped {skipped}")
    report.check("truncated tar", 1 <= truncated <= SIZES[-1] - 2, f"{truncated} samples of the cut shard lost")
    report.check(None, len(keys) == len(set(keys)), "a sample came twice")
    silently_lost = good - set(keys)
    report.samples_lost += max(0, len(silently_lost) - truncated)
    report.check(None, len(silently_lost) == truncated and not set(keys) - good,
                 f"good samples missing beyond the cut: {sorted(silently_lost)}")


def train_on_damaged_shards(tmp: Path) -> Report:
    report = Report("loading")
    planted = tmp / "unpickled"
    bad, good = damaged_shards(tmp / "shards", planted)
    report.inputs_tried = sum(SIZES)
    _loader_epoch(tmp / "shards", bad, good, report)
    steps = sum(SIZES) // 2
    recipe = tiny_recipe(tmp / "r.yaml", tmp / "shards", tmp / "run", max_steps=steps, checkpoint_every=100)
    code = main(["pretrain", str(recipe), "--set", "data.shuffle=false"])
    report.check("a batch of only bad samples", code == 0, f"vssl pretrain exited {code}")
    metrics = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    report.check(None, [m["step"] for m in metrics] == list(range(1, steps + 1)), "training stopped early")
    report.check(None, metrics and metrics[-1]["data_skipped"] >= len(bad) + 1,
                 f"metrics.jsonl data_skipped {metrics[-1].get('data_skipped') if metrics else None}")
    report.check("pickled .pyd member", not planted.exists(), "a .pyd member was unpickled")
    _every_sample_bad(tmp, report)
    return report


def _every_sample_bad(tmp: Path, report: Report) -> None:
    """Shards with no usable sample at all: training cannot go on, and says so in one line."""
    broken = {sample_key("train", s, i): {"json": b"[]"} for s, n in enumerate(SIZES[:1]) for i in range(n)}
    write_shards(tmp / "hopeless", SIZES[:1], overrides=broken)
    recipe = tiny_recipe(tmp / "hopeless.yaml", tmp / "hopeless", tmp / "hopeless_run")
    stderr = io.StringIO()
    with redirect_stderr(stderr):
        code = main(["pretrain", str(recipe)])
    line = one_line_error(stderr.getvalue(), "vssl pretrain: error:")
    report.check("every sample bad", code == 1 and line is not None and "held no usable sample" in line,
                 f"exit {code}: {stderr.getvalue()[-800:]!r}")
