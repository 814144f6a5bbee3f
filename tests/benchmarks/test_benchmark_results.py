"""docs/RESULTS.md is generated from saved benchmark records: save, render, and the goal check."""

from __future__ import annotations

import json

import pytest

from benchmarks import _results
from benchmarks.__main__ import main


def record(name: str, quick: bool, metrics: dict, goals: dict) -> dict:
    return {"benchmark": name, "quick": quick, "device": "cpu:x86_64x2", "metrics": metrics, "goals": goals}


@pytest.mark.parametrize("value, goal, expected", [
    (0.95, ">= 0.90", "yes"), (0.85, ">= 0.90", "no"), (26.0, ">= 25", "yes"), (4.9, ">= 5 (aim 10)", "no"),
    (0.1, "> 0", "yes"), (0.0, "> 0", "no"), (44.0, "<= 45 (2 CPU cores)", "yes"), (None, ">= 1", ""),
    (3, "about 3", ""), (True, ">= 1", "")])
def test_goal_met_only_for_plain_bounds(value, goal, expected):
    assert _results.met(value, goal) == expected


def test_saved_records_render_one_section_each_newest_replacing_older(tmp_path):
    folder, page = tmp_path / "results", tmp_path / "RESULTS.md"
    _results.save(record("loader", False, {"a_vs_b": 0.8}, {"a_vs_b": ">= 0.9"}), 12.0, folder)
    _results.save(record("loader", True, {"a_vs_b": 1.2}, {"a_vs_b": ">= 0.9"}), 3.0, folder)
    _results.save(record("loader", False, {"a_vs_b": 0.97, "extra": None}, {"a_vs_b": ">= 0.9"}), 60.0, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["loader-quick.json", "loader.json"]
    saved = json.loads((folder / "loader.json").read_text())
    assert saved["metrics"]["a_vs_b"] == 0.97 and saved["seconds"] == 60.0 and "CPU cores" in saved["machine"]
    assert saved["commit"].rstrip("+") == _results.commit().rstrip("+") != ""  # this checkout's HEAD
    saved["notes"] = ["jf_* predate a fix."]
    (folder / "loader.json").write_text(json.dumps(saved))
    text = _results.render(folder, page).read_text()
    assert text.startswith(_results.HEADER)
    assert text.index("## loader (full)") < text.index("## loader (quick)")
    full = text.split("## loader (full)")[1].split("## loader (quick)")[0]
    assert "| a_vs_b | 0.97 | >= 0.9 | yes |" in full and "| extra | — |  |  |" in full and "1.0 min" in full
    assert f"commit {saved['commit']}" in full and "\nNote: jf_* predate a fix.\n" in full
    assert "Note:" not in text.split("## loader (quick)")[1]
    assert "| a_vs_b | 1.2 | >= 0.9 | yes |" in text.split("## loader (quick)")[1]


def test_render_flag_rewrites_the_page_and_a_name_is_needed_otherwise(tmp_path, monkeypatch, capsys):
    folder, page = tmp_path / "results", tmp_path / "RESULTS.md"
    _results.save(record("shard", False, {"x": 1.0}, {}), 1.0, folder)
    monkeypatch.setattr(_results, "RESULTS", folder)
    monkeypatch.setattr(_results, "PAGE", page)
    monkeypatch.setattr(_results.render, "__defaults__", (folder, page))
    assert main(["--render"]) == 0 and "## shard (full)" in page.read_text()
    with pytest.raises(SystemExit):
        main([])
    assert "a benchmark NAME" in capsys.readouterr().err
