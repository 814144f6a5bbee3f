"""Decoders behind one interface: same pixels, clamped frame counts, bounded and isolated failures."""

import os
import threading
import time

import numpy as np
import pytest

from data_prep.encode import encode_mp4
from pipeline.data.decode import DecodeError, check_decoder, decode_clips
from pipeline.data.decode_process import SLEEP_KEY_ENV, InProcessDecoder, IsolatedDecoder
from pipeline.data.sampling import ClipSampling
from pipeline.testing.videos import moving_frames

SAMPLING = ClipSampling("random", num_frames=8, frame_stride=3, clips=2)


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
    with pytest.raises(ValueError, match="torchcodec is not installed"):
        check_decoder("torchcodec")
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
