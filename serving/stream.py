"""Streaming user features: accepted events reach the user's online features in milliseconds.

The event writer (`serving/events.py`) hands every batch it has made durable to
`UserFeatureStream.submit`, which only queues it: the request path never waits on Feast. One
thread takes everything queued since its last pass (so the writes batch themselves under load),
recomputes the touched users' `user_behaviour` rows from their recent events
(`features.stream.UserEventBuffer`, the daily job's code) and pushes them to the view's
`PushSource` into the configured online store. Feast's `FeatureStore.push` looks up the views of
a push source in the registry on every call (~10 ms of protobuf parsing here, more than the
write); the stream looks them up once when it opens and then makes the write `push` makes
(`write_to_online_store` of each of those views, `PushMode.ONLINE`). The next
request reads them: the clicked item heads `last_clicked_items`, so it is excluded and the user
vector follows the new history.

At start the thread seeds its buffer from the impressions table and the events folder (the
recent events of every user), so a pushed row counts a user's history, not only what this
process saw. A pushed row is stamped at the midnight its values belong to (after the user's
latest event) plus the time of day of the push, so later pushes win in Redis (which keeps the
newest timestamp per entity and skips older rows). A materialization's row for the same day
(stamped at that midnight) is then older and skipped by Redis: the pushed row holds the same
events or more. The next day's snapshot is newer and replaces it; sqlite keeps whichever row
was written last.

Several workers each see only their own events: a user's row then counts what one worker saw
since the last `recsys features build`. Run one worker, or route a user's events to one worker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import polars as pl

from features.definitions import USER_BEHAVIOUR, USER_PUSH_SOURCE
from recsys.config import Settings
from recsys.data import columns as C
from recsys.workspace import Workspace

log = logging.getLogger(__name__)
Row = dict[str, Any]


@dataclass
class StreamStats:
    """What the stream has done, for tests, benchmarks and logs."""

    seeded_events: int = 0
    received: int = 0
    pushed_rows: int = 0
    pushes: int = 0
    failures: int = 0
    last_error: str | None = None


class StreamCollector:
    """The stream's figures for /metrics, read from its stats at each scrape (a push that fails
    is retried and logged; here it is also counted)."""

    def __init__(self, stream: UserFeatureStream):
        self.stream = stream

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        st = self.stream.stats
        counters = [("recsys_stream_events", "Accepted events handed to the feature stream", st.received),
                    ("recsys_stream_rows_pushed", "User feature rows written to the online store",
                     st.pushed_rows),
                    ("recsys_stream_push_failures",
                     "Passes whose write to the online store failed (their rows are retried)", st.failures)]
        for name, text, value in counters:
            yield CounterMetricFamily(name, text, value=value)
        backlog = "Events handed to the stream, not pushed or failed yet"
        yield GaugeMetricFamily("recsys_stream_backlog", backlog, value=self.stream.backlog)
        yield GaugeMetricFamily("recsys_stream_up", "1 while the stream runs and its last push succeeded",
                                value=float(self.stream.running and st.last_error is None))


def stream_enabled(settings: Settings) -> bool:
    """On unless `features.stream` is off, once a feature registry exists (`recsys features build`):
    without one there are no online user features to update."""
    ws = Workspace.at(settings.home)
    return settings.features.stream and (ws.feast_dir / "registry.db").exists()


def push_timestamps(stamps: pl.Series, now: datetime) -> pl.Series:
    """The time a pushed row is stored under: its snapshot stamp plus the time of day of `now`."""
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return stamps + (now - midnight)


class UserFeatureStream:
    """Queue of accepted events -> recomputed user rows -> Feast push (see the module docstring).

    `submit` is cheap and thread-safe; `flush` waits until everything submitted is pushed (or
    failed); `close` stops the thread after a last push."""

    def __init__(self, settings: Settings, retry_seconds: float = 1.0, seed: bool = True):
        self.settings = settings
        self.ws = Workspace.at(settings.home)
        self.retry_seconds = retry_seconds
        self.stats = StreamStats()
        self._seed_wanted = seed
        self._cond = threading.Condition()
        self._pending: list[Row] = []
        self._submitted = 0  # events submitted so far
        self._done = 0  # of them, pushed or failed
        self._closing = False
        self._ready = threading.Event()
        self._views: list[str] = []  # fed by the push source, found when the thread opens the store
        self._items_file: tuple[int, int, int] | None = None  # the items table behind the categories
        self._thread = threading.Thread(target=self._run, name="feature-stream", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- intake
    def submit(self, rows: Sequence[Row]) -> None:
        """Queue accepted (durable, deduplicated) events; returns at once."""
        if not rows:
            return
        with self._cond:
            if self._closing:
                return
            self._pending.extend(rows)
            self._submitted += len(rows)
            self.stats.received += len(rows)
            self._cond.notify()

    @property
    def backlog(self) -> int:
        """Events submitted and not yet pushed (or failed)."""
        return self._submitted - self._done

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def register(self, registry: Any) -> None:
        """Expose the stream's figures in a Prometheus `CollectorRegistry` (the app's /metrics)."""
        registry.register(StreamCollector(self))

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Until the buffer is seeded and the store open (True), or the timeout (False)."""
        return self._ready.wait(timeout)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every event submitted so far is pushed or has failed; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._submitted
            while self._done < target:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Push what is queued, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # ---------------------------------------------------------------- the thread
    def _open(self) -> tuple[Any, Any]:
        from features.jobs import BehaviourParams
        from features.store import apply, feature_store
        from features.stream import UserEventBuffer

        store = feature_store(self.settings)
        self._views = self._push_views(store)
        if USER_BEHAVIOUR not in self._views:
            log.info("registering the push source %s (a registry from before streaming)", USER_PUSH_SOURCE)
            apply(self.settings, store, force=True)
            self._views = self._push_views(store)
        buffer = UserEventBuffer(None, BehaviourParams.from_settings(self.settings))
        self._refresh_items(buffer)
        if self._seed_wanted:
            buffer.seed(self._seed_log())
            self.stats.seeded_events = buffer.events
            log.info("feature stream: %d recent events of %d users in memory", buffer.events, len(buffer))
        return store, buffer

    def _refresh_items(self, buffer: Any) -> None:
        """Give the buffer the items table's categories again when the table was rewritten (an
        item imported while serving): the category shares then match the batch job's."""
        from recsys.data.tables import load_table

        path = self.ws.table("items")
        try:
            st = path.stat()
        except FileNotFoundError:
            return
        identity = (st.st_ino, st.st_mtime_ns, st.st_size)
        if identity != self._items_file:
            buffer.items = load_table(self.ws, "items", columns=[C.ITEM_ID, C.CATEGORY])
            self._items_file = identity

    @staticmethod
    def _push_views(store: Any) -> list[str]:
        """The views fed by the push source (what `FeatureStore.push` writes to)."""
        return [fv.name for fv in store.list_feature_views(allow_cache=False)
                if fv.stream_source is not None and fv.stream_source.name == USER_PUSH_SOURCE]

    def _seed_log(self) -> pl.DataFrame:
        from features.stream import buffer_events
        from recsys.data.tables import load_table
        from serving.events import read_events

        parts = []
        if self.ws.table("impressions").exists():
            parts.append(buffer_events(load_table(self.ws, "impressions")))
        parts.append(buffer_events(read_events(self.ws.events_dir)))
        return pl.concat(parts, how="vertical")

    def _run(self) -> None:
        try:
            store, buffer = self._open()
        except Exception as exc:  # noqa: BLE001 (a broken store must not stop event intake)
            log.error("feature stream off: cannot open the feature store (%s: %s)", type(exc).__name__, exc)
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            with self._cond:
                self._closing = True
                self._done = self._submitted
                self._cond.notify_all()
            self._ready.set()
            return
        self._ready.set()
        retry: pl.DataFrame | None = None  # rows whose push failed, sent again with the next ones
        while True:
            with self._cond:
                while not self._pending and not self._closing and retry is None:
                    self._cond.wait()
                if not self._pending and retry is not None and not self._closing:
                    self._cond.wait(self.retry_seconds)
                rows, self._pending = self._pending, []
                closing = self._closing
            rows_out = None
            try:
                if rows:
                    self._refresh_items(buffer)
                rows_out = buffer.add(rows) if rows else None
            except Exception:  # a bug, not the store: say so and keep going
                log.exception("feature stream: cannot compute the rows of %d events", len(rows))
            if retry is not None:  # the newer row of a user wins
                rows_out = retry if rows_out is None else pl.concat([retry, rows_out]).unique(
                    C.USER_ID, keep="last", maintain_order=True)
            retry = None
            if rows_out is not None and rows_out.height:
                retry = self._push(store, rows_out)
            with self._cond:
                self._done += len(rows)
                self._cond.notify_all()
            if closing and (retry is None or not self._pending):
                break

    def _push(self, store: Any, rows: pl.DataFrame) -> pl.DataFrame | None:
        """Push rows to the online store; returns them when the store failed (to retry)."""
        stamped = rows.with_columns(push_timestamps(rows[C.EVENT_TIMESTAMP], datetime.now(UTC))).to_pandas()
        try:
            for view in self._views:  # FeatureStore.push(USER_PUSH_SOURCE, df, to=PushMode.ONLINE)
                store.write_to_online_store(view, df=stamped)
        except Exception as exc:  # noqa: BLE001 (store down: keep the rows, retry)
            self.stats.failures += 1
            if self.stats.last_error is None or self.stats.failures % 100 == 1:
                log.warning("feature stream: push of %d user rows failed (%s: %s); retrying every %.0f s",
                            rows.height, type(exc).__name__, exc, self.retry_seconds)
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            return rows
        self.stats.pushes += 1
        self.stats.pushed_rows += rows.height
        self.stats.last_error = None
        return None


def start_user_feature_stream(settings: Settings) -> UserFeatureStream | None:
    """The stream of a serving process, or None when it is off (`stream_enabled`)."""
    if not stream_enabled(settings):
        return None
    if settings.serving.workers > 1:
        log.warning("feature stream with %d workers: each worker pushes rows counting only the events it "
                    "received (see serving/stream.py); route a user's events to one worker",
                    settings.serving.workers)
    return UserFeatureStream(settings)
