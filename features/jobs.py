"""Behaviour features from the click log, with polars; writing, registering and materializing them.

Point in time: features are snapshots stamped at midnight UTC. The snapshot stamped t counts
only events with `event_timestamp < t` (the 1-day window is [t - 1 day, t), the 7-day window
[t - 7 days, t), ...). Feast's historical join gives a training row at time T the latest
snapshot with timestamp <= T, so a row never sees an event at or after its own timestamp (its
features are up to one day stale, which is the price of daily snapshots).

Snapshots grow with the events, not with the calendar: an entity gets one only on the midnights
where a value can change, from the day after its first event to the last snapshot (the midnight
after the last event, or `until`):
- the day after each event day d, and the days its events leave a window (d + 1 + w for each
  window w): the counts, CTRs, category shares and last clicks change only there, so an as-of
  read at any midnight gives exactly what a snapshot every day would (tested against that job,
  `tests/features/daily_reference.py`);
- refresh days d + 1 + 2^k (k = 0, 1, ...) until the entity's next event: `days_since_last_click`
  and `popularity_rank` also move on quiet days, and an as-of read between refreshes returns the
  last refreshed value, so on a quiet spell of n days it lags by at most about n / 2 days.
A 20-year log therefore costs rows per event day (about 8 on a click-only log), not per day of
the calendar (issue 21: 9.6 GiB -> about 1 GiB for 100k clicks over 20 years).

Memory of the build (`build_features`): each job holds the log's four columns once, sorted by its
key, and computes the views a slice of keys at a time (`_key_parts`, `PART_EVENT_DAYS`), so its
peak is that compact log plus one part (10M clicks: 1.6 GiB, was 8.7). `materialize` reads each
source in record batches keeping each entity's latest row (`latest_rows`: 1.2 GiB at 10M).

The pure functions (`item_behaviour`, `user_behaviour`) take frames and return frames; the
side effects (`build_features`, `materialize`, `publish_item_content`) sit at the end.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from features.definitions import (
    ENTITY_OF_VIEW,
    ITEM_BEHAVIOUR,
    ITEM_CONTENT,
    JOIN_KEYS,
    SCHEMAS,
    TIMESTAMP,
    USER_BEHAVIOUR,
    VIEWS,
    WINDOWS,
    source_path,
    source_schema,
)
from recsys.config import Settings
from recsys.data import columns as C
from recsys.data import snapshots
from recsys.io import atomic_path, file_sha256, remove_stale_temps, write_json, write_parquet
from recsys.workspace import Workspace

log = logging.getLogger(__name__)
TS = C.EVENT_TIMESTAMP
DAY = timedelta(days=1)
MATERIALIZED_FILE = "materialized.json"
PART_EVENT_DAYS = 10_000  # (key, event day) pairs per part of the behaviour jobs (smaller: less memory)
RANK_PAIRS = 250_000  # (item, click day) pairs per slice of days of the popularity ranks


@dataclass(frozen=True)
class BehaviourParams:
    """Knobs of the behaviour features (from `settings.features`)."""

    prior_clicks: float = 1.0
    prior_impressions: float = 20.0
    last_clicked: int = 20

    @classmethod
    def from_settings(cls, settings: Settings) -> BehaviourParams:
        fs = settings.features
        return cls(fs.ctr_prior_clicks, fs.ctr_prior_impressions, fs.last_clicked)


# ---------------------------------------------------------------- pure polars functions


def normalize_events(impressions: pl.DataFrame) -> pl.DataFrame:
    """The columns the jobs need, timestamps as µs UTC (Feast's duckdb store refuses ns)."""
    missing = {C.USER_ID, C.ITEM_ID, TS} - set(impressions.columns)
    if missing:
        raise ValueError(
            f"impressions: missing column(s) {sorted(missing)}; expected the impressions contract"
        )
    ts = pl.col(TS)
    dtype = impressions.schema[TS]
    if not isinstance(dtype, pl.Datetime):
        raise ValueError(f"impressions: column '{TS}' is {dtype}, expected a timestamp")
    if dtype.time_zone is None:
        ts = ts.dt.replace_time_zone("UTC")
    elif dtype.time_zone != "UTC":
        ts = ts.dt.convert_time_zone("UTC")
    clicked = pl.col(C.CLICKED) if C.CLICKED in impressions.columns else pl.lit(True)  # click-only log
    return impressions.select(
        pl.col(C.USER_ID).cast(pl.String),
        pl.col(C.ITEM_ID).cast(pl.String),
        ts.dt.cast_time_unit("us").alias(TS),
        clicked.cast(pl.Boolean).alias(C.CLICKED),
    )


def _last_stamp(events: pl.DataFrame, until: datetime | None) -> datetime | None:
    if until is not None:
        return _floor_day(until)
    if events.height == 0:
        return None
    return _floor_day(events[TS].max()) + DAY


def _floor_day(ts: datetime) -> datetime:
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    ts = ts.astimezone(UTC)
    return ts.replace(hour=0, minute=0, second=0, microsecond=0)


def _daily_counts(events: pl.DataFrame, key: str, last_stamp: datetime) -> pl.LazyFrame:
    """(key, day, impressions, clicks) per event day, `day` in days since the epoch."""
    return (
        events.lazy()
        .filter(pl.col(TS) < last_stamp)
        .group_by(key, pl.col(TS).dt.epoch("d").cast(pl.Int64).alias("day"))
        .agg(impressions=pl.len().cast(pl.Int64), clicks=pl.col(C.CLICKED).sum().cast(pl.Int64))
    )


def _snapshot_days(daily: pl.LazyFrame, key: str, last_day: int) -> pl.LazyFrame:
    """The days t (snapshot stamped t + 1 day) on which a key gets a snapshot.

    A window count changes only when an event day d enters it (t = d) or leaves it
    (t = d + w for each window w), so those days carry every change of the counts, CTRs,
    category shares and last clicks. `days_since_last_click` and `popularity_rank` also move
    with the calendar alone: they are refreshed at t = d + 2^k (k = 0, 1, ...) until the key's
    next event day, so on a quiet key a snapshot is at most as old as the quiet spell before it
    (the value read between snapshots is within a factor 2 of its daily value).
    """
    span = max(last_day, 1)
    refresh = [2**k for k in range(span.bit_length() + 1)]
    changes = sorted({0, *WINDOWS})
    days = daily.select(key, "day").unique().sort(key, "day")
    days = days.with_columns(next=pl.col("day").shift(-1).over(key))
    offsets = pl.DataFrame(
        {"offset": [*changes, *refresh], "change": [True] * len(changes) + [False] * len(refresh)},
        schema={"offset": pl.Int64, "change": pl.Boolean},
    ).lazy()
    t = pl.col("day") + pl.col("offset")
    return (
        days.join(offsets, how="cross")
        .filter((t <= last_day) & (pl.col("change") | pl.col("next").is_null() | (t < pl.col("next"))))
        .select(key, t.alias("day"))
        .unique()
    )


def _windowed_counts(
    events: pl.DataFrame, key: str, last_stamp: datetime, params: BehaviourParams
) -> pl.DataFrame:
    """One row per (key, snapshot day) with impressions/clicks/CTR over each window.

    Snapshot days come from `_snapshot_days`; a window sum is a difference of the key's
    cumulative sums, read with as-of joins at t and t - w, so the work grows with the event
    days, not with the calendar.
    """
    last_day = int((last_stamp - DAY).timestamp() // 86_400)  # days since the epoch
    daily = _daily_counts(events, key, last_stamp).sort(key, "day")
    cum = daily.select(
        key,
        "day",
        pl.col("impressions").cum_sum().over(key).alias("cum_impressions"),
        pl.col("clicks").cum_sum().over(key).alias("cum_clicks"),
    ).collect()
    frame = _snapshot_days(daily, key, last_day).sort("day").collect()
    kinds = ("impressions", "clicks")

    def cum_at(shift: int, suffix: str) -> pl.DataFrame:
        probe = frame.select(key, (pl.col("day") - shift).alias("at")).unique().sort("at")
        return probe.join_asof(
            cum.sort("day"), left_on="at", right_on="day", by=key, strategy="backward", check_sortedness=False
        ).select(
            key,
            (pl.col("at") + shift).alias("day"),
            *[pl.col(f"cum_{k}").fill_null(0).alias(f"{k}{suffix}") for k in kinds],
        )

    frame = frame.join(cum_at(0, "_now"), on=[key, "day"], how="left")
    for d in WINDOWS:
        frame = (
            frame.join(cum_at(d, "_before"), on=[key, "day"], how="left")
            .with_columns([(pl.col(f"{k}_now") - pl.col(f"{k}_before")).alias(f"{k}_{d}d") for k in kinds])
            .drop([f"{k}_before" for k in kinds])
        )
    a, b = params.prior_clicks, params.prior_impressions
    frame = frame.with_columns(
        [
            ((pl.col(f"clicks_{d}d") + a) / (pl.col(f"impressions_{d}d") + b)).alias(f"ctr_{d}d")
            for d in WINDOWS
        ]
    )
    stamp = (pl.col("day") * 86_400_000_000).cast(TIMESTAMP)
    return frame.with_columns(stamp.alias("day"), (stamp + pl.duration(days=1)).alias(TS)).drop(
        [f"{k}_now" for k in kinds]
    )


def _popularity_ranks(
    events: pl.DataFrame, last_stamp: datetime, max_pairs: int = RANK_PAIRS
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The inputs of `_with_popularity_rank`: (t, clicks_7d, rank), the rank an item with that
    many clicks over the 7 days before day t + 1 takes among the items with a click in those
    days (1 + the number of items with more; ties share the best rank), and (t, n_active), the
    number of such items.

    An item's own 7-day clicks are its row's `clicks_7d`, so only the distinct click counts of
    each day are kept (364k rows at 10M clicks over 20 years), not each active (item, day) pair
    (30.5M rows there, and a join of each part against all of them)."""
    return _ranks_from_counts(_rank_counts(events, last_stamp, max_pairs))


def _rank_counts(events: pl.DataFrame, last_stamp: datetime, max_pairs: int = RANK_PAIRS) -> pl.DataFrame:
    """(t, clicks_7d, n): the number n of items with `clicks_7d` clicks over the 7 days before day
    t + 1 (items with a click in those days). Counts of disjoint sets of items add up (the Ray
    job sums its item partitions'). Counted a slice of days at a time (about `max_pairs` (item,
    click day) pairs each), so memory follows the slice."""
    key = C.ITEM_ID
    schema = {"t": pl.Int64, "clicks_7d": pl.Int64, "n": pl.Int64}
    daily = (
        _daily_counts(events, key, last_stamp)
        .filter(pl.col("clicks") > 0)
        .select(key, "day", "clicks")
        .sort("day")
        .collect()
    )
    if daily.height == 0:
        return pl.DataFrame(schema=schema)
    # slices of days t: [starts[i], starts[i + 1]), each reading the click days t - 6 .. t
    per_day = daily.group_by("day").agg(n=pl.len()).sort("day")
    cuts = per_day.filter(((pl.col("n").cum_sum() - pl.col("n")) // max(max_pairs, 1)).is_first_distinct())
    starts = [*cuts["day"].to_list(), per_day["day"][-1] + 7]  # per_day is sorted by day
    days = daily["day"]
    counts = []
    for lo, hi in zip(starts, starts[1:], strict=False):
        first, end = days.search_sorted(lo - 6, "left"), days.search_sorted(hi, "left")
        counts.append(
            daily.slice(first, end - first)
            .lazy()
            .with_columns(pl.int_ranges(pl.col("day"), pl.col("day") + 7).alias("t"))
            .explode("t")
            .filter(pl.col("t").is_between(lo, hi, closed="left"))
            .group_by(key, "t")
            .agg(clicks_7d=pl.col("clicks").sum())
            .group_by("t", "clicks_7d")
            .agg(n=pl.len())
            .collect()
        )
    return pl.concat(counts).cast(schema)  # type: ignore[arg-type]


def _ranks_from_counts(counts: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`_popularity_ranks` from `_rank_counts` rows (of one log or of disjoint item sets)."""
    table = (
        counts.group_by("t", "clicks_7d")
        .agg(pl.col("n").sum())
        .sort("t", "clicks_7d", descending=[False, True])
        .with_columns((pl.col("n").cum_sum().over("t") - pl.col("n") + 1).alias("rank"))
    )
    n_active = table.group_by("t").agg(n_active=pl.col("n").sum()).sort("t")
    return table.select("t", "clicks_7d", "rank"), n_active


def _with_popularity_rank(frame: pl.DataFrame, ranks: tuple[pl.DataFrame, pl.DataFrame]) -> pl.DataFrame:
    """`popularity_rank` of each (item, day) row of `_windowed_counts`: 1 + the number of items
    with more clicks over the 7 days before the stamp, among all items seen so far (ties share
    the best rank), as the daily job ranked them; an item without a click in the window ranks
    one below the last item with one. The row's own 7-day clicks (`clicks_7d`) find its rank."""
    values, n_active = ranks
    return (
        frame.with_columns(pl.col("day").dt.epoch("d").alias("t"))
        .join(values, on=["t", "clicks_7d"], how="left")
        .join(n_active, on="t", how="left")
        .with_columns(pl.coalesce("rank", pl.col("n_active").fill_null(0) + 1).alias("popularity_rank"))
        .drop("t", "rank", "n_active")
    )


def _by_key(events: pl.DataFrame, key: str) -> pl.DataFrame:
    """`events` with each key's events together (keys sorted; a key's events in their order)."""
    return events if events[key].is_sorted() else events.sort(key, maintain_order=True)


def _key_parts(events: pl.DataFrame, key: str, max_event_days: int) -> Iterator[pl.DataFrame]:
    """The events split by key into parts of about `max_event_days` (key, day) pairs each (a key
    is never split): every behaviour value depends on one key's events only, so the parts can
    be computed one at a time and memory follows the part, not the log. The events are put in
    key order once (`_by_key`; callers pass them so and drop the other order) and each part is
    a slice of them: no copy, and no scan of the whole log per part."""
    events = _by_key(events, key)
    weights = (
        events.group_by(key, maintain_order=True)
        .agg(rows=pl.len(), n=pl.col(TS).dt.epoch("d").n_unique())
        .with_columns(part=(pl.col("n").cum_sum() - pl.col("n")) // max(max_event_days, 1))
        .group_by("part", maintain_order=True)
        .agg(pl.col("rows").sum())
    )
    offset = 0
    for rows in weights["rows"]:
        yield events.slice(offset, rows)
        offset += rows


def item_behaviour_parts(
    impressions: pl.DataFrame,
    params: BehaviourParams = BehaviourParams(),
    until: datetime | None = None,
    max_event_days: int = PART_EVENT_DAYS,
) -> Iterator[pl.DataFrame]:
    """`item_behaviour` in parts by item (each sorted by timestamp and item). Holds the log once,
    in item order, beside one part (a caller that keeps no reference to `impressions` lets it go)."""
    events = normalize_events(impressions)
    del impressions
    last = _last_stamp(events, until)
    if last is None:
        return
    ranks = _popularity_ranks(events, last)
    events = _by_key(events, C.ITEM_ID)  # rebound: the log's other order is let go
    yield from ranked_item_parts(events, ranks, last, params, max_event_days)


def ranked_item_parts(
    events: pl.DataFrame,
    ranks: tuple[pl.DataFrame, pl.DataFrame],
    last: datetime,
    params: BehaviourParams,
    max_event_days: int = PART_EVENT_DAYS,
) -> Iterator[pl.DataFrame]:
    """`item_behaviour` parts of normalized `events` in item order (`_by_key`), with the
    popularity `ranks` over all items (`_popularity_ranks` of the whole log, or summed over the
    item partitions of the Ray job). Needs only the item, timestamp and `clicked` columns."""
    for part in _key_parts(events, C.ITEM_ID, max_event_days):
        frame = _with_popularity_rank(_windowed_counts(part, C.ITEM_ID, last, params), ranks)
        yield frame.select(list(source_schema(ITEM_BEHAVIOUR))).sort(TS, C.ITEM_ID)


def item_behaviour(
    impressions: pl.DataFrame, params: BehaviourParams = BehaviourParams(), until: datetime | None = None
) -> pl.DataFrame:
    """Item snapshots: impressions, clicks, CTR over 1/7/30 days and popularity rank.

    `popularity_rank` ranks the items of one day by clicks over 7 days (1 = most; ties share
    the best rank), among every item with an event before that day.
    """
    parts = list(item_behaviour_parts(impressions, params, until))
    if not parts:
        return pl.DataFrame(schema=source_schema(ITEM_BEHAVIOUR))
    return pl.concat(parts).sort(TS, C.ITEM_ID)


def _last_clicks(clicks: pl.DataFrame, key: str, n: int) -> pl.DataFrame:
    """(key, day, last_click, last_clicked_items) at the end of each click day: the last `n`
    clicked items up to that day's last click, most recent first. Each click carries the `n`
    items ending at it (shifted columns), so the work is clicks x n whatever a user's history."""
    item = pl.col(C.ITEM_ID)
    recent = (
        pl.concat_list([item.shift(i).over(key) for i in range(n)]).list.drop_nulls()
        if n > 0
        else (pl.lit([], dtype=pl.List(pl.String)))
    )
    return (
        clicks.with_columns(recent.alias("last_clicked_items"))
        .group_by(key, "day", maintain_order=True)
        .agg(pl.col(TS).last().alias("last_click"), pl.col("last_clicked_items").last())
        .sort("day")
    )


def _category_shares(
    clicks: pl.DataFrame, items: pl.DataFrame, frame: pl.DataFrame, key: str
) -> pl.DataFrame:
    """(key, day, click_categories_30d, click_category_shares_30d) for the snapshot days of
    `frame`: each click day's category counts are spread over the 30 snapshot days that see it
    and joined to the snapshots that exist, so the work is clicks x 30, not users x days."""
    cat_daily = (
        clicks.lazy()
        .join(items.lazy().select(pl.col(C.ITEM_ID).cast(pl.String), C.CATEGORY), on=C.ITEM_ID, how="left")
        .with_columns(pl.col(C.CATEGORY).fill_null("unknown"))
        .group_by(key, pl.col("day").alias("click_day"), C.CATEGORY)
        .agg(n=pl.len())
        .with_columns(
            pl.datetime_ranges("click_day", pl.col("click_day") + timedelta(days=29), "1d").alias("day")
        )
        .explode("day")
        .with_columns(pl.col("day").cast(frame.schema["day"]))
    )
    return (
        frame.lazy()
        .select(key, "day")
        .join(cat_daily, on=[key, "day"])
        .group_by(key, "day", C.CATEGORY)
        .agg(n=pl.col("n").sum())
        .with_columns(share=pl.col("n") / pl.col("n").sum().over(key, "day"))
        .sort(key, "day", "n", C.CATEGORY, descending=[False, False, True, False])
        .group_by(key, "day", maintain_order=True)
        .agg(click_categories_30d=pl.col(C.CATEGORY), click_category_shares_30d=pl.col("share"))
        .collect()
    )


def _user_frame(
    events: pl.DataFrame, items: pl.DataFrame | None, params: BehaviourParams, last: datetime
) -> pl.DataFrame:
    """The user snapshots of normalized `events` (all of each user's events) up to `last`."""
    key = C.USER_ID
    frame = _windowed_counts(events, key, last, params)
    clicks = (
        events.filter(pl.col(C.CLICKED) & (pl.col(TS) < last))
        .sort(key, TS, C.ITEM_ID)
        .with_columns(pl.col(TS).dt.truncate("1d").alias("day"))
    )
    # last N clicked items and the last click time as of the end of each click day, carried
    # forward to the following snapshots with an as-of join
    per_day = _last_clicks(clicks, key, params.last_clicked)
    frame = frame.sort("day").join_asof(
        per_day, on="day", by=key, strategy="backward", check_sortedness=False
    )
    frame = frame.with_columns(
        pl.col("last_clicked_items").fill_null(pl.lit([], dtype=pl.List(pl.String))),
        ((pl.col(TS) - pl.col("last_click")).dt.total_microseconds() / 86_400e6).alias(
            "days_since_last_click"
        ),
    )

    # category shares over the 30 days before each snapshot
    if items is not None and C.CATEGORY in items.columns and clicks.height:
        frame = frame.join(_category_shares(clicks, items, frame, key), on=[key, "day"], how="left")
    else:
        frame = frame.with_columns(
            pl.lit(None, dtype=pl.List(pl.String)).alias("click_categories_30d"),
            pl.lit(None, dtype=pl.List(pl.Float64)).alias("click_category_shares_30d"),
        )
    frame = frame.with_columns(
        pl.col("click_categories_30d").fill_null(pl.lit([], dtype=pl.List(pl.String))),
        pl.col("click_category_shares_30d").fill_null(pl.lit([], dtype=pl.List(pl.Float64))),
    )
    return frame.select([pl.col(c).cast(t) for c, t in source_schema(USER_BEHAVIOUR).items()]).sort(TS, key)


def user_behaviour_parts(
    impressions: pl.DataFrame,
    items: pl.DataFrame | None = None,
    params: BehaviourParams = BehaviourParams(),
    until: datetime | None = None,
    max_event_days: int = PART_EVENT_DAYS,
) -> Iterator[pl.DataFrame]:
    """`user_behaviour` in parts by user (each sorted by timestamp and user). Holds the log once,
    in user order, beside one part (as `item_behaviour_parts`)."""
    events = normalize_events(impressions)
    del impressions
    last = _last_stamp(events, until)
    if last is None:
        return
    events = _by_key(events, C.USER_ID)
    for part in _key_parts(events, C.USER_ID, max_event_days):
        yield _user_frame(part, items, params, last)


def user_behaviour(
    impressions: pl.DataFrame,
    items: pl.DataFrame | None = None,
    params: BehaviourParams = BehaviourParams(),
    until: datetime | None = None,
) -> pl.DataFrame:
    """User snapshots: windowed clicks/CTR, 30-day category click shares, last clicks.

    `items` (item_id, category) gives the categories; without it the shares are empty.
    """
    parts = list(user_behaviour_parts(impressions, items, params, until))
    if not parts:
        return pl.DataFrame(schema=source_schema(USER_BEHAVIOUR))
    return pl.concat(parts).sort(TS, C.USER_ID)


def latest_user_rows(
    impressions: pl.DataFrame, items: pl.DataFrame | None = None, params: BehaviourParams = BehaviourParams()
) -> pl.DataFrame:
    """Each user's `user_behaviour` row stamped at the midnight after their latest event: the row
    the daily job writes at that stamp, by the same code (`_user_frame`), so it counts every
    event given (today's included). The stream path (`features.stream`) calls it on each updated
    user's recent events and pushes the result: one definition of each feature, two paths.

    It needs, per user, the events of the 30 days up to their latest event (the longest window)
    and their last `params.last_clicked` clicks (at least the last one); older events change
    nothing."""
    events = normalize_events(impressions)
    if events.height == 0:
        return pl.DataFrame(schema=source_schema(USER_BEHAVIOUR))
    until = events.group_by(C.USER_ID).agg((pl.col(TS).max().dt.truncate("1d") + DAY).alias("_until"))
    parts = []
    for (stamp,), users in until.partition_by("_until", as_dict=True).items():  # usually one: today
        part = events.filter(pl.col(C.USER_ID).is_in(users[C.USER_ID].implode()))
        parts.append(_user_frame(part, items, params, stamp).filter(pl.col(TS) == stamp))
    return pl.concat(parts).sort(C.USER_ID)


def item_content(item_embeddings: pl.DataFrame) -> pl.DataFrame:
    """The item_content source from the item_embeddings table (vectors as float32, µs UTC)."""
    schema = source_schema(ITEM_CONTENT)
    missing = set(schema) - set(item_embeddings.columns)
    if missing:
        raise ValueError(
            f"item_embeddings: missing column(s) {sorted(missing)}; expected the item_embeddings contract"
        )
    ts = pl.col(TS)
    if item_embeddings.schema[TS].time_zone is None:  # type: ignore[union-attr]
        ts = ts.dt.replace_time_zone("UTC")
    return item_embeddings.with_columns(ts.dt.convert_time_zone("UTC")).select(
        [pl.col(c).cast(t) for c, t in schema.items()]
    )


# ---------------------------------------------------------------- side effects


@dataclass
class BuildResult:
    rows: dict[str, int]
    paths: dict[str, Path]
    run_id: str | None
    seconds: float
    last_snapshot: datetime | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        counts = ", ".join(f"{v} {n:,} rows" for v, n in self.rows.items())
        stamp = f"; last snapshot {self.last_snapshot:%Y-%m-%d}" if self.last_snapshot else ""
        return f"{counts}{stamp} -> {Path(next(iter(self.paths.values()))).parent} (MLflow run {self.run_id})"


@dataclass
class MaterializeResult:
    version: str
    views: list[str]
    start: datetime
    end: datetime
    online_store: str
    seconds: float
    run_id: str | None = None

    def summary(self) -> str:
        return (
            f"{', '.join(self.views)} -> {self.online_store} up to {self.end:%Y-%m-%d %H:%M:%S} "
            f"(version {self.version})"
        )


def source_lineage(ws: Workspace, views: Sequence[str] = VIEWS) -> dict[str, dict[str, Any]]:
    """Path, content hash, rows and features of each view's source: the views' versions."""
    out = {}
    for view in views:
        path = source_path(ws.feature_sources_dir, view)
        if path.exists():
            out[view] = {
                "path": str(path),
                "sha256": file_sha256(path),
                "rows": pl.scan_parquet(path).select(pl.len()).collect().item(),
                "features": list(SCHEMAS[view]),
            }
    return out


def remove_temps(ws: Workspace, views: Sequence[str], before: float, stamp: bool = True) -> list[Path]:
    """Remove the temporary files a killed feature job left: those of the `views`' sources and,
    with `stamp`, of the materialization stamp; only those last modified before `before` (the
    run's start, epoch seconds)."""
    names = [source_path(ws.feature_sources_dir, v).name for v in views]
    removed = remove_stale_temps(ws.feature_sources_dir, names, before)
    if stamp:
        removed += remove_stale_temps(ws.feast_dir, [MATERIALIZED_FILE], before)
    return removed


def event_columns(ws: Workspace) -> list[str]:
    """The impressions table's columns the behaviour jobs read (`normalize_events`): user, item,
    timestamp and `clicked` where the table has it (a tenth of the table's bytes at 10M clicks).
    A missing table is said with the command that makes it."""
    from recsys.data.tables import load_table

    path = ws.table("impressions")
    if not path.exists():
        load_table(ws, "impressions")  # raises, naming the command
    names = pl.read_parquet_schema(path)
    return [c for c in (C.USER_ID, C.ITEM_ID, TS, C.CLICKED) if c in names]


def read_events(ws: Workspace) -> pl.DataFrame:
    """The impressions table's `event_columns`."""
    from recsys.data.tables import load_table

    return load_table(ws, "impressions", columns=event_columns(ws))


def build_features(settings: Settings, ws: Workspace | None = None,
                   until: datetime | None = None) -> BuildResult:
    """Compute the behaviour views from the impressions table, write them, `feast apply`.

    Each source is written to a temporary file and renamed, so a failed job leaves the previous
    tables whole. Records an MLflow run (`recsys/features`, run `build`) with the lineage.
    """
    from recsys.data.tables import load_table
    from recsys.progress import bar

    ws = ws or Workspace.at(settings.home)
    start = time.perf_counter()
    remove_temps(ws, VIEWS, time.time(), stamp=False)  # of a killed build: every source it writes
    params = BehaviourParams.from_settings(settings)
    with bar("features", total=4, unit="step") as b:
        events = read_events(ws)  # a missing table is said before anything is written
        items = (
            load_table(ws, "items", columns=[C.ITEM_ID, C.CATEGORY]) if ws.table("items").exists() else None
        )
        paths = {v: source_path(ws.feature_sources_dir, v) for v in (ITEM_BEHAVIOUR, USER_BEHAVIOUR)}
        # both sources land together (renamed when both are written), each written part by part;
        # each job holds the log's four columns once, in its key's order, beside one part
        with (
            atomic_path(paths[ITEM_BEHAVIOUR], ".parquet") as item_tmp,
            atomic_path(paths[USER_BEHAVIOUR], ".parquet") as user_tmp,
        ):
            b.advance(1, status="item behaviour")
            parts = item_behaviour_parts(events, params, until)
            del events  # the job holds it (in item order) and lets it go when done
            rows = {ITEM_BEHAVIOUR: _write_parts(parts, item_tmp, ITEM_BEHAVIOUR)[0]}
            b.advance(1, status="user behaviour")
            parts = user_behaviour_parts(read_events(ws), items, params, until)
            rows[USER_BEHAVIOUR], last = _write_parts(parts, user_tmp, USER_BEHAVIOUR)
        b.advance(1, status="write + apply")
        del parts, items  # `feast apply` below imports ~0.8 GiB of its own
        notes = content_and_apply(settings, ws, paths)
        b.advance(1)
    return log_build(settings, ws, params, until, rows, paths, last, start, notes)


def content_and_apply(settings: Settings, ws: Workspace, paths: dict[str, Path]) -> list[str]:
    """After the behaviour sources are written (by either engine): the item_content source from
    item_embeddings (its path added to `paths`), then `feast apply`. Returns the notes to show."""
    from features.store import apply

    notes = []
    if ws.table("item_embeddings").exists():
        paths[ITEM_CONTENT] = _write_item_content(ws)
    else:
        notes.append("no item_embeddings table yet: item_content stays empty until `recsys backfill`")
    apply(settings)
    return notes


def log_build(settings: Settings, ws: Workspace, params: BehaviourParams, until: datetime | None,
              rows: dict[str, int], paths: dict[str, Path], last: datetime | None, start: float,
              notes: list[str], extra_params: dict[str, object] | None = None) -> BuildResult:
    """The MLflow run of a build (`recsys/features`, run `build`: parameters, lineage, rows) and
    its result; `extra_params` say how it ran (e.g. the engine)."""
    import mlflow

    from recsys import tracking

    with tracking.start_run(settings, "features", run_name="build") as run:
        mlflow.log_params(
            {
                "windows_days": ",".join(map(str, WINDOWS)),
                "ctr_prior_clicks": params.prior_clicks,
                "ctr_prior_impressions": params.prior_impressions,
                "last_clicked": params.last_clicked,
                "until": str(until),
                "feast_project": settings.features.project,
                **(extra_params or {}),
            }
        )
        tables = {t: ws.table(t) for t in ("impressions", "items", "item_embeddings")}
        tracking.log_lineage(
            tables, feature_views=source_lineage(ws), extra={"last_snapshot": str(last) if last else None}
        )
        mlflow.log_metrics({f"rows.{v}": n for v, n in rows.items()})
        seconds = time.perf_counter() - start
        mlflow.log_metric("seconds", seconds)
    for note in notes:
        log.warning(note)
    return BuildResult(rows, paths, run.info.run_id, seconds, last, notes)


def _write_parts(parts: Iterator[pl.DataFrame], path: Path, view: str) -> tuple[int, datetime | None]:
    """Write a view's parts to one parquet file, a row group or more per part, so only one part
    is in memory; returns (rows, latest timestamp)."""
    import pyarrow.parquet as pq

    schema = pl.DataFrame(schema=source_schema(view)).to_arrow().schema
    rows, last = 0, None
    with pq.ParquetWriter(path, schema) as writer:
        for part in parts:
            writer.write_table(part.to_arrow().cast(schema))
            rows += part.height
            top = part[TS].max()
            if top is not None and (last is None or top > last):
                last = top
    return rows, last


def _write_item_content(ws: Workspace) -> Path:
    from recsys.data.tables import load_table

    df = item_content(load_table(ws, "item_embeddings"))
    return write_parquet(df, source_path(ws.feature_sources_dir, ITEM_CONTENT))


def _source_range(ws: Workspace, view: str) -> tuple[datetime, datetime] | None:
    path = source_path(ws.feature_sources_dir, view)
    if not path.exists():
        return None
    lo, hi = (
        pl.scan_parquet(path)
        .select(pl.col(TS).min().alias("lo"), pl.col(TS).max().alias("hi"))
        .collect()
        .row(0)
    )
    return None if lo is None else (lo, hi)


def materialization_info(ws: Workspace) -> dict[str, Any]:
    """The record of the last materialization ({} when none): version, views, per-view `ends`."""
    try:
        return json.loads((ws.feast_dir / MATERIALIZED_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def materialization_version(ws: Workspace) -> str | None:
    """The version of the last materialization into the online store (None: never)."""
    return materialization_info(ws).get("version")


def latest_rows(ws: Workspace, view: str, end: datetime, batch_rows: int | None = None) -> pl.DataFrame:
    """Each entity's latest row of a view's source with timestamp <= `end` (what Feast's
    materialization loads; of rows with the same latest timestamp, the last in the file), read
    in record batches of `batch_rows` (`recsys.data.snapshots`)."""
    key = JOIN_KEYS[ENTITY_OF_VIEW[view]]
    return snapshots.latest_rows(source_path(ws.feature_sources_dir, view), key, end, batch_rows)


def _write_latest_rows(store: Any, ws: Workspace, view: str, end: datetime, batch: int = 2_000) -> int:
    """Write `latest_rows` to the online store in batches (Feast's `materialize` reads the whole
    source range through its offline store first: 1.1 GiB for 680k user snapshots)."""
    frame = latest_rows(ws, view, end)
    for i in range(0, frame.height, batch):
        store.write_to_online_store(view, df=frame.slice(i, batch).to_pandas())
    return frame.height


def materialize(
    settings: Settings,
    ws: Workspace | None = None,
    end: datetime | None = None,
    views: Sequence[str] = VIEWS,
    track: bool = True,
) -> MaterializeResult:
    """Load the latest row per entity with timestamp <= `end` (default: the newest) into the
    online store, then stamp a new materialization version (serving's item cache follows it).
    Only those rows are read and written (`latest_rows`, in batches), so memory follows the
    number of entities, not the rows of the sources.

    `item_content` always gets each item's latest vectors whatever `end` is: content is static,
    and its rows are stamped when the backfill ran (usually after the logged events)."""
    from features.store import apply, describe_online_store, feature_store

    ws = ws or Workspace.at(settings.home)
    t0 = time.perf_counter()
    remove_temps(ws, [], time.time())  # a killed materialization leaves at most its stamp's temp
    ranges = {v: r for v in views if (r := _source_range(ws, v)) is not None}
    if not ranges:
        raise FileNotFoundError(
            f"no feature rows under {ws.feature_sources_dir}: run `recsys features build` first"
        )
    start = min(r[0] for r in ranges.values()) - timedelta(seconds=1)
    stop = end if end is not None else max(r[1] for r in ranges.values()) + timedelta(seconds=1)
    if stop.tzinfo is None:
        stop = stop.replace(tzinfo=UTC)
    store = feature_store(settings)
    if not (ws.feast_dir / "registry.db").exists():
        apply(settings, store)
    try:
        for view, (_, hi) in ranges.items():
            # content is static: always its latest rows, whatever `end`
            _write_latest_rows(store, ws, view, hi if view == ITEM_CONTENT else stop)
    except Exception as exc:
        from features.store import wrap_store_error

        raise wrap_store_error(exc, describe_online_store(settings, ws)) from exc
    version = f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"
    ends = dict(materialization_info(ws).get("ends", {}))  # what each view holds online, up to when
    ends.update({v: (stop if v != ITEM_CONTENT else r[1] + timedelta(seconds=1)) for v, r in ranges.items()})
    write_json(
        {
            "version": version,
            "views": list(ranges),
            "start": start,
            "end": stop,
            "ends": ends,
            "online_store": describe_online_store(settings, ws),
        },
        ws.feast_dir / MATERIALIZED_FILE,
    )
    result = MaterializeResult(
        version, list(ranges), start, stop, describe_online_store(settings, ws), time.perf_counter() - t0
    )
    if track:
        import mlflow

        from recsys import tracking

        with tracking.start_run(settings, "features", run_name="materialize") as run:
            mlflow.log_params(
                {
                    "online_store": settings.features.online_store,
                    "end": str(stop),
                    "views": ",".join(ranges),
                    "version": version,
                }
            )
            tracking.log_lineage({}, feature_views=source_lineage(ws, list(ranges)))
            mlflow.log_metric("seconds", result.seconds)
        result.run_id = run.info.run_id
    return result


def publish_item_content(settings: Settings, ws: Workspace | None = None) -> MaterializeResult:
    """Put the item_embeddings table into the item_content offline source and the online store.

    The backfill calls this at its end, so new vectors reach serving without a full build.
    """
    from features.store import apply

    ws = ws or Workspace.at(settings.home)
    remove_temps(ws, [ITEM_CONTENT], time.time(), stamp=False)  # materialize cleans the stamp's
    _write_item_content(ws)
    apply(settings)
    return materialize(settings, ws, views=[ITEM_CONTENT], track=False)
