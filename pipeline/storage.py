"""Object storage: the one module that opens URLs (s3://, gs://, http(s)://), retries, and caches shards.

    from pipeline import storage
    storage.is_url("s3://bucket/shards/")                   # True; plain paths and file:// are local
    data = storage.read_bytes("s3://bucket/raw/a.mp4")      # the whole object, or start=/end= a range
    names = storage.find("s3://bucket/raw/")                # every object under a prefix: relative, sorted
    storage.put_file(Path("x.tar"), "s3://bucket/shards/train-000000.tar")   # appears whole or not at all
    with storage.open_shard("s3://bucket/shards/train-000000.tar", size) as f: f.read(...)

Backends (fsspec): s3:// (s3fs; also S3-compatible stores), gs:// (gcsfs, when installed),
http(s):// (read only). Credentials come from where each library looks: for S3 the AWS_* variables,
~/.aws/config and credentials, AWS_PROFILE, instance roles; the endpoint of an S3-compatible store
from AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3), which `set_endpoint` overrides for this process and
the processes it starts (`vssl shard --storage-endpoint URL`, `data.storage_endpoint`).

Retries happen here only (s3fs and botocore are told not to retry). A transient failure --
connection refused or reset, a timeout, HTTP 5xx, throttling (SlowDown, 429) -- is tried again,
VSSL_STORAGE_ATTEMPTS times in all (default 8), after waits starting at VSSL_STORAGE_BACKOFF_S
(default 0.5 s) and doubling up to 16 s, less up to a quarter of random jitter (about 45 s in all);
then StorageError. Wrong or missing credentials, access denied and a missing bucket raise
StorageError at once; a missing object raises FileNotFoundError (the caller decides: `vssl shard`
quarantines that input, the loader skips that shard's samples). A StorageError is one line naming
the URL, the operation and what is wrong -- also when torch re-raises it from a DataLoader worker.

Streaming (`open_shard`): an object is read front to back in 8 MiB range requests, the next one
fetched ahead in a thread; each request is retried on its own, so a stream survives a store that
goes away and comes back within the retry budget.

Shard cache (`configure_cache`; data.cache_dir, data.cache_size_gb): a shard streamed to its end is
kept as a local file, named by a hash of its URL, written under a name unique to its writer and
renamed into place when whole; a later read of that URL opens the file (its size checked against the
manifest's). After each addition the least recently used files go until the folder holds at most
the size limit. Workers and processes may share one folder: renames are atomic, eviction races only
lose a file that is then fetched again, and a file deleted while another process reads it stays
readable to that process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import logging
import os
import random
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, TypeVar

log = logging.getLogger("vssl.storage")
T = TypeVar("T")

ENDPOINT_ENV = "VSSL_STORAGE_ENDPOINT"
ATTEMPTS_ENV = "VSSL_STORAGE_ATTEMPTS"
BACKOFF_ENV = "VSSL_STORAGE_BACKOFF_S"
CACHE_DIR_ENV = "VSSL_SHARD_CACHE_DIR"
CACHE_GB_ENV = "VSSL_SHARD_CACHE_GB"
CHUNK = 8 << 20  # bytes per range request of a stream
_DRAIN = 1 << 20  # a cached stream closed this near its end reads the rest (a tar's end padding)
_MAX_WAIT_S = 16.0
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*)://")
_TRANSIENT_TYPES = {"EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError",
                    "HTTPClientError", "ClientConnectorError", "ServerDisconnectedError", "ClientOSError",
                    "ClientPayloadError", "ServerTimeoutError", "FSTimeoutError", "IncompleteRead",
                    "ResponseParserError", "ConnectionError", "TimeoutError"}
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestLimitExceeded",
                    "InternalError", "ServiceUnavailable", "TooManyRequests", "OperationAborted"}
_REFUSED_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "AccessDenied",
                  "AllAccessDisabled", "AccountProblem", "InvalidSecurity", "TokenRefreshRequired"}


_CREDENTIALS = {"s3": "; check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws)",
                "gs": "; check the credentials (gcloud auth application-default login, GOOGLE_APPLICATION_CREDENTIALS)"}


class StorageError(RuntimeError):
    """A store cannot be used (unreachable after the retries, credentials refused, no such bucket)."""

    def __init__(self, message: str):
        # torch re-raises a worker's exception as type(e)(its text + the worker's traceback): keep one line
        if "\n" in message:
            last = [line for line in message.splitlines() if line.strip()][-1]
            message = re.sub(r"^.*?StorageError: ", "", last)
        super().__init__(message)


def is_url(location: str | Path) -> bool:
    """True for scheme://... other than file:// (pipe: commands are not URLs)."""
    match = _URL.match(str(location))
    return match is not None and match.group(1).lower() != "file"


def join(base: str | Path, *parts: str) -> str:
    if is_url(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def parent(location: str | Path) -> str:
    if is_url(location):
        return str(location).rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(str(location))


def set_endpoint(url: str) -> None:
    """Use this S3 endpoint (over AWS_ENDPOINT_URL) here and in processes started from now on; "" unsets."""
    if url:
        os.environ[ENDPOINT_ENV] = url
    else:
        os.environ.pop(ENDPOINT_ENV, None)


def configure_cache(cache_dir: str, size_gb: float) -> None:
    """Keep streamed shards in `cache_dir` (at most size_gb), here and in processes started from now on."""
    if cache_dir:
        os.environ[CACHE_DIR_ENV], os.environ[CACHE_GB_ENV] = str(cache_dir), str(size_gb)
    else:
        os.environ.pop(CACHE_DIR_ENV, None)
        os.environ.pop(CACHE_GB_ENV, None)


_BACKENDS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "fsspec.implementations.http",
             "https": "fsspec.implementations.http"}


def backend_modules(locations: Iterable[str]) -> list[str]:
    """The installed modules that open these URLs: for a process pool to import once before it forks
    workers (importing s3fs takes ~0.7 s, in every process that does)."""
    schemes = {m.group(1).lower() for loc in locations if (m := _URL.match(loc)) and is_url(loc)}
    modules = {_BACKENDS[s] for s in schemes if s in _BACKENDS}
    return sorted(m for m in modules if importlib.util.find_spec(m.split(".")[0]) is not None)


def _endpoint() -> str:
    env = os.environ
    return env.get(ENDPOINT_ENV) or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL", "")


_FILESYSTEMS: dict[tuple, Any] = {}


def _filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for a URL; one filesystem per process, scheme and endpoint."""
    protocol = _URL.match(url).group(1).lower()
    endpoint = os.environ.get(ENDPOINT_ENV, "")
    key = (os.getpid(), protocol, endpoint)
    fs = _FILESYSTEMS.get(key)
    if fs is None:
        import fsspec

        options: dict[str, Any] = {"skip_instance_cache": True}
        if protocol in ("s3", "s3a"):
            options.update(use_listings_cache=False, endpoint_url=endpoint or None, config_kwargs={
                "retries": {"total_max_attempts": 1, "mode": "standard"}, "connect_timeout": 10, "read_timeout": 60})
        elif protocol in ("gs", "gcs") and endpoint:
            options["endpoint_url"] = endpoint
        try:
            fs = fsspec.filesystem(protocol, **options)
        except ImportError as e:
            raise StorageError(f"{url}: {protocol}:// needs a package that is not installed ({e})") from None
        except ValueError:
            raise StorageError(f"{url}: unsupported URL scheme {protocol}://") from None
        if protocol in ("s3", "s3a"):
            fs.retries = 1  # s3fs's own retry loop: this module retries
        _FILESYSTEMS[key] = fs
    return fs, fs._strip_protocol(url)


def _one_line(text: Any, limit: int = 240) -> str:
    return " ".join(str(text).split())[:limit]


def classify(error: BaseException) -> tuple[str, str]:
    """(kind, detail) of a failure: kind is transient, refused, no_bucket, not_found or other."""
    chain, seen = [], error
    while seen is not None and len(chain) < 12:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    codes, statuses, names = [], [], set()
    for exc in chain:
        names.update(cls.__name__ for cls in type(exc).__mro__)
        response = getattr(exc, "response", None)
        if isinstance(response, dict) and isinstance(response.get("Error"), dict):
            codes.append(str(response["Error"].get("Code", "")))
            statuses.append(response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
        # aiohttp ClientResponseError.status (its .code is a deprecated alias), gcsfs HttpError.code
        status = getattr(exc, "status", None) if hasattr(exc, "status") else getattr(exc, "code", None)
        if isinstance(status, int):
            statuses.append(status)
    detail = _one_line(f"{codes[0]}: {error}" if codes and codes[0] not in str(error) else
                       f"{type(chain[-1]).__name__}: {chain[-1]}")
    statuses = [s for s in statuses if isinstance(s, int)]
    if "NoCredentialsError" in names or "PartialCredentialsError" in names:
        return "refused", "no credentials found"
    if "NoSuchBucket" in codes:
        return "no_bucket", detail
    if any(c in ("NoSuchKey", "404") for c in codes) or 404 in statuses or isinstance(error, FileNotFoundError):
        return "not_found", detail
    if any(c in _REFUSED_CODES or c in ("401", "403") for c in codes) or {401, 403} & set(statuses) \
            or isinstance(error, PermissionError):
        return "refused", detail
    if any(c in _TRANSIENT_CODES or c.startswith("5") for c in codes) or any(s >= 500 or s == 429 for s in statuses) \
            or names & _TRANSIENT_TYPES:
        return "transient", detail
    return "other", detail


def _call(url: str, what: str, fn: Callable[[], T]) -> T:
    """fn() under the retry policy (module docstring); failures become one-line errors naming `url`."""
    attempts = max(1, int(os.environ.get(ATTEMPTS_ENV, "8")))
    backoff = float(os.environ.get(BACKOFF_ENV, "0.5"))
    started = time.monotonic()
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - classified below, re-raised as one of three kinds
            kind, detail = classify(e)
        at = f" [endpoint {_endpoint()}]" if _endpoint() else ""
        if kind == "not_found":
            raise FileNotFoundError(f"{url}: no such object")
        if kind == "no_bucket":
            bucket = url.split("://", 1)[1].split("/", 1)[0]
            raise StorageError(f"{url}: {what} failed: bucket {bucket!r} does not exist{at}")
        if kind == "refused":
            raise StorageError(f"{url}: {what} refused ({detail}){_CREDENTIALS.get(url.split(':', 1)[0], '')}{at}")
        if kind == "other":
            raise StorageError(f"{url}: {what} failed ({detail})")
        if attempt == attempts:
            raise StorageError(f"{url}: {what} failed {attempts} times over {time.monotonic() - started:.1f}s, "
                               f"giving up (last: {detail}){at}")
        wait = min(backoff * 2 ** (attempt - 1), _MAX_WAIT_S) * random.uniform(0.75, 1.0)
        log.warning("%s: %s failed (%s); retrying in %.1fs (attempt %d of %d)", url, what, detail, wait, attempt + 1,
                    attempts)
        time.sleep(wait)
    raise AssertionError("unreachable")


def read_bytes(url: str, start: int | None = None, end: int | None = None) -> bytes:
    """The object's bytes, or bytes [start, end) of it."""
    fs, path = _filesystem(url)
    return _call(url, "read", lambda: fs.cat_file(path, start=start, end=end))


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


def write_bytes(url: str, data: bytes) -> None:
    """One PUT: readers see the old object or this one, never part of it."""
    fs, path = _filesystem(url)
    _call(url, "write", lambda: fs.pipe_file(path, data))


def put_file(local: str | Path, url: str) -> None:
    """Upload a local file; the object appears under `url` only once whole (one PUT, or a multipart
    upload that becomes visible when completed)."""
    fs, path = _filesystem(url)
    _call(url, "upload", lambda: fs.put_file(str(local), path))


def info(url: str) -> dict[str, Any]:
    """{"size", "type" ("file" | "directory"), "etag"} of an object or prefix; FileNotFoundError if none."""
    fs, path = _filesystem(url)
    found = _call(url, "stat", lambda: fs.info(path))
    return {"size": int(found.get("size") or 0), "type": found.get("type", "file"),
            "etag": str(found.get("ETag", found.get("etag", ""))).strip('"')}


def exists(url: str) -> bool:
    try:
        info(url)
    except FileNotFoundError:
        return False
    return True


def isdir(url: str) -> bool:
    try:
        return info(url.rstrip("/") + "/")["type"] == "directory"
    except FileNotFoundError:
        return False


def find(url: str) -> dict[str, dict[str, Any]]:
    """{name relative to `url` ('/'-separated): {"size", "etag"}} of every object under the prefix
    `url`, in sorted order ({} when there is none)."""
    fs, path = _filesystem(url)
    prefix = path.rstrip("/") + "/"
    try:
        found = _call(url, "list", lambda: fs.find(prefix, detail=True))
    except FileNotFoundError:
        return {}
    return {p[len(prefix):]: {"size": int(d.get("size") or 0), "etag": str(d.get("ETag", "")).strip('"')}
            for p, d in sorted(found.items()) if p.startswith(prefix) and not p.endswith("/")}


def can_list(url: str) -> bool:
    """Whether the store has folders to list (http(s) has none)."""
    return not url.lower().startswith(("http://", "https://"))


_LISTED: dict[tuple[int, str], set[str]] = {}


def listdir_cached(url: str) -> set[str]:
    """Names of the objects directly under the prefix `url`, listed once per process."""
    key = (os.getpid(), url.rstrip("/"))
    if key not in _LISTED:
        fs, path = _filesystem(url)
        try:
            found = _call(url, "list", lambda: fs.ls(path.rstrip("/"), detail=False))
        except FileNotFoundError:
            found = []
        _LISTED[key] = {p.rstrip("/").rsplit("/", 1)[-1] for p in found}
    return _LISTED[key]


def remove(urls: list[str]) -> None:
    """Delete objects (missing ones are fine)."""
    if urls:
        fs, _ = _filesystem(urls[0])
        paths = [_filesystem(u)[1] for u in urls]
        try:
            _call(urls[0], "delete", lambda: fs.rm(paths))
        except FileNotFoundError:
            pass


class _Tee:
    """A copy of a stream being written into the cache; renamed into place only when whole."""

    def __init__(self, cache: "_ShardCache", final: Path):
        self.cache, self.final = cache, final
        self.tmp = final.with_name(f".{final.name}.{os.getpid()}-{random.getrandbits(48):012x}.part")
        self.file: BinaryIO | None = open(self.tmp, "wb")

    def write(self, data: bytes) -> None:
        if self.file is not None:
            try:
                self.file.write(data)
            except OSError as e:  # a full disk loses the cache copy, not the read
                log.warning("%s: shard cache write failed (%s); not caching it", self.final, e)
                self.finish(False)

    def finish(self, whole: bool) -> None:
        if self.file is None:
            return
        self.file.close()
        self.file = None
        if whole:
            os.replace(self.tmp, self.final)
            self.cache.evict()
        else:
            self.tmp.unlink(missing_ok=True)


class _ShardCache:
    def __init__(self, folder: Path, max_bytes: int):
        self.folder, self.max_bytes = folder, max_bytes
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, url: str) -> Path:
        return self.folder / f"{hashlib.sha1(url.encode()).hexdigest()[:16]}-{url.rstrip('/').rsplit('/', 1)[-1]}"

    def open(self, url: str, size: int) -> BinaryIO | None:
        path = self.path(url)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            return None
        if size >= 0 and os.fstat(f.fileno()).st_size != size:
            f.close()
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # most recently used
        return f

    def evict(self) -> None:
        entries, now = [], time.time()
        for p in self.folder.iterdir():
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            if p.name.endswith(".part"):
                if now - st.st_mtime > 86400:  # left by a killed process
                    p.unlink(missing_ok=True)
            else:
                entries.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in entries)
        for _, size, p in sorted(entries):
            if total <= self.max_bytes:
                break
            p.unlink(missing_ok=True)
            total -= size


def _cache() -> _ShardCache | None:
    folder = os.environ.get(CACHE_DIR_ENV)
    if not folder:
        return None
    return _ShardCache(Path(folder), int(float(os.environ.get(CACHE_GB_ENV, "0")) * 1e9))


class _ObjectStream(io.RawIOBase):
    """An object read front to back in CHUNK range requests, the next one fetched ahead in a thread."""

    def __init__(self, url: str, size: int, tee: _Tee | None):
        super().__init__()
        self.url, self.size, self.tee = url, size, tee
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="vssl-fetch")
        self._buf, self._fetched, self._teed = memoryview(b""), 0, 0
        self._ahead = self._fetch()

    def _fetch(self) -> Future | None:
        start, end = self._fetched, min(self._fetched + CHUNK, self.size)
        if start >= end:
            return None
        self._fetched = end
        return self._pool.submit(read_bytes, self.url, start, end)

    def _next_chunk(self) -> bool:
        if self._ahead is None:
            return False
        start = self._teed
        data = self._ahead.result()
        expected = min(CHUNK, self.size - start)
        if len(data) != expected:
            raise StorageError(f"{self.url}: object changed while being read ({len(data)} bytes at {start}, "
                               f"expected {expected})")
        self._ahead = self._fetch()
        self._teed += len(data)
        if self.tee is not None:
            self.tee.write(data)
        self._buf = memoryview(data)
        return True

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if not self._buf and not self._next_chunk():
            return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                if self.tee is not None and self.size - self._teed <= _DRAIN:
                    while self._next_chunk():  # the tar's end padding: then the copy is whole
                        pass
            except Exception as e:  # noqa: BLE001 - only the cache copy is lost
                log.warning("%s: not cached (%s)", self.url, e)
            finally:
                if self.tee is not None:
                    self.tee.finish(self._teed == self.size)
                self._pool.shutdown(wait=False, cancel_futures=True)
                super().close()


def open_shard(location: str, size: int = -1) -> BinaryIO:
    """A shard to read front to back: a local file, a cached copy of the URL, or a stream of it.
    size: its bytes from the manifest, if known; an object of another size (or none) raises
    FileNotFoundError, as a missing local file does."""
    if not is_url(location):
        return open(location, "rb")
    cache = _cache()
    cached = cache.open(location, size) if cache is not None else None
    if cached is not None:
        return cached
    actual = info(location)["size"]
    if size >= 0 and actual != size:
        raise FileNotFoundError(f"{location}: object has {actual} bytes, its manifest says {size}")
    tee = None
    if cache is not None and actual <= cache.max_bytes:
        try:
            tee = _Tee(cache, cache.path(location))
        except OSError as e:
            log.warning("%s: shard cache unusable (%s); reading without it", cache.folder, e)
    return io.BufferedReader(_ObjectStream(location, actual, tee), buffer_size=1 << 20)
