"""Impressions and clicks posted to the server, appended to parquet by a background thread.

The queue is bounded: a batch that does not fit is refused whole (the caller gets 503 and may
retry), so what was accepted is exactly what will be written. The writer drains up to
`batch` rows, or whatever is there after `flush_seconds`, into a new file
`<events_dir>/impressions-<UTC time>-<pid>-<seq>.parquet`, written to a temporary name and renamed
(a reader never sees half a file). `close()` writes everything still queued, so nothing
accepted is lost on a graceful shutdown.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from recsys.data import columns as C
from recsys.data.contracts import IMPRESSIONS
from recsys.io import write_parquet

log = logging.getLogger(__name__)
SCHEMA = {col.name: col.dtype for col in IMPRESSIONS}


class QueueFull(Exception):
    """The event queue cannot take this batch now; nothing of it was accepted."""


def events_frame(rows: Sequence[dict[str, Any]]) -> pl.DataFrame:
    """Rows (dicts with the impressions columns) as a frame in the impressions contract."""
    return pl.DataFrame(list(rows), schema=SCHEMA, orient="row")


def read_events(events_dir: str | Path) -> pl.DataFrame:
    """Every impression the server has written, in the impressions contract."""
    files = sorted(Path(events_dir).glob("impressions-*.parquet"))
    if not files:
        return events_frame([])
    return pl.concat([pl.read_parquet(f) for f in files], how="vertical")


class EventWriter:
    """Bounded queue + one writer thread. Thread-safe; `submit` never blocks."""

    def __init__(self, events_dir: str | Path, capacity: int = 100_000, batch: int = 1000,
                 flush_seconds: float = 1.0, on_write: Callable[[int], None] | None = None):
        self.dir = Path(events_dir)
        self.capacity = capacity
        self.batch = batch
        self.flush_seconds = flush_seconds
        self.on_write = on_write
        self._rows: deque[dict[str, Any]] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._seq = 0
        self.written = 0
        self.files: list[Path] = []
        self._thread = threading.Thread(target=self._run, name="event-writer", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return len(self._rows)

    def submit(self, rows: Sequence[dict[str, Any]]) -> int:
        """Queue rows whole or not at all (QueueFull); returns how many were accepted."""
        with self._cond:
            if self._closing:
                raise QueueFull("the server is shutting down")
            if len(self._rows) + len(rows) > self.capacity:
                raise QueueFull(f"event queue full ({len(self._rows)}/{self.capacity} rows); retry later")
            self._rows.extend(rows)
            if len(self._rows) >= self.batch:
                self._cond.notify()
        return len(rows)

    def close(self, timeout: float = 30.0) -> None:
        """Stop accepting, write everything queued, and wait for the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("event writer did not finish within %.0f s; %d rows unwritten", timeout, self.depth)

    def _take(self) -> list[dict[str, Any]]:
        with self._cond:
            deadline = time.monotonic() + self.flush_seconds
            while len(self._rows) < self.batch and not self._closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            n = min(len(self._rows), self.batch)
            return [self._rows.popleft() for _ in range(n)]

    def _run(self) -> None:
        while True:
            rows = self._take()
            if rows:
                try:
                    self._write(rows)
                except Exception:  # a bug, not the disk: say so loudly and keep serving
                    log.exception("dropping %d events that cannot be written", len(rows))
            elif self._closing:
                return

    def _write(self, rows: list[dict[str, Any]]) -> None:
        while True:
            try:
                df = events_frame(rows)
                self._seq += 1
                stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
                # pid: several uvicorn workers write into the same folder
                path = self.dir / f"impressions-{stamp}-{os.getpid()}-{self._seq:06d}.parquet"
                write_parquet(df.sort(C.EVENT_TIMESTAMP), path)
                break
            except OSError as exc:  # disk full, permissions: keep the rows, retry
                log.error("writing %d events failed (%s); retrying in 1 s", len(rows), exc)
                time.sleep(1.0)
        self.written += len(rows)
        self.files.append(path)
        if self.on_write is not None:
            self.on_write(len(rows))
