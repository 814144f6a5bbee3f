"""Decoding bounded in time: each loader worker decodes through a killable helper process.

    decoder = make_decoder("decord", sampling, timeout_s=30.0)   # IsolatedDecoder
    decoded = decoder.decode(key, mp4_bytes, seed, frame_limit)   # raises DecodeError on failure
    decoded = decoder.decode(key, mp4_bytes, seed, frame_limit, sampling=other)  # e.g. a source's own step
    decoder.close()

Why a process: decord can spin forever inside native code (no signal interrupts it, a thread
cannot be stopped), and a corrupt file can crash FFmpeg outright. So a worker sends each video to
its helper (`python -m pipeline.data.decode_process`, started on first use) and waits at most
`timeout_s` for the reply; on timeout it kills the helper, restarts it on the next sample and skips
this one as `decode_timeout` (a crash: `decoder_crashed`). Video bytes and decoded frames travel
through a memfd shared by the two, so a sample costs one small pipe round trip and one frame copy
(`decode_isolation_cost` in benchmarks/loader.py measures it). timeout_s=0 decodes in the worker
itself (InProcessDecoder): no bound, no overhead.

Wire format (both directions): 4-byte big-endian length + a JSON header. Never pickle. The helper dies with its worker (PR_SET_PDEATHSIG) and is recycled
every _RECYCLE_AFTER decodes to bound decord's memory growth across readers.
Test hook: VSSL_TEST_DECODE_SLEEP_KEY=<key> makes the helper sleep before decoding that key.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import select
import signal
import struct
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pipeline.data.decode import DecodedClips, DecodeError, decode_clips
from pipeline.data.sampling import ClipSampling

_HEADER = struct.Struct(">I")
# the shared memfd: [0, _REGION) the request's video bytes, [_REGION, 2 * _REGION) the frames;
# sparse, so pages exist only where written
_REGION = 1 << 30
_STARTUP_TIMEOUT_S = 120.0
_RECYCLE_AFTER = 2000
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
SLEEP_KEY_ENV = "VSSL_TEST_DECODE_SLEEP_KEY"


class InProcessDecoder:
    def __init__(self, decoder: str, sampling: ClipSampling, device: str = "cpu"):
        self.decoder, self.sampling, self.device = decoder, sampling, device

    def decode(self, key: str, data: bytes, seed: int, frame_limit: int,
               sampling: ClipSampling | None = None) -> DecodedClips:
        """The sample's clips, sampled by `sampling` (None: the decoder's own)."""
        return decode_clips(self.decoder, data, sampling or self.sampling, seed, frame_limit, self.device)

    def close(self) -> None:
        pass


def _wait(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _write_all(fd: int, data: bytes, deadline: float | None) -> None:
    view = memoryview(data)
    while view:
        if not select.select([], [fd], [], _wait(deadline))[1]:
            raise TimeoutError
        view = view[os.write(fd, view[:1 << 20]):]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    parts, got = [], 0
    while got < n:
        if not select.select([fd], [], [], _wait(deadline))[0]:
            raise TimeoutError
        chunk = os.read(fd, n - got)
        if not chunk:
            raise EOFError
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _pack(header: dict) -> bytes:
    head = json.dumps(header).encode()
    return _HEADER.pack(len(head)) + head


class IsolatedDecoder:
    def __init__(self, decoder: str, sampling: ClipSampling, timeout_s: float):
        self.decoder, self.sampling, self.timeout_s = decoder, sampling, timeout_s
        self._proc: subprocess.Popen | None = None
        self._uses = 0
        if not hasattr(os, "memfd_create"):
            raise RuntimeError("data.decode_timeout_s > 0 decodes in a helper process, which needs Linux; "
                               "set data.decode_timeout_s=0 here")
        self._shm_fd = os.memfd_create("vssl-decode")
        os.ftruncate(self._shm_fd, 2 * _REGION)
        self._shm = mmap.mmap(self._shm_fd, 2 * _REGION)

    def _start(self) -> None:
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
        args = [sys.executable, "-m", "pipeline.data.decode_process", self.decoder,
                json.dumps(asdict(self.sampling)), str(self._shm_fd), str(os.getpid())]
        self._proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      pass_fds=(self._shm_fd,), env=env)
        os.set_blocking(self._proc.stdin.fileno(), False)
        self._uses = 0
        try:
            self._receive(time.monotonic() + _STARTUP_TIMEOUT_S)  # the "ready" message
        except (TimeoutError, EOFError):
            self._kill()  # a broken environment, not a bad sample: stop rather than skip everything
            raise RuntimeError("data: the decode helper process did not start (its error is above); "
                               "data.decode_timeout_s=0 decodes in the worker instead") from None

    def _receive(self, deadline: float) -> dict:
        (size,) = _HEADER.unpack(_read_exact(self._proc.stdout.fileno(), _HEADER.size, deadline))
        return json.loads(_read_exact(self._proc.stdout.fileno(), size, deadline))

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for f in (self._proc.stdin, self._proc.stdout):
                f.close()
            self._proc = None

    def decode(self, key: str, data: bytes, seed: int, frame_limit: int,
               sampling: ClipSampling | None = None) -> DecodedClips:
        """As InProcessDecoder.decode, in the helper; a `sampling` other than the decoder's own
        travels with the request."""
        if self._proc is None or self._uses >= _RECYCLE_AFTER:
            self._kill()
            self._start()
        self._uses += 1
        deadline = time.monotonic() + self.timeout_s
        try:
            if len(data) > _REGION:
                raise DecodeError("clip_too_large", f"video of {len(data)} bytes")
            self._shm[:len(data)] = data
            header = dict(key=key, seed=seed, limit=frame_limit, size=len(data))
            if sampling is not None and sampling != self.sampling:
                header["sampling"] = asdict(sampling)
            _write_all(self._proc.stdin.fileno(), _pack(header), deadline)
            reply = self._receive(deadline)
        except TimeoutError:
            self._kill()
            raise DecodeError("decode_timeout", f"no reply within {self.timeout_s:g}s; helper killed") from None
        except (EOFError, BrokenPipeError, ConnectionError):
            code = self._proc.poll() if self._proc else None
            self._kill()
            raise DecodeError("decoder_crashed", f"decode helper exited ({code})") from None
        if not reply["ok"]:
            raise DecodeError(reply["reason"], reply.get("detail", ""))
        shape = tuple(reply["shape"])
        frames = np.ndarray(shape, dtype=np.uint8, buffer=self._shm, offset=_REGION)
        return DecodedClips(frames, np.asarray(reply["frame_ids"], dtype=np.int64),
                            [np.asarray(w, dtype=np.int64) for w in reply["where"]], reply["num_frames"])

    def close(self) -> None:
        self._kill()
        self._shm.close()
        os.close(self._shm_fd)


def keep_freed_memory() -> None:
    """Make glibc keep freed multi-MB blocks instead of returning them to the OS: a clip's buffers
    are allocated and freed again for every sample, and faulting fresh pages back in cost more than
    the transforms themselves (measured on this project's VMs). Only for the loader's own processes."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 256 << 20)
    libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)


def make_decoder(decoder: str, sampling: ClipSampling, timeout_s: float,
                 device: str = "cpu") -> InProcessDecoder | IsolatedDecoder:
    """A decoder: isolated in a helper process when timeout_s > 0 (CPU only: DataConfig.validate
    refuses a timeout with decode_device cuda), else decoding on `device` in this process."""
    return IsolatedDecoder(decoder, sampling, timeout_s) if timeout_s > 0 else InProcessDecoder(decoder, sampling, device)


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def main(argv: list[str]) -> int:
    decoder, sampling_json, shm_fd, parent = argv[0], argv[1], int(argv[2]), int(argv[3])
    _die_with_parent(parent)
    keep_freed_memory()
    sampling = ClipSampling(**json.loads(sampling_json))
    shm = mmap.mmap(shm_fd, 2 * _REGION)
    sleep_key = os.environ.get(SLEEP_KEY_ENV)
    requests, replies = 0, os.dup(1)
    os.dup2(2, 1)  # anything a native library prints goes to stderr, not into the replies

    def reply(header: dict) -> None:
        _write_all(replies, _pack(header), None)

    reply(dict(ok=True, ready=True))
    while True:
        try:
            (size,) = _HEADER.unpack(_read_exact(requests, _HEADER.size, None))
        except EOFError:
            return 0
        request = json.loads(_read_exact(requests, size, None))
        data = shm[:request["size"]]
        if request["key"] == sleep_key:
            time.sleep(3600)
        try:
            asked = ClipSampling(**request["sampling"]) if "sampling" in request else sampling
            decoded = decode_clips(decoder, data, asked, request["seed"], request["limit"])
        except DecodeError as e:
            reply(dict(ok=False, reason=e.reason, detail=e.detail[:300]))
            continue
        if decoded.frames.nbytes > _REGION:
            reply(dict(ok=False, reason="clip_too_large", detail=f"frames of {decoded.frames.nbytes} bytes"))
            continue
        np.ndarray(decoded.frames.shape, dtype=np.uint8, buffer=shm, offset=_REGION)[...] = decoded.frames
        reply(dict(ok=True, shape=list(decoded.frames.shape), num_frames=decoded.num_frames,
                   frame_ids=decoded.frame_ids.tolist(), where=[w.tolist() for w in decoded.where]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
