"""What a fault scenario reports: the faults it injected, which guarantees broke, and the counts
`python -m benchmarks faults` adds up.

    report = Report("data prep")
    report.inputs_tried += 20
    report.check("zero-byte file", entry is not None, "empty.mp4 not quarantined")   # registers the fault
    report.check(None, summary.items == 20, "a listed input is missing")              # a general guarantee
    assert report.ok, report.failures

A fault named in `check` counts as injected; it survived when none of its checks failed.
`bounded` runs a command under a time limit and records a hang (and a failure) when it overruns.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Report:
    name: str
    inputs_tried: int = 0
    samples_lost: int = 0
    hangs: int = 0
    faults: dict[str, list[str]] = field(default_factory=dict)  # fault -> what broke (empty: it survived)
    general: list[str] = field(default_factory=list)  # broken guarantees not tied to one fault

    def fault(self, name: str) -> None:
        self.faults.setdefault(name, [])

    def check(self, fault: str | None, ok: bool, what: str) -> bool:
        """Record that a guarantee held (ok) or broke (what broke, for the failure list)."""
        if fault is not None:
            self.fault(fault)
        if not ok:
            (self.general if fault is None else self.faults[fault]).append(what)
        return ok

    @property
    def failures(self) -> list[str]:
        return [f"{self.name}: {fault}: {what}" for fault, whats in self.faults.items() for what in whats] + [
            f"{self.name}: {what}" for what in self.general]

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def survived(self) -> int:
        return sum(1 for whats in self.faults.values() if not whats)

    def counts(self) -> dict[str, int]:
        return {"inputs_tried": self.inputs_tried, "faults_injected": len(self.faults),
                "samples_lost": self.samples_lost, "hangs": self.hangs, "survived": self.survived}

    def bounded(self, fault: str | None, cmd: list[str], limit_s: float, cwd: Path, env: dict) -> subprocess.CompletedProcess:
        """Run `cmd`; past `limit_s` it is killed and counted as a hang (returncode -9, output so far)."""
        try:
            return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=limit_s)
        except subprocess.TimeoutExpired as e:
            self.hangs += 1
            self.check(fault, False, f"{' '.join(cmd[2:5])} still running after {limit_s:g}s (killed)")
            return subprocess.CompletedProcess(cmd, -9, _text(e.stdout), _text(e.stderr))


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def one_line_error(stderr: str, prefix: str) -> str | None:
    """The error line when stderr ends in exactly one `prefix` line and holds no traceback, else None."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(prefix)]
    if len(errors) != 1 or "Traceback (most recent call last)" in stderr or lines[-1] != errors[0]:
        return None
    return errors[0]
