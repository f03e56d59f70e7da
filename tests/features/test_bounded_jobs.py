"""The build and materialize of issue 21 at 10M clicks: memory by parts, same values.

- the popularity ranks are kept as (day, 7-day clicks) -> rank, counted a slice of days at a
  time, and give each item the rank the full (item, day) ranking gave;
- the parts of a behaviour job are slices of the log in key order, a key never split;
- materialize reads each entity's latest row in record batches: the rows a sort of the whole
  source picks, ties going to the last row in the file;
- the build reads only the log's columns the jobs use.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

import features.jobs as jobs
from features.definitions import source_path
from recsys.data import columns as C
from recsys.data.tables import save_table

TS = C.EVENT_TIMESTAMP
START = datetime(2004, 2, 1, tzinfo=UTC)


def _log(seed: int = 11, n: int = 3_000, items: int = 150, users: int = 40, days: int = 900) -> pl.DataFrame:
    """Zipf-ish clicks and non-clicks over a few years, in time order (as a log is)."""
    rng = np.random.default_rng(seed)
    secs = np.sort(rng.integers(0, days * 86_400, n))
    return pl.DataFrame(
        {
            C.USER_ID: [f"u{u:03d}" for u in rng.integers(0, users, n)],
            C.ITEM_ID: [f"i{i % items:04d}" for i in rng.zipf(1.4, n)],
            TS: [START + timedelta(seconds=int(s)) for s in secs],
            C.CLICKED: rng.random(n) < 0.6,
        },
        schema_overrides={TS: pl.Datetime("us", "UTC")},
    )


def _ranks_of_every_active_pair(events: pl.DataFrame, last: datetime) -> pl.DataFrame:
    """The former ranking: every (item, t) with a click in the 7 days up to t, ranked within t."""
    return (
        jobs._daily_counts(events, C.ITEM_ID, last)
        .filter(pl.col("clicks") > 0)
        .with_columns(pl.int_ranges(pl.col("day"), pl.col("day") + 7).alias("t"))
        .explode("t")
        .group_by(C.ITEM_ID, "t")
        .agg(c7=pl.col("clicks").sum())
        .with_columns(rank=pl.col("c7").rank("min", descending=True).over("t").cast(pl.Int64))
        .collect()
    )


@pytest.mark.parametrize("max_pairs", [1, 37, 10**9])
def test_popularity_ranks_by_slices_of_days_are_the_full_ranking(max_pairs):
    events = jobs.normalize_events(_log())
    last = jobs._last_stamp(events, None)
    frame = jobs._windowed_counts(events, C.ITEM_ID, last, jobs.BehaviourParams())
    got = jobs._with_popularity_rank(frame, jobs._popularity_ranks(events, last, max_pairs=max_pairs))
    full = _ranks_of_every_active_pair(events, last)
    n_active = full.group_by("t").agg(n=pl.len().cast(pl.Int64))
    want = (
        frame.with_columns(pl.col("day").dt.epoch("d").alias("t"))
        .join(full.select(C.ITEM_ID, "t", "rank"), on=[C.ITEM_ID, "t"], how="left")
        .join(n_active, on="t", how="left")
        .select(C.ITEM_ID, "day", pl.coalesce("rank", pl.col("n").fill_null(0) + 1).alias("popularity_rank"))
    )
    assert got.height == frame.height
    same = got.join(want, on=[C.ITEM_ID, "day"], suffix="_want")
    assert same.height == frame.height
    assert (same["popularity_rank"] == same["popularity_rank_want"]).all()
    assert same["popularity_rank"].n_unique() > 5  # items do outrank each other here


def test_rank_table_keeps_click_counts_per_day_not_active_items():
    events = jobs.normalize_events(_log(n=6_000, items=400))
    last = jobs._last_stamp(events, None)
    values, n_active = jobs._popularity_ranks(events, last, max_pairs=50)
    assert values.height < _ranks_of_every_active_pair(events, last).height / 2
    assert values.select(pl.struct("t", "clicks_7d").is_unique().all()).item()
    assert n_active["t"].is_unique().all()


def test_parts_are_slices_of_the_log_in_key_order_and_a_key_is_never_split():
    events = jobs.normalize_events(_log())
    parts = list(jobs._key_parts(events, C.USER_ID, max_event_days=20))
    assert len(parts) > 5
    assert pl.concat(parts).equals(events.sort(C.USER_ID, maintain_order=True))
    keys = [set(p[C.USER_ID].unique()) for p in parts]
    assert all(not (a & b) for i, a in enumerate(keys) for b in keys[i + 1:])
    for p in parts:  # about max_event_days (key, day) pairs: more only when one key has more
        pairs = p.group_by(C.USER_ID).agg(pl.col(TS).dt.epoch("d").n_unique())[TS]
        assert pairs.sum() - pairs.max() < 20


def test_small_parts_make_the_same_tables():
    imps = _log()
    items = pl.DataFrame({C.ITEM_ID: [f"i{i:04d}" for i in range(150)],
                          C.CATEGORY: [f"c{i % 4}" for i in range(150)]})
    params = jobs.BehaviourParams(last_clicked=5)
    whole_items = pl.concat(list(jobs.item_behaviour_parts(imps, params, max_event_days=10**9)))
    whole_users = pl.concat(list(jobs.user_behaviour_parts(imps, items, params, max_event_days=10**9)))
    by_parts_items = pl.concat(list(jobs.item_behaviour_parts(imps, params, max_event_days=30)))
    by_parts_users = pl.concat(list(jobs.user_behaviour_parts(imps, items, params, max_event_days=30)))
    assert by_parts_items.sort(TS, C.ITEM_ID).equals(whole_items.sort(TS, C.ITEM_ID))
    assert by_parts_users.sort(TS, C.USER_ID).equals(whole_users.sort(TS, C.USER_ID))


def _source(ws, rows: int = 60, row_group: int = 7) -> tuple[pl.DataFrame, object]:
    rng = np.random.default_rng(5)
    days = sorted(int(d) for d in rng.integers(0, 3_000, rows))
    src = pl.DataFrame(
        {
            C.USER_ID: [f"u{u}" for u in rng.integers(0, 8, rows)],
            TS: [START + timedelta(days=d) for d in days],
            "clicks_7d": rng.integers(0, 9, rows),
            "last_clicked_items": [["a", "b", "c"][: i % 4] for i in range(rows)],
        },
        schema_overrides={TS: pl.Datetime("us", "UTC")},
    )
    # a tie: the same user and stamp twice, the later row in the file must win
    tie = src.tail(1).with_columns(pl.lit(99).cast(pl.Int64).alias("clicks_7d"))
    src = pl.concat([src, tie])
    path = source_path(ws.feature_sources_dir, "user_behaviour")
    path.parent.mkdir(parents=True, exist_ok=True)
    src.write_parquet(path, row_group_size=row_group)
    return src, path


def test_latest_rows_in_batches_are_the_whole_sources_latest(ws):
    src, _ = _source(ws)
    for end in (START + timedelta(days=1_000), START + timedelta(days=2_000), START + timedelta(days=9_000)):
        want = (src.with_row_index("_i").filter(pl.col(TS) <= end).sort(TS, "_i")
                .group_by(C.USER_ID).last().drop("_i"))
        for batch_rows in (1, 5, 1_000):
            got = jobs.latest_rows(ws, "user_behaviour", end, batch_rows=batch_rows)
            assert got.sort(C.USER_ID).equals(want.select(got.columns).sort(C.USER_ID)), (end, batch_rows)
    last = jobs.latest_rows(ws, "user_behaviour", START + timedelta(days=9_000), batch_rows=3)
    assert last.filter(pl.col(C.USER_ID) == src[C.USER_ID][-1])["clicks_7d"].item() == 99
    assert jobs.latest_rows(ws, "user_behaviour", START - timedelta(days=1)).height == 0


def test_the_build_reads_the_logs_four_columns(ws, stored_world):
    events = jobs.read_events(ws)
    assert events.columns == [C.USER_ID, C.ITEM_ID, TS, C.CLICKED]
    assert events.height == stored_world["impressions"].height
    click_only = stored_world["impressions"].select(C.USER_ID, C.ITEM_ID, TS, "request_id")
    save_table(ws, "impressions", click_only)
    assert jobs.read_events(ws).columns == [C.USER_ID, C.ITEM_ID, TS]
