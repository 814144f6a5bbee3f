"""Bad inputs end in quarantine.jsonl with a reason; none crashes or hangs the run."""

from __future__ import annotations

import io
import os

import av
import pytest

from data_prep.pool import KillablePool, TaskFailed
from data_prep.probe import probe
from data_prep.process import FAULT_ENV
from pipeline.cli import main
from pipeline.data.shard_format import read_manifest
from pipeline.testing.sharding import encoded, faststart_mp4, metas, quarantine, read_samples, run_shard, video



def test_corrupt_inputs_are_quarantined_with_reasons(tmp_path):
    d = tmp_path / "in"
    good = video(d / "good.mp4").read_bytes()
    (d / "empty.mp4").write_bytes(b"")
    (d / "head.mp4").write_bytes(good[: len(good) // 2])
    (d / "tail.mp4").write_bytes(good[len(good) // 2:])
    (d / "text.mp4").write_text("this is not a video\n")
    encoded(d / "audio.mp4", "aac", "mp4", audio_only=True)
    (d / "dangling.mp4").symlink_to(d / "nowhere.mp4")
    (d / "folder.mp4").mkdir()
    locked = None if os.geteuid() == 0 else d / "locked.mp4"  # root reads a chmod 000 file anyway
    if locked:
        locked.write_bytes(good)
        locked.chmod(0)
    summary = run_shard(d, tmp_path / "out")
    reasons = {q["key"]: q["reason"] for q in quarantine(tmp_path / "out")}
    assert reasons["empty"] == "video is empty (0 bytes)"
    assert reasons["head"].startswith("not a readable video")  # the index (moov) is in the lost half
    assert reasons["tail"].startswith("not a readable video")
    assert reasons["text"].startswith("not a readable video (Invalid data found")
    assert reasons["audio"] == "no video stream (only audio)"
    assert reasons["dangling"] == "video not found (dangling symlink)"
    assert reasons["folder"] == "video is a directory"
    if locked:
        assert reasons.pop("locked") == "video is not readable (permission denied)"
    assert sorted(metas(tmp_path / "out")) == ["good"]
    assert len(reasons) == 7 and summary.quarantined == read_manifest(tmp_path / "out").quarantined == 7 + bool(locked)
    assert all("\n" not in r for r in reasons.values())


def test_truncated_index_first_mp4(tmp_path):
    full = faststart_mp4(tmp_path / "full.mp4")
    with av.open(io.BytesIO(full)) as c:
        packets = [(p.pos, p.size) for p in c.demux(video=0) if p.size]
    d = tmp_path / "in"
    d.mkdir()
    pos, size = packets[24]
    (d / "at_packet.mp4").write_bytes(full[: pos + size])  # 25 whole frames, header says 40
    (d / "mid_packet.mp4").write_bytes(full[: pos + size // 2])  # last frame cut in half
    run_shard(d, tmp_path / "out")
    assert probe((d / "at_packet.mp4").read_bytes()).reported_frames == 40
    stored = read_samples(tmp_path / "out")["at_packet"]
    info = probe(stored["mp4"])
    assert (info.num_frames, info.reported_frames) == (25, 25)  # remuxed: header matches content
    assert metas(tmp_path / "out")["at_packet"]["extra"]["mode"] == "remux"
    (bad,) = quarantine(tmp_path / "out")
    assert bad["key"] == "mid_packet" and bad["reason"].startswith("decoding failed near frame")


def test_short_video_and_bad_annotations(tmp_path):
    d = tmp_path / "in"
    video(d / "short.mp4", frames=10)
    video(d / "ok.mp4", frames=16)
    (d / "ok.boxes.json").write_text('{"format": "xyxy", "boxes": [[0, 0, 4, 4]]}')
    run_shard(d, tmp_path / "out", segment_s=0.5)
    reasons = {q["key"]: q["reason"] for q in quarantine(tmp_path / "out")}
    assert reasons == {"ok": "boxes.json: has 1 frames, the video has 16",
                       "short": "clip of 0.40s is shorter than one 0.5s segment"}


@pytest.mark.timeout(60)
def test_hung_and_crashing_inputs_are_bounded(tmp_path, monkeypatch):
    d = tmp_path / "in"
    for n in range(4):
        video(d / f"v{n}.mp4", seed=n)
    monkeypatch.setenv(FAULT_ENV, "hang=v1.mp4;crash=v2.mp4")
    summary = run_shard(d, tmp_path / "out", workers=2, timeout_s=1.0)
    reasons = {q["key"]: q["reason"] for q in quarantine(tmp_path / "out")}
    assert reasons == {"v1": "timeout after 1s", "v2": "worker died (signal 9)"}
    assert sorted(metas(tmp_path / "out")) == ["v0", "v3"]
    assert summary.reasons == {"timeout after 1s": 1, "worker died": 1}


def _echo(task, scale):
    if task == "boom":
        raise RuntimeError("bad\ntask")
    return task * scale


def test_pool_keeps_order_and_reports_exceptions():
    with KillablePool(_echo, workers=2, timeout_s=30, args=(3,)) as pool:
        results = list(pool.map([1, 2, "boom", 4, 5], ahead=2))
    assert [t for t, _ in results] == [1, 2, "boom", 4, 5]
    assert [r for _, r in results if not isinstance(r, TaskFailed)] == [3, 6, 12, 15]
    assert results[2][1] == TaskFailed("error: RuntimeError: bad task")


def test_pool_replaces_a_worker_that_died_while_idle():
    with KillablePool(_echo, workers=1, timeout_s=30, args=(2,)) as pool:
        idle = pool._workers[0].process
        idle.kill()
        idle.join()
        assert [r for _, r in pool.map([1, 2, 3])] == [2, 4, 6]


def _env(name: str) -> str:
    return os.environ.get(name, "unset")


def test_pool_workers_see_the_environment_of_their_pool_not_the_forkserver(monkeypatch):
    """Credentials or an endpoint set after the first pool started the forkserver reach later
    pools' workers, and a replaced worker too (CI failure: s3:// reads 'no credentials found')."""
    name = "VSSL_TEST_POOL_ENV"
    monkeypatch.delenv(name, raising=False)
    with KillablePool(_env, workers=1, timeout_s=30) as pool:  # starts the forkserver, if not yet
        assert [r for _, r in pool.map([name])] == ["unset"]
    monkeypatch.setenv(name, "set later")
    with KillablePool(_env, workers=1, timeout_s=30) as pool:
        assert [r for _, r in pool.map([name])] == ["set later"]
        pool._workers[0].process.kill()
        pool._workers[0].process.join()
        assert [r for _, r in pool.map([name])] == ["set later"]


def test_bad_settings_and_listings_are_one_line_errors(tmp_path, capsys):
    video(tmp_path / "in" / "a.mp4")
    out = str(tmp_path / "out")
    cases = [(["--crf", "60"], "shard.crf: must be in [0, 51], got 60"),
             (["--short-side", "64"], "shard.short_side: set shard.transcode=true"),
             (["--workers", "0"], "shard.workers: must be > 0"),
             (["--format", "kinetics"], "needs --root")]
    for extra, needle in cases:
        assert main(["shard", str(tmp_path / "in"), "--out", out, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err
    assert not os.path.exists(out)
    assert main(["shard", str(tmp_path / "nothing"), "--out", out, "--format", "folder"]) == 2
    assert "input not found" in capsys.readouterr().err
