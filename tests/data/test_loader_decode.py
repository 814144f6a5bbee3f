"""Decoders behind one interface: same pixels, clamped frame counts, bounded and isolated failures;
torchcodec on the CPU against decord/pyav, through the loader too (workers decoding, or the loader's
process decoding as GPU decoding does), and NVDEC where a GPU is present."""

import os
import sys
import threading
import time

import numpy as np
import pytest
import torch

from data_prep.encode import encode_mp4
from pipeline.config import ConfigError, DataConfig
from pipeline.data.decode import DecodeError, check_decoder, decode_clips, torchcodec_problem
from pipeline.data.decode_process import SLEEP_KEY_ENV, InProcessDecoder, IsolatedDecoder
from pipeline.data.loader import build_loader
from pipeline.data.sampling import ClipSampling
from pipeline.testing.shards import write_shards
from pipeline.testing.videos import moving_frames

SAMPLING = ClipSampling("random", num_frames=8, frame_stride=3, clips=2)
TORCHCODEC = torchcodec_problem()  # None when torchcodec can decode here
needs_torchcodec = pytest.mark.skipif(TORCHCODEC is not None, reason=f"{TORCHCODEC}")
needs_gpu = pytest.mark.skipif(TORCHCODEC is not None or not torch.cuda.is_available(),
                               reason=TORCHCODEC or "NVDEC decoding needs a CUDA GPU; torch sees none here")


@pytest.fixture(scope="module")
def video():
    return encode_mp4(moving_frames(48, 32, 64, seed=5), fps=25.0, gop=8)


def test_decord_and_pyav_give_the_same_frames(video):
    for seed in range(3):
        a = decode_clips("decord", video, SAMPLING, seed)
        b = decode_clips("pyav", video, SAMPLING, seed)
        assert a.frames.shape == (len(a.frame_ids), 32, 64, 3)
        assert np.array_equal(a.frame_ids, b.frame_ids) and np.array_equal(a.frames, b.frames)
        for where, clip in zip(a.where, SAMPLING.clips_for(48, 25.0, np.random.default_rng(seed))):
            assert np.array_equal(a.frame_ids[where], clip)


def test_frame_limit_clamps_the_indices(video):
    decoded = decode_clips("decord", video, ClipSampling("random", 8, 4, clips=3), seed=1, frame_limit=20)
    assert decoded.num_frames == 20 and decoded.frame_ids.max() < 20


def test_garbage_and_missing_backends():
    with pytest.raises(DecodeError) as e:
        decode_clips("pyav", b"\x00" * 500, SAMPLING, 0)
    assert e.value.reason == "decode_error"
    with pytest.raises(ValueError, match="unknown decoder 'ffmpeg'"):
        check_decoder("ffmpeg")


def test_isolated_decoder_matches_in_process_and_survives_a_crash(video, monkeypatch):
    monkeypatch.setenv(SLEEP_KEY_ENV, "stuck")
    isolated = IsolatedDecoder("decord", SAMPLING, timeout_s=30.0)
    try:
        a = isolated.decode("k", video, 7, 0)
        b = InProcessDecoder("decord", SAMPLING).decode("k", video, 7, 0)
        assert np.array_equal(a.frames, b.frames) and np.array_equal(a.frame_ids, b.frame_ids)
        helper = isolated._proc.pid
        killer = threading.Timer(0.5, os.kill, (helper, 9))  # the helper dies mid-decode
        killer.start()
        started = time.monotonic()
        with pytest.raises(DecodeError) as e:
            isolated.decode("stuck", video, 7, 0)
        assert e.value.reason == "decoder_crashed" and time.monotonic() - started < 10
        assert np.array_equal(isolated.decode("k", video, 7, 0).frames, b.frames)  # a new helper
        assert isolated._proc.pid != helper
    finally:
        isolated.close()


def test_missing_torchcodec_or_ffmpeg_is_refused_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchcodec", None)  # what an environment without it looks like
    with pytest.raises(ValueError, match="data.decoder: torchcodec is not installed") as e:
        check_decoder("torchcodec")
    assert "apt-get install" in str(e.value) and "\n" not in str(e.value)
    if TORCHCODEC is None:  # installed: simulate missing FFmpeg libraries
        monkeypatch.undo()
        import torchcodec

        monkeypatch.setattr(torchcodec, "ffmpeg_major_version", None)
        with pytest.raises(ValueError, match="cannot load the system FFmpeg shared libraries.*apt-get install"):
            check_decoder("torchcodec")


@needs_torchcodec
def test_torchcodec_gives_the_same_frames_as_decord_and_pyav(video):
    for seed in range(3):
        a = decode_clips("torchcodec", video, SAMPLING, seed)
        assert isinstance(a.frames, np.ndarray) and a.frames.shape == (len(a.frame_ids), 32, 64, 3)
        for other in ("decord", "pyav"):
            b = decode_clips(other, video, SAMPLING, seed)
            assert np.array_equal(a.frame_ids, b.frame_ids) and np.array_equal(a.frames, b.frames), other
    limited = decode_clips("torchcodec", video, ClipSampling("random", 8, 4, clips=3), seed=1, frame_limit=20)
    assert limited.num_frames == 20 and limited.frame_ids.max() < 20
    with pytest.raises(DecodeError) as e:
        decode_clips("torchcodec", b"\x00" * 500, SAMPLING, 0)
    assert e.value.reason == "decode_error"


def test_cuda_decoding_is_refused_in_one_line_where_it_cannot_run(tmp_path, monkeypatch):
    for kw, needle in ((dict(decoder="decord", decode_device="cuda", decode_timeout_s=0.0),
                        "data.decode_device: cuda decodes with torchcodec only"),
                       (dict(decoder="torchcodec", decode_device="cuda"), "data.decode_timeout_s: 30, but decode_device"),
                       (dict(decode_device="gpu"), "data.decode_device")):
        with pytest.raises(ConfigError, match=needle) as e:
            DataConfig(shards=str(tmp_path), **kw).validate()
        assert "\n" not in str(e.value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="data.decode_device: cuda, but torch .* sees no CUDA device") as e:
        check_decoder("pyav", "cuda")
    assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("decode_shards")
    write_shards(folder, [4, 4], num_frames=16, size=64, annotate=True)
    return folder


def loader_batches(folder, decode_in_loader=None, **kw) -> list[dict]:
    base = dict(num_frames=8, frame_stride=2, crop_size=32, batch_size=2, num_workers=2, decode_timeout_s=0.0,
                shuffle_buffer=4)
    cfg = DataConfig(shards=str(folder / "manifest.json"), **{**base, **kw})
    loader = build_loader(cfg, patch_size=(2, 16, 16), device=None, annotations=("boxes", "masks"),
                          decode_in_loader=decode_in_loader)
    try:
        return [{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in loader]
    finally:
        loader.close()


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert x["key"] == y["key"]
        for name in ("video", "label", "mask", "boxes", "masks"):
            assert torch.equal(x[name], y[name]) or name == "boxes" and torch.allclose(x[name], y[name], equal_nan=True), name


@needs_torchcodec
def test_loader_with_torchcodec_matches_decord_in_workers_and_in_the_loader(shards):
    """The same batches from decord in the workers, torchcodec in the workers, and torchcodec in the
    loader's process behind workers that only read (the path decode_device=cuda takes)."""
    reference = loader_batches(shards, decoder="decord")
    assert_same_batches(loader_batches(shards, decoder="torchcodec"), reference)
    in_loader = loader_batches(shards, decode_in_loader=True, decoder="torchcodec", decode_timeout_s=20.0)
    assert_same_batches(in_loader, reference)


def test_decoding_in_the_loader_reads_in_workers_and_skips_bad_samples(tmp_path):
    """Workers hand over parsed samples; a broken video is skipped (and counted) where it is decoded."""
    keys = write_shards(tmp_path, [3, 3], num_frames=16, size=64,
                        overrides={"train_00_001": {"mp4": b"\x00" * 300}})
    assert "train_00_001" in keys
    cfg = DataConfig(shards=str(tmp_path / "manifest.json"), num_frames=8, frame_stride=2, crop_size=32, batch_size=3,
                     num_workers=2, decode_timeout_s=0.0, decoder="pyav", shuffle=False)
    loader = build_loader(cfg, patch_size=(2, 16, 16), decode_in_loader=True)
    try:
        batches = list(loader)
        assert loader.dataset.batch_spec.decode_in_loader and loader._maker is not None
        assert sorted(len(b["key"]) for b in batches) == [2, 3]
        assert loader.stats()["skipped"] == {"decode_error": 1}
        assert set(loader.worker_pids.values()) - {os.getpid()}  # the workers read
    finally:
        loader.close()
    with pytest.raises(ConfigError, match="decode_in_loader=False cannot apply"):
        build_loader(DataConfig(shards=str(tmp_path / "manifest.json"), decoder="torchcodec", decode_device="cuda",
                                decode_timeout_s=0.0), decode_in_loader=False)


@needs_gpu
def test_nvdec_decodes_on_the_gpu_through_the_loader(shards):
    """NVDEC frames against CPU frames (hardware YUV->RGB differs by a few levels), and the loader
    decoding on the GPU in its own process hands over CUDA batches with the CPU path's keys."""
    sample = encode_mp4(moving_frames(48, 64, 64, seed=3), fps=25.0, gop=8)
    cpu = decode_clips("torchcodec", sample, SAMPLING, 4)
    gpu = decode_clips("torchcodec", sample, SAMPLING, 4, device="cuda")
    assert gpu.frames.is_cuda and np.array_equal(gpu.frame_ids, cpu.frame_ids)
    diff = np.abs(gpu.frames.cpu().numpy().astype(int) - cpu.frames)
    assert diff.mean() < 3, (diff.mean(), diff.max())
    on_gpu = loader_batches(shards, decoder="torchcodec", decode_device="cuda")
    on_cpu = loader_batches(shards, decoder="torchcodec")
    assert [b["key"] for b in on_gpu] == [b["key"] for b in on_cpu]
    assert all(b["video"].is_cuda and b["video"].dtype == torch.uint8 for b in on_gpu)
    for g, c in zip(on_gpu, on_cpu):
        assert (g["video"].cpu().int() - c["video"].int()).abs().float().mean() < 3
        assert torch.equal(g["mask"].cpu(), c["mask"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="refusal without CUDA: this machine has a CUDA device")
def test_gpu_decode_benchmark_is_refused_in_one_line_without_cuda():
    from benchmarks.loader import run

    with pytest.raises(SystemExit, match="loader --device cuda: torch sees no CUDA device here$"):
        run(quick=True, device="cuda")
