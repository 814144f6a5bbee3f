"""Reading a run of samples out of a tar shard, by position, without unpacking unwanted ones.

    from pipeline.data.tar_reader import read_segment
    for raw in read_segment(segment, first_pos=0, wanted=lambda pos: True):
        raw.pos, raw.key, raw.members["mp4"], raw.error

A sample is the group of consecutive members sharing a key (webdataset's `base_plus_ext`). URLs
(s3://, gs://, http(s)://) are opened with pipeline.storage.open_shard (retries, the optional local
shard cache, the object's size checked against the manifest), paths and `pipe:` commands with
webdataset's `gopen`. A shard is walked as a tar stream here rather than with webdataset's
tar_file_iterator, which reads every member: a member is extracted only if its sample is wanted
(resume skips emitted samples unread) and its extension is one of the shard format's that the
reader asks for (so `.pyd`/`.pickle` members are never read, let alone unpickled, and annotations
nobody uses stay in the tar). A store that stays unreachable raises
storage.StorageError (the loader stops with it); samples the segment needs but the shard cannot give
come back with `error` set:

    shard_unreadable  the shard could not be opened (missing, or not the size its manifest says)
    truncated_shard   the tar ended mid-sample or is damaged (logged once per shard)
    shard_short       the tar holds fewer samples than its manifest count (logged once per shard)
"""

from __future__ import annotations

import logging
import os
import tarfile
from dataclasses import dataclass, field
from typing import Callable, Collection, Iterator

from webdataset.gopen import gopen, set_options
from webdataset.tariterators import base_plus_ext

from pipeline import storage
from pipeline.data.plan import Segment
from pipeline.data.shard_format import KNOWN_EXTS

log = logging.getLogger("vssl.data")


@dataclass
class RawSample:
    pos: int  # input position in the stream
    key: str
    shard: str
    members: dict[str, bytes] = field(default_factory=dict)
    error: str | None = None
    source: int = 0  # the shard's data.sources index (ShardRef.source): which clip sampling applies


def _walk(stream, segment: Segment, first_pos: int, wanted: Callable[[int], bool],
          whole: bool, exts: Collection[str]) -> Iterator[RawSample]:
    """Yield the wanted samples of the segment in order; when the tar is not `whole` (cut off),
    the sample being read at its end is yielded as truncated_shard."""
    tar = tarfile.open(fileobj=stream, mode="r|")
    index, current = -1, None
    for info in tar:
        key, ext = base_plus_ext(info.name)
        if not info.isreg() or key is None:
            continue
        if current is None or key != current.key:
            if current is not None and current.error is None:
                yield current
            index += 1
            if index >= segment.stop:
                return
            pos = first_pos + index - segment.start
            take = index >= segment.start and wanted(pos)
            current = RawSample(pos, key, segment.shard.name, error=None if take else "unwanted",
                                source=segment.shard.source)
        ext = ext.lower()
        if current.error is None and ext in exts:
            current.members[ext] = tar.extractfile(info).read()
    if current is not None and current.error is None:
        if not whole:
            current.error = "truncated_shard"
        yield current


def _has_end_marker(url: str) -> bool:
    """False for a local tar whose last 1024 bytes are not the zero end-of-archive blocks
    (True where it cannot be told, e.g. pipe: or remote shards)."""
    if not os.path.isfile(url):
        return True
    with open(url, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size < 1024:
            return False
        f.seek(size - 1024)
        return f.read(1024) == bytes(1024)


def read_segment(segment: Segment, first_pos: int, wanted: Callable[[int], bool],
                 exts: Collection[str] = KNOWN_EXTS) -> Iterator[RawSample]:
    """Samples of `segment` at input positions first_pos.., wanted ones only, failures included;
    only members with an extension in `exts` (a subset of the shard format's) are extracted."""
    name = segment.shard.name
    done: set[int] = set()
    error = None
    whole = True
    url = segment.shard.url
    try:
        stream = storage.open_shard(url, segment.shard.bytes) if storage.is_url(url) else gopen(url)
    except OSError as e:
        error = "shard_unreadable"
        log.warning("%s: cannot open shard (%s)", name, e)
    else:
        whole = _has_end_marker(url)
        try:
            for raw in _walk(stream, segment, first_pos, wanted, whole, set(exts) & set(KNOWN_EXTS)):
                done.add(raw.pos)
                yield raw
            # everything needed was read: a pipe producer cut off by an early close may exit non-zero
            set_options(stream, ignore_errors=True)
        except (tarfile.TarError, OSError, EOFError) as e:
            error = "truncated_shard"
            log.warning("%s: shard damaged or truncated after %d wanted samples (%s: %s); ending it here",
                        name, len(done), e.__class__.__name__, e)
        finally:
            try:
                stream.close()
            except OSError:
                pass
    lost = [p for p in range(first_pos, first_pos + segment.stop - segment.start) if p not in done and wanted(p)]
    if lost and error is None and not whole:
        # a tar cut at a member boundary streams without error; only its missing end blocks tell
        error = "truncated_shard"
        log.warning("%s: shard truncated (no end-of-archive blocks); %d wanted samples missing", name, len(lost))
    if lost and error is None:
        error = "shard_short"
        log.warning("%s: holds fewer samples than its manifest count; %d missing", name, len(lost))
    for pos in lost:
        yield RawSample(pos, "", name, error=error)
