"""The sparse behaviour job against the daily-grid job it replaced (`daily_reference.py`).

Every row the new job writes is the daily job's row for that (key, stamp), value for value;
an as-of read of the new table at any daily stamp gives the daily job's counts, CTRs, shares
and last clicks; the two calendar-driven features (`days_since_last_click`,
`popularity_rank`) are refreshed on a doubling schedule, so between snapshots they lag by at
most the quiet spell before the read.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import daily_reference as daily
import numpy as np
import polars as pl
import pytest

from features.jobs import (
    BehaviourParams,
    item_behaviour,
    item_behaviour_parts,
    user_behaviour,
    user_behaviour_parts,
)

PARAMS = BehaviourParams(prior_clicks=1.0, prior_impressions=20.0, last_clicked=5)
TS = "event_timestamp"
CALENDAR = {"days_since_last_click", "popularity_rank"}


def _gappy_log(seed: int = 7) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Bursts of a few days separated by gaps of months to years, over ~6 years."""
    rng = np.random.default_rng(seed)
    start = datetime(2015, 1, 1, tzinfo=UTC)
    bursts = np.cumsum(rng.choice([2, 9, 40, 200, 700], size=8))
    rows = []
    for b in bursts:
        for _ in range(60):
            t = start + timedelta(days=int(b) + float(rng.uniform(0, 4)))
            rows.append(
                (f"u{rng.integers(0, 5)}", f"i{rng.integers(0, 12):02d}", t, bool(rng.random() < 0.4))
            )
    imps = pl.DataFrame(
        rows,
        schema={
            "user_id": pl.String,
            "item_id": pl.String,
            TS: pl.Datetime("us", "UTC"),
            "clicked": pl.Boolean,
        },
        orient="row",
    )
    items = pl.DataFrame(
        {"item_id": [f"i{i:02d}" for i in range(12)], "category": [f"c{i % 3}" for i in range(12)]}
    )
    return imps, items


@pytest.fixture(scope="module", params=["world", "gaps"])
def logs(request, world_factory):
    if request.param == "world":
        world = world_factory(n_items=20, n_users=6, n_impressions=800, days=12, seed=3)
        return world["impressions"], world["items"]
    return _gappy_log()


def _as_of(new: pl.DataFrame, old: pl.DataFrame, key: str) -> pl.DataFrame:
    right = new.rename({c: f"{c}__new" for c in new.columns if c not in (key, TS)}).with_columns(
        pl.col(TS).alias("__stamp__")
    )
    return old.sort(TS).join_asof(right.sort(TS), on=TS, by=key, strategy="backward", check_sortedness=False)


@pytest.mark.parametrize("view", ["user", "item"])
def test_sparse_rows_are_daily_rows_and_as_of_reads_match(logs, view):
    imps, items = logs
    if view == "user":
        key, new, old = (
            "user_id",
            user_behaviour(imps, items, PARAMS),
            daily.user_behaviour(imps, items, PARAMS),
        )
    else:
        key, new, old = "item_id", item_behaviour(imps, PARAMS), daily.item_behaviour(imps, PARAMS)
    assert new.schema == old.schema
    assert new.height <= old.height
    # every written row is the daily job's row for that (key, stamp), every column
    same = new.join(old, on=[key, TS], how="left", suffix="__old")
    for col in new.columns:
        if col not in (key, TS):
            assert same[col].to_list() == same[f"{col}__old"].to_list(), col
    # an as-of read at every daily stamp gives the daily values (calendar features aside)
    read = _as_of(new, old, key)
    assert read["__stamp__"].null_count() == 0, "the first daily snapshot of a key is written"
    for col in old.columns:
        if col not in (key, TS) and col not in CALENDAR:
            assert read[col].to_list() == read[f"{col}__new"].to_list(), col
    # the calendar features lag by at most the quiet spell before the read
    if view == "user":
        lag = (read[TS] - read["__stamp__"]).dt.total_days()
        true, got = read["days_since_last_click"], read["days_since_last_click__new"]
        ok = true.is_null() | ((true - got).round(6) == lag.cast(pl.Float64))
        assert ok.all()
        assert (true.is_null() | (got >= true / 2 - 1)).all()
        assert new.filter(pl.col(TS) == new[TS].max()).height >= 1


def test_a_decade_of_calendar_costs_no_rows():
    """Two clicks ten years apart: tens of rows, not thousands."""
    t0 = datetime(2010, 5, 3, 12, tzinfo=UTC)
    imps = pl.DataFrame(
        {"user_id": ["u", "u"], "item_id": ["a", "b"], TS: [t0, t0 + timedelta(days=3650)]},
        schema_overrides={TS: pl.Datetime("us", "UTC")},
    )
    users, items = user_behaviour(imps, None, PARAMS), item_behaviour(imps, PARAMS)
    assert users.height < 40 and items.height < 60
    last = users.sort(TS).row(-1, named=True)
    assert last["clicks_30d"] == 1 and last["days_since_last_click"] == pytest.approx(0.5)


def test_parts_by_key_make_the_whole_table(logs):
    """The build writes the views part by part (a few keys at a time): the same rows."""
    imps, items = logs
    items_parts = list(item_behaviour_parts(imps, PARAMS, max_event_days=7))
    users_parts = list(user_behaviour_parts(imps, items, PARAMS, max_event_days=7))
    assert len(items_parts) > 2 and len(users_parts) > 1
    whole = pl.concat(items_parts).sort(TS, "item_id")
    assert whole.equals(item_behaviour(imps, PARAMS))
    assert pl.concat(users_parts).sort(TS, "user_id").equals(user_behaviour(imps, items, PARAMS))
