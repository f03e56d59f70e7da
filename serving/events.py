"""Impressions and clicks posted to the server: on disk before they are acknowledged, then parquet.

The path of a batch of events (`EventWriter.append`):
1. Events whose key was seen recently are dropped as duplicates. The key is (request_id,
   position), or (request_id, item_id) for an event without a position.
2. With `durability="fsync"` (the default) the rest is encoded as one record of a write-ahead log
   (`serving/wal.py`, in `<events_dir>/wal/`) and the caller gets a future that resolves once the
   record is written and fsynced. One thread does the writing: every record that arrived while it
   was busy shares its next fsync (group commit), so many concurrent requests cost one fsync.
   `"write"` skips the fsync (survives kill -9, not a power cut); `"memory"` is the former path:
   nothing on disk until the parquet flush (a kill -9 loses up to a second of events).
3. Once `batch` events or `flush_seconds` have passed, the segment is closed and its events are
   written to `<events_dir>/impressions-<UTC time>-<pid>-<seq>.parquet` (temporary name, fsync,
   rename: a reader never sees half a file), and the segment is deleted. The file's name is
   chosen when its segment is opened, so writing it again after a crash is idempotent.
   Once a group is durable (or, with `"memory"`, once accepted) its events go to `on_durable`
   (the streaming user features, `serving/stream.py`), which must only queue them.
4. A starting writer replays the segments of every writer that died (kill -9, power cut) into
   their parquet files before it accepts anything; `close()` writes everything accepted.

The queue is bounded (`capacity` events accepted and not yet in parquet): a batch that does not
fit is refused whole (the caller answers 503 and the client may retry). Readers (`read_events`)
see only the parquet files, deduplicated by key as well (several workers each keep their own
window of recent keys).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import polars as pl

from recsys.data import columns as C
from recsys.data.contracts import IMPRESSIONS
from serving import wal

log = logging.getLogger(__name__)
SCHEMA = {col.name: col.dtype for col in IMPRESSIONS}
COLUMNS = tuple(SCHEMA)
TS_AT = COLUMNS.index(C.EVENT_TIMESTAMP)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
PATTERN = "impressions-*.parquet"
Durability = Literal["fsync", "write", "memory"]
Row = dict[str, Any]


class QueueFull(Exception):
    """The event queue cannot take this batch now; nothing of it was accepted."""


def events_frame(rows: Sequence[Row]) -> pl.DataFrame:
    """Rows (dicts with the impressions columns) as a frame in the impressions contract."""
    return pl.DataFrame(list(rows), schema=SCHEMA, orient="row")


def event_key(row: Row) -> Hashable:
    """What makes an event a duplicate of another: (request_id, position), or (request_id,
    item_id) where the position is unknown."""
    position = row[C.POSITION]
    return (row[C.REQUEST_ID], position) if position is not None else (row[C.REQUEST_ID], row[C.ITEM_ID])


def _key_columns(df: pl.DataFrame) -> pl.DataFrame:
    return df.select(C.REQUEST_ID, C.POSITION,
                     pl.when(pl.col(C.POSITION).is_null()).then(pl.col(C.ITEM_ID)).alias("_item"))


def drop_duplicate_events(df: pl.DataFrame) -> pl.DataFrame:
    """The first event of each key (`event_key`), in order."""
    if df.height == 0:
        return df
    first = _key_columns(df).with_row_index("_i").unique([C.REQUEST_ID, C.POSITION, "_item"], keep="first")
    return df[first["_i"].sort()] if first.height < df.height else df


def event_files(events_dir: str | Path) -> list[Path]:
    """The server's parquet parts, oldest first (the file names start with the UTC time)."""
    return sorted(Path(events_dir).glob(PATTERN))


def read_events(events_dir: str | Path) -> pl.DataFrame:
    """Every impression the server has written, in the impressions contract, duplicates dropped."""
    files = event_files(events_dir)
    if not files:
        return events_frame([])
    return drop_duplicate_events(pl.concat([pl.read_parquet(f) for f in files], how="vertical"))


# ------------------------------------------------------------------ the log's record of a batch
def encode_rows(rows: Sequence[Row]) -> bytes:
    """A batch as one WAL payload: JSON rows in COLUMNS order, the time in µs since the epoch."""
    out = []
    for r in rows:
        values = [r[c] for c in COLUMNS]
        values[TS_AT] = (values[TS_AT] - EPOCH) // MICROSECOND
        out.append(values)
    return json.dumps(out, separators=(",", ":")).encode()


def decode_rows(payload: bytes) -> list[Row]:
    rows = []
    for values in json.loads(payload):
        values[TS_AT] = EPOCH + values[TS_AT] * MICROSECOND
        rows.append(dict(zip(COLUMNS, values, strict=True)))
    return rows


def write_events_file(rows: Sequence[Row], path: Path, sync: bool = True) -> Path:
    """Write rows to `path` whole: a temporary name beside it, fsync, rename, fsync the folder."""
    tmp = path.with_name(f".{path.name}.tmp")
    events_frame(rows).sort(C.EVENT_TIMESTAMP).write_parquet(tmp)
    try:
        if sync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if sync:
        wal.fsync_dir(path.parent)
    return path


@dataclass(frozen=True)
class Recovered:
    events: int
    segments: int
    files: list[Path]


def recover(events_dir: Path, own: str | None = None) -> Recovered:
    """Publish the segments of every dead writer in `<events_dir>/wal` to their parquet files."""
    events = segments = 0
    files = []
    for lock in wal.dead_writers(events_dir / "wal", own):
        try:
            for path in lock.segments():
                seg = wal.read_segment(path)
                if seg.torn:
                    log.warning("%s ends in a torn record (never acknowledged); ignoring it", path.name)
                if seg.target is not None and not (events_dir / seg.target).exists():
                    rows = [r for p in seg.payloads for r in decode_rows(p)]
                    if rows:
                        with contextlib.suppress(FileNotFoundError):
                            (events_dir / f".{seg.target}.tmp").unlink()
                        files.append(write_events_file(rows, events_dir / seg.target))
                        events += len(rows)
                path.unlink()
                segments += 1
        finally:
            lock.release(remove=not lock.segments())
    if segments:
        log.info("replayed %d events from %d write-ahead log segments of stopped writers", events, segments)
    return Recovered(events, segments, files)


class KeyWindow:
    """The most recent `capacity` event keys (an insertion-ordered set)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._keys: OrderedDict[Hashable, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: Hashable) -> bool:
        """True if `key` is new (and now remembered)."""
        if key in self._keys:
            return False
        if self.capacity > 0:
            self._keys[key] = None
            if len(self._keys) > self.capacity:
                self._keys.popitem(last=False)
        return True

    def discard(self, keys: Sequence[Hashable]) -> None:
        for k in keys:
            self._keys.pop(k, None)

    def seed(self, events_dir: Path) -> int:
        """Remember the keys of the newest parquet files, up to the capacity."""
        frames, n = [], 0
        for f in reversed(event_files(events_dir)):
            if n >= self.capacity:
                break
            try:
                df = pl.read_parquet(f, columns=[C.REQUEST_ID, C.POSITION, C.ITEM_ID])
            except Exception as exc:  # noqa: BLE001 (a foreign or damaged file must not stop the server)
                log.warning("cannot read keys of %s (%s); skipping it", f.name, exc)
                continue
            frames.append(df)
            n += df.height
        for df in reversed(frames):  # oldest first, so the newest stay in the window
            for request_id, position, item_id in df.iter_rows():
                self.add((request_id, position) if position is not None else (request_id, item_id))
        return n


@dataclass(frozen=True)
class Receipt:
    """What `append` made of a batch: `durable` resolves when the accepted events are on disk
    (one future for every batch in the same group commit: wait on it, never cancel it)."""

    accepted: int
    duplicates: int
    durable: Future[None]

    async def wait(self) -> None:
        """Until durable, from the event loop. Unlike `asyncio.wrap_future`, a request that is
        cancelled (its client went away) does not cancel the future the others share."""
        if self.durable.done():
            self.durable.result()
            return
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()

        def settle(done: Future[None]) -> None:
            if waiter.done():
                return
            if (exc := done.exception()) is not None:
                waiter.set_exception(exc)
            else:
                waiter.set_result(None)

        self.durable.add_done_callback(lambda done: loop.call_soon_threadsafe(settle, done))
        await waiter


@dataclass
class _Group:
    """The batches waiting for the next write + fsync, and their one future."""

    future: Future[None] = field(default_factory=Future)
    keys: list[Hashable] = field(default_factory=list)
    records: list[bytes] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)


@dataclass
class _Closed:
    """A finished segment (or, without a log, a batch) for the parquet thread."""

    target: str
    rows: list[Row]
    segment: Path | None


def _done() -> Future[None]:
    f: Future[None] = Future()
    f.set_result(None)
    return f


DONE = _done()  # the receipt of every batch when nothing has to reach the disk first


class EventWriter:
    """Deduplication, the write-ahead log with group commit, and the parquet writer (see the
    module docstring). Thread-safe; `append` never blocks on the disk."""

    def __init__(self, events_dir: str | Path, capacity: int = 100_000, batch: int = 1000,
                 flush_seconds: float = 1.0, on_write: Callable[[int], None] | None = None,
                 durability: Durability = "fsync", dedup_window: int = 200_000,
                 on_durable: Callable[[list[Row]], None] | None = None):
        self.dir = Path(events_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.capacity = capacity
        self.batch = batch
        self.flush_seconds = flush_seconds
        self.on_write = on_write
        self.durability = durability
        self.on_durable = on_durable
        self.writer = f"{os.getpid()}.{secrets.token_hex(4)}"
        self._lock: wal.WriterLock | None = None
        if durability != "memory":
            (self.dir / "wal").mkdir(exist_ok=True)
            self._lock = wal.WriterLock(self.dir / "wal", self.writer)
        self.recovered = recover(self.dir, own=self.writer)
        self._seen = KeyWindow(dedup_window)
        self._seen.seed(self.dir)
        self._cond = threading.Condition()
        self._group: _Group | None = None  # batches waiting for the next write + fsync
        self._memory_rows: list[Row] = []  # durability="memory": rows for the next file
        self._depth = 0  # accepted, not yet in parquet
        self._closing = False
        self._seq = 0
        self._segment: wal.Segment | None = None
        self._segment_rows: list[Row] = []
        self._segment_since = 0.0
        self._closed: queue.Queue[_Closed | None] = queue.Queue()
        self.written = 0
        self.duplicates = 0
        self.files: list[Path] = []
        self._sync_thread = threading.Thread(target=self._sync_loop, name="event-log", daemon=True)
        self._parquet_thread = threading.Thread(target=self._parquet_loop, name="event-writer", daemon=True)
        self._sync_thread.start()
        self._parquet_thread.start()

    @property
    def depth(self) -> int:
        return self._depth

    # ---------------------------------------------------------------- intake
    def append(self, rows: Sequence[Row]) -> Receipt:
        """Accept the new events of `rows` whole or not at all (QueueFull). Await or wait on the
        receipt's `durable` before acknowledging: a batch of only duplicates waits too (its first
        copy may still be on its way to the disk)."""
        with self._cond:
            if self._closing:
                raise QueueFull("the server is shutting down")
            if self._depth + len(rows) > self.capacity:  # duplicates count: checked before they are known
                raise QueueFull(f"event queue full ({self._depth}/{self.capacity} rows); retry later")
            fresh, keys = [], []
            for r in rows:
                k = event_key(r)
                if self._seen.add(k):
                    fresh.append(r)
                    keys.append(k)
            self._depth += len(fresh)
            self.duplicates += len(rows) - len(fresh)
            if self.durability == "memory":
                self._memory_rows.extend(fresh)
                if len(self._memory_rows) >= self.batch:
                    self._cond.notify()
            else:
                if self._group is None:
                    self._group = _Group()
                    self._cond.notify()
                group = self._group
                if fresh:
                    group.records.append(wal.record(encode_rows(fresh)))
                    group.rows.extend(fresh)
                    group.keys.extend(keys)
                return Receipt(len(fresh), len(rows) - len(fresh), group.future)
        self._hand_over(fresh)  # "memory": accepted is all there is
        return Receipt(len(fresh), len(rows) - len(fresh), DONE)

    def submit(self, rows: Sequence[Row]) -> int:
        """`append` and wait until it is durable; returns how many events were accepted."""
        receipt = self.append(rows)
        receipt.durable.result()
        return receipt.accepted

    def close(self, timeout: float = 30.0) -> None:
        """Stop accepting, write everything accepted to parquet, and wait for the threads."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        deadline = time.monotonic() + timeout
        self._sync_thread.join(timeout)
        self._parquet_thread.join(max(0.0, deadline - time.monotonic()))
        if self._parquet_thread.is_alive():
            log.error("event writer did not finish within %.0f s; %d events unwritten (kept in the "
                      "write-ahead log, replayed at the next start)", timeout, self.depth)
        elif self._lock is not None:
            self._lock.release(remove=not self._lock.segments())

    # ---------------------------------------------------------------- the log thread
    def _rotation_due(self, now: float) -> bool:
        n = len(self._segment_rows)
        return n > 0 and (n >= self.batch or now - self._segment_since >= self.flush_seconds)

    def _sync_loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self.durability == "memory":  # no log: the pending rows are the segment
                        self._take_memory_rows()
                    now = time.monotonic()
                    if self._group is not None or self._closing or self._rotation_due(now):
                        break
                    wait = (self.flush_seconds - (now - self._segment_since)) if self._segment_rows else None
                    self._cond.wait(wait)
                group, self._group = self._group, None
                closing = self._closing
            if group is not None:
                self._persist(group)
            if self._segment_rows and (closing or self._rotation_due(time.monotonic())):
                self._rotate()
            if closing:
                with self._cond:
                    if self._group is None and not self._memory_rows:
                        break
        if self._segment is not None:  # opened, never used
            self._segment.close()
            self._segment.path.unlink(missing_ok=True)
        self._closed.put(None)

    def _take_memory_rows(self) -> None:
        if self._memory_rows:
            if not self._segment_rows:
                self._segment_since = time.monotonic()
            self._segment_rows.extend(self._memory_rows)
            self._memory_rows = []

    def _target(self) -> str:
        self._seq += 1
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        # pid: several uvicorn workers write into the same folder
        return f"impressions-{stamp}-{os.getpid()}-{self._seq:06d}.parquet"

    def _persist(self, group: _Group) -> None:
        """Write and fsync the group's records, then resolve its future (or fail it, and forget
        its keys and count: nothing of it was accepted)."""
        rows = group.rows
        if self._segment_rows and len(self._segment_rows) + len(rows) > self.batch:
            self._rotate()  # files of at most `batch` events, unless one group commit holds more
        try:
            if group.records:
                if self._segment is None:
                    target = self._target()
                    self._segment = wal.Segment(self.dir / "wal", self.writer, self._seq, target,
                                                sync=self.durability == "fsync")
                self._segment.write(b"".join(group.records))
            if self._segment is not None:
                self._segment.sync()
        except OSError as exc:
            log.error("the write-ahead log failed (%s); %d events refused", exc, len(rows))
            with self._cond:
                self._seen.discard(group.keys)
                self._depth -= len(rows)
            if self._segment is not None and self._segment_rows:
                self._rotate()  # keep what was durable; the next batch starts a new segment
            elif self._segment is not None:
                self._segment.close()
                self._segment.path.unlink(missing_ok=True)
                self._segment = None
            with contextlib.suppress(InvalidStateError):
                group.future.set_exception(exc)
            return
        if rows and not self._segment_rows:
            self._segment_since = time.monotonic()
        self._segment_rows.extend(rows)
        with contextlib.suppress(InvalidStateError):  # a caller cancelled it: the others still wait
            group.future.set_result(None)
        self._hand_over(rows)

    def _hand_over(self, rows: list[Row]) -> None:
        """Give accepted events to `on_durable`; its failure must not touch the events' fate."""
        if self.on_durable is None or not rows:
            return
        try:
            self.on_durable(rows)
        except Exception:  # a bug downstream: the events are on disk all the same
            log.exception("on_durable failed for %d events", len(rows))

    def _rotate(self) -> None:
        rows, self._segment_rows = self._segment_rows, []
        if self._segment is not None:
            self._segment.close()
            self._closed.put(_Closed(self._segment.target, rows, self._segment.path))
            self._segment = None
            return
        for start in range(0, len(rows), self.batch):  # no log: files of `batch` events
            self._closed.put(_Closed(self._target(), rows[start:start + self.batch], None))

    # ---------------------------------------------------------------- the parquet thread
    def _parquet_loop(self) -> None:
        while (closed := self._closed.get()) is not None:
            try:
                self._publish(closed)
            except Exception:  # a bug, not the disk: say so loudly and keep serving
                log.exception("cannot write %d events to parquet (kept in %s)", len(closed.rows),
                              closed.segment.name if closed.segment else "memory only: lost")

    def _publish(self, closed: _Closed) -> None:
        path = self.dir / closed.target
        while True:
            try:
                write_events_file(closed.rows, path, sync=self.durability == "fsync")
                break
            except OSError as exc:  # disk full, permissions: keep the rows, retry
                log.error("writing %d events failed (%s); retrying in 1 s", len(closed.rows), exc)
                time.sleep(1.0)
        if closed.segment is not None:
            closed.segment.unlink(missing_ok=True)
        with self._cond:
            self._depth -= len(closed.rows)
        self.written += len(closed.rows)
        self.files.append(path)
        if self.on_write is not None:
            self.on_write(len(closed.rows))
