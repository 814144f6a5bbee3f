"""docs/RESULTS.md, regenerated from the benchmarks' saved JSON (never typed by hand).

    python -m benchmarks transfer --save    # runs it, writes docs/results/transfer.json, rewrites RESULTS.md
    python -m benchmarks --render           # only rewrites docs/RESULTS.md from docs/results/*.json

A saved record is the runner's JSON line plus when, where, at which commit and how long: one file
per benchmark and mode (NAME.json, NAME-quick.json), replaced by the next saved run of the same
kind. The page lists every record: metric, value, goal (and whether it is met where the goal is a
plain bound), then the record's `notes` (sentences added to a saved record when a later commit
changes what a figure means, until the next saved run replaces it).
"""

from __future__ import annotations

import datetime
import json
import operator
import os
import platform
import re
import subprocess
from pathlib import Path

from pipeline.durable import atomic_write

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
PAGE = ROOT / "docs" / "RESULTS.md"
_BOUND = re.compile(r"^\s*(>=|<=|>|<)\s*(-?[0-9.]+)")
OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}  # a goal's bound: value OP bound

HEADER = """# Results

Every table below is written by `python -m benchmarks NAME --save` from the run's own JSON
(docs/results/NAME.json); `python -m benchmarks --render` rewrites this page from those files. Each
metric is a ratio or difference against a peer measured in the same run (benchmarks/NAME.py says
what each one is). What was tried on the way, and did not work, is in EXPERIMENTS.md.
"""


def machine() -> str:
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"


def commit() -> str:
    """The checkout's commit, "+" when it has uncommitted changes; "" outside a git checkout."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + ("+" if dirty else "")


def save(record: dict, seconds: float, folder: Path = RESULTS) -> Path:
    """Write one run's record (the runner's JSON object) with its date, machine, commit and duration."""
    stamped = {**record, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "machine": machine(), "commit": commit(), "seconds": round(seconds, 1)}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{record['benchmark']}{'-quick' if record['quick'] else ''}.json"
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(stamped, indent=2, sort_keys=True) + "\n"))


def met(value, goal: str) -> str:
    """'yes' / 'no' where the goal starts with a plain bound (">= 0.9 ..."), else ''."""
    match = _BOUND.match(str(goal))
    if match is None or not isinstance(value, (int, float)) or isinstance(value, bool):
        return ""
    return "yes" if OPS[match.group(1)](value, float(match.group(2))) else "no"


def section(record: dict) -> str:
    mode = "quick" if record["quick"] else "full"
    lines = [f"## {record['benchmark']} ({mode})", "",
             f"`python -m benchmarks {record['benchmark']}{' --quick' if record['quick'] else ''}` — "
             f"{record.get('date', '?')}, {record.get('machine', '?')}, device {record.get('device', '?')}, "
             f"commit {record.get('commit') or '?'}, {record.get('seconds', 0) / 60:.1f} min", "", "| metric | value | goal | met |", "|---|---|---|---|"]
    goals = record.get("goals", {})
    for name, value in record["metrics"].items():
        goal = goals.get(name, "")
        lines.append(f"| {name} | {'—' if value is None else value} | {goal} | {met(value, goal)} |")
    if record.get("notes"):
        lines += ["", *(f"Note: {note}" for note in record["notes"])]
    return "\n".join(lines) + "\n"


def render(folder: Path = RESULTS, page: Path = PAGE) -> Path:
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    records.sort(key=lambda r: (r["benchmark"], r["quick"]))
    text = HEADER + "".join("\n" + section(r) for r in records)
    return atomic_write(page, lambda tmp: tmp.write_text(text))
