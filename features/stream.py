"""The stream path of the user features: each user's recent events in memory, and their
`user_behaviour` row recomputed from them when new events arrive.

The row is computed by `features.jobs.latest_user_rows`, the daily job's own code, so a value
pushed by the stream equals the value the batch job writes for the same events (tested by
replaying a log through both). What a user's next row depends on, and so what is kept per user
(`UserEventBuffer.prune`): the events of the 30 days up to their latest event (the longest
window) and their last `features.last_clicked` clicks (the last one gives
`days_since_last_click`). Memory therefore follows the users' recent activity, not the log.

Events are deduplicated by (request_id, position, user_id, item_id, event_timestamp), so a seed
read from the events folder and the same events arriving from the server count once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta

import polars as pl

from features.definitions import TIMESTAMP, WINDOWS
from features.jobs import BehaviourParams, latest_user_rows
from recsys.data import columns as C

log = logging.getLogger(__name__)
TS = C.EVENT_TIMESTAMP
SCHEMA = {
    C.REQUEST_ID: pl.String(),
    C.POSITION: pl.Int32(),
    C.USER_ID: pl.String(),
    C.ITEM_ID: pl.String(),
    TS: TIMESTAMP,
    C.CLICKED: pl.Boolean(),
}
KEY = [C.REQUEST_ID, C.POSITION, C.USER_ID, C.ITEM_ID, TS]
WINDOW = timedelta(days=max(WINDOWS) - 1)  # the longest window's days before the latest event's day


def buffer_events(events: pl.DataFrame | Iterable[dict]) -> pl.DataFrame:
    """Events (a frame in the impressions contract, a click-only log, or dict rows) in the
    buffer's columns: µs UTC timestamps; a missing `clicked` means a click."""
    df = events if isinstance(events, pl.DataFrame) else pl.DataFrame(list(events), infer_schema_length=None)
    if df.height == 0:
        return pl.DataFrame(schema=SCHEMA)
    ts = pl.col(TS)
    dtype = df.schema[TS]
    if isinstance(dtype, pl.Datetime):
        ts = ts.dt.replace_time_zone("UTC") if dtype.time_zone is None else ts.dt.convert_time_zone("UTC")
    return df.select(
        *((pl.col(c) if c in df.columns else pl.lit(None)).cast(SCHEMA[c]).alias(c)
          for c in (C.REQUEST_ID, C.POSITION, C.USER_ID, C.ITEM_ID)),
        ts.dt.cast_time_unit("us").alias(TS),
        (pl.col(C.CLICKED) if C.CLICKED in df.columns else pl.lit(True)).cast(pl.Boolean).alias(C.CLICKED),
    )


class UserEventBuffer:
    """Each user's recent events, and their `user_behaviour` rows as new events arrive.

    Not thread-safe: one thread (the stream's) owns it.
    """

    def __init__(self, items: pl.DataFrame | None = None, params: BehaviourParams = BehaviourParams()):
        """`items` (item_id, category) gives the category shares, as in the batch job."""
        self.items = items
        self.params = params
        self._seed = pl.DataFrame(schema=SCHEMA)  # sorted by user: a user's events are one slice
        self._slices: dict[str, tuple[int, int]] = {}
        self._own: dict[str, pl.DataFrame] = {}  # users updated since the seed

    def __len__(self) -> int:
        """Users with events in memory."""
        return len(self._slices) + len(self._own)

    @property
    def events(self) -> int:
        return sum(n for _, n in self._slices.values()) + sum(f.height for f in self._own.values())

    def prune(self, events: pl.DataFrame) -> pl.DataFrame:
        """What each user's next row can depend on: the events from 29 days before the day of
        their latest event, and their last `last_clicked` clicks (at least one)."""
        if events.height == 0:
            return events
        user = C.USER_ID
        keep_clicks = max(self.params.last_clicked, 1)
        events = events.sort(user, TS, C.ITEM_ID)
        clicks_after = pl.col(C.CLICKED).cast(pl.Int32).reverse().cum_sum().reverse().over(user)
        recent = pl.col(TS) >= pl.col(TS).max().over(user).dt.truncate("1d") - WINDOW
        return events.filter(recent | (pl.col(C.CLICKED) & (clicks_after <= keep_clicks)))

    def seed(self, events: pl.DataFrame) -> int:
        """Start from a log (the impressions table and the server's events folder, concatenated):
        keeps what the rows need; returns how many events that is."""
        frame = self.prune(buffer_events(events).unique(subset=KEY, keep="first", maintain_order=True))
        self._seed = frame
        self._own.clear()
        self._slices = {}
        if frame.height:
            bounds = frame.with_row_index("_i").group_by(C.USER_ID).agg(
                pl.col("_i").first(), pl.len().alias("_n")
            )
            self._slices = {u: (int(i), int(n)) for u, i, n in bounds.iter_rows()}
        return frame.height

    def user_events(self, user_id: str) -> pl.DataFrame:
        """The events held for one user."""
        if user_id in self._own:
            return self._own[user_id]
        if user_id in self._slices:
            return self._seed.slice(*self._slices[user_id])
        return self._seed.clear()

    def add(self, events: pl.DataFrame | Iterable[dict]) -> pl.DataFrame:
        """Take new events and return the `user_behaviour` rows of the users they touch (one row
        each, stamped at the midnight after the user's latest event)."""
        new = buffer_events(events)
        if new.height == 0:
            return latest_user_rows(new, self.items, self.params)
        users = new[C.USER_ID].unique().to_list()
        merged = pl.concat([*(self.user_events(u) for u in users), new], how="vertical")
        merged = self.prune(merged.unique(subset=KEY, keep="first", maintain_order=True))
        for (user_id,), frame in merged.partition_by(C.USER_ID, as_dict=True).items():
            self._own[user_id] = frame
            self._slices.pop(user_id, None)
        return latest_user_rows(merged, self.items, self.params)
