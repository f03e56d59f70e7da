"""A write-ahead log: segments of length-prefixed, checksummed records, owned by one live process.

A record is `<u32 length><u32 crc32><payload>` (little-endian); what the payload means is the
caller's business. The first record of a segment is its header, JSON `{"target": <file name>}`:
the name under which the segment's contents will be published, chosen when the segment is opened.
That makes publishing idempotent: a segment whose target exists was published (a target is only
ever created whole, by rename), one whose target is missing is published under that name now.

A torn tail (the process died inside a write) ends a segment at its last whole record; a caller
that acknowledges only after `sync()` never acknowledged what was torn.

Ownership: a writer holds an exclusive `flock` on `<wal>/<writer>.lock` while it lives, and the
kernel drops it when the process dies, however it dies (kill -9 included). `dead_writers` yields
the writers whose lock can be taken, so a starting process replays exactly the segments that no
live process owns (several workers may share one folder).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HEAD = struct.Struct("<II")
SUFFIX = ".wal"


def record(payload: bytes) -> bytes:
    """One framed record."""
    return HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def fsync_dir(path: Path) -> None:
    """Make the creation, rename or removal of entries in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_records(path: Path) -> tuple[list[bytes], bool]:
    """The whole records of a segment, and whether a torn tail followed them."""
    data = path.read_bytes()
    out, at = [], 0
    while at + HEAD.size <= len(data):
        length, crc = HEAD.unpack_from(data, at)
        payload = data[at + HEAD.size: at + HEAD.size + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            break
        out.append(payload)
        at += HEAD.size + length
    return out, at < len(data)


@dataclass(frozen=True)
class SegmentContents:
    path: Path
    target: str | None  # None: the process died while creating it (nothing in it was acknowledged)
    payloads: list[bytes]
    torn: bool


def read_segment(path: Path) -> SegmentContents:
    records, torn = read_records(path)
    if not records:
        return SegmentContents(path, None, [], torn)
    target = json.loads(records[0])["target"]
    return SegmentContents(path, target, records[1:], torn)


class Segment:
    """An open segment, appended to by one thread. `sync=False`: records reach the page cache
    only (they survive the process being killed, not the machine losing power)."""

    def __init__(self, wal_dir: Path, writer: str, seq: int, target: str, sync: bool = True):
        self.path = wal_dir / f"{writer}-{seq:06d}{SUFFIX}"
        self.target = target
        self.sync_enabled = sync
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self.size = 0
        self.write(record(json.dumps({"target": target}).encode()))  # durable with the first sync()
        if sync:
            fsync_dir(wal_dir)

    def write(self, data: bytes) -> None:
        """Append `data` whole; after an error the segment ends at its last whole record."""
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.size)
            raise
        self.size += len(data)

    def sync(self) -> None:
        if self.sync_enabled:
            os.fdatasync(self._fd)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


class WriterLock:
    """This process's claim on its segments (see the module docstring)."""

    def __init__(self, wal_dir: Path, writer: str, fd: int | None = None):
        self.path = wal_dir / f"{writer}.lock"
        self.writer = writer
        if fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh name: nobody else holds it
        self._fd: int | None = fd

    def segments(self) -> list[Path]:
        """This writer's segments, oldest first."""
        return sorted(self.path.parent.glob(f"{self.writer}-*{SUFFIX}"))

    def release(self, remove: bool = True) -> None:
        """Drop the claim; `remove`: the writer has no segments left, forget it."""
        if self._fd is None:
            return
        if remove:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(self._fd)
        self._fd = None


def dead_writers(wal_dir: Path, own: str | None = None) -> Iterator[WriterLock]:
    """Locks of the writers in `wal_dir` that no live process holds, taken by this process.
    The caller replays their segments, then `release()`s each."""
    if not wal_dir.is_dir():
        return
    names = {p.stem for p in wal_dir.glob("*.lock")}
    names |= {p.name[: -len(SUFFIX)].rsplit("-", 1)[0] for p in wal_dir.glob(f"*{SUFFIX}")}
    for writer in sorted(names - {own}):
        try:
            fd = os.open(wal_dir / f"{writer}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # alive, or being replayed by another process right now
            os.close(fd)
            continue
        yield WriterLock(wal_dir, writer, fd)
