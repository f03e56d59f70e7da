"""The polars behaviour jobs against a brute-force recount from the raw events (no Feast)."""

from __future__ import annotations

from datetime import timedelta

import polars as pl
import pytest

from features.jobs import BehaviourParams, item_behaviour, item_content, source_schema, user_behaviour

PARAMS = BehaviourParams(prior_clicks=1.0, prior_impressions=20.0, last_clicked=5)


def _window(events: pl.DataFrame, key: str, value: str, t, days: int) -> pl.DataFrame:
    return events.filter(
        (pl.col(key) == value)
        & (pl.col("event_timestamp") < t)
        & (pl.col("event_timestamp") >= t - timedelta(days=days))
    )


@pytest.fixture(scope="module")
def world(world_factory):
    return world_factory(n_items=20, n_users=6, n_impressions=800, days=12, seed=3)


def test_user_snapshots_match_a_recount_of_earlier_events(world):
    imps, items = world["impressions"], world["items"]
    feats = user_behaviour(imps, items, PARAMS)
    assert feats.schema == pl.Schema(source_schema("user_behaviour"))
    cats = dict(zip(items["item_id"], items["category"], strict=True))
    for row in feats.filter(pl.col("user_id").is_in(["u01", "u04"])).iter_rows(named=True):
        t, u = row["event_timestamp"], row["user_id"]
        assert t.hour == 0 and t.minute == 0, "snapshots are stamped at midnight"
        for d in (1, 7, 30):
            w = _window(imps, "user_id", u, t, d)
            assert row[f"impressions_{d}d"] == w.height
            assert row[f"clicks_{d}d"] == w["clicked"].sum()
            assert row[f"ctr_{d}d"] == pytest.approx((w["clicked"].sum() + 1) / (w.height + 20))
        before = imps.filter((pl.col("user_id") == u) & (pl.col("event_timestamp") < t) & pl.col("clicked"))
        before = before.sort("event_timestamp", "item_id", descending=True)
        assert row["last_clicked_items"] == before["item_id"].head(5).to_list()
        if before.height:
            expected = (t - before["event_timestamp"][0]).total_seconds() / 86400
            assert row["days_since_last_click"] == pytest.approx(expected)
        else:
            assert row["days_since_last_click"] is None
        month = _window(imps, "user_id", u, t, 30).filter(pl.col("clicked"))
        counts: dict[str, int] = {}
        for item in month["item_id"]:
            counts[cats[item]] = counts.get(cats[item], 0) + 1
        shares = dict(zip(row["click_categories_30d"], row["click_category_shares_30d"], strict=True))
        assert shares == pytest.approx({c: n / month.height for c, n in counts.items()})
        assert row["click_category_shares_30d"] == sorted(row["click_category_shares_30d"], reverse=True)


def test_item_snapshots_and_popularity_rank(world):
    imps = world["impressions"]
    feats = item_behaviour(imps, PARAMS)
    assert feats.schema == pl.Schema(source_schema("item_behaviour"))
    t = feats["event_timestamp"].max()
    snap = feats.filter(pl.col("event_timestamp") == t)
    for row in snap.head(5).iter_rows(named=True):
        w = _window(imps, "item_id", row["item_id"], t, 7)
        assert row["clicks_7d"] == w["clicked"].sum()
    top = snap.sort("clicks_7d", descending=True).row(0, named=True)
    assert top["popularity_rank"] == 1
    assert snap["popularity_rank"].min() == 1
    # more clicks never means a worse rank
    ordered = snap.sort("clicks_7d", descending=True)["popularity_rank"].to_list()
    assert ordered == sorted(ordered)


def test_future_events_do_not_change_past_snapshots(world, start):
    """Appending events after a snapshot's stamp (even exactly at it) leaves that snapshot as it was."""
    imps = world["impressions"]
    cut = start + timedelta(days=6)
    before = user_behaviour(imps.filter(pl.col("event_timestamp") < cut), world["items"], PARAMS, until=cut)
    full = user_behaviour(imps, world["items"], PARAMS)
    poison = imps.head(50).with_columns(
        pl.lit(cut).cast(pl.Datetime("us", "UTC")).alias("event_timestamp"), pl.lit(True).alias("clicked")
    )
    poisoned = user_behaviour(pl.concat([imps, poison]), world["items"], PARAMS)
    for other in (full, poisoned):
        same = other.filter(pl.col("event_timestamp") <= cut)
        assert same.sort("user_id", "event_timestamp").equals(before.sort("user_id", "event_timestamp"))


def test_click_only_log_and_naive_timestamps(world):
    clicks = (
        world["impressions"]
        .filter(pl.col("clicked"))
        .select("user_id", "item_id", pl.col("event_timestamp").dt.replace_time_zone(None))
    )
    feats = user_behaviour(clicks, None, PARAMS)
    assert feats.schema["event_timestamp"] == pl.Datetime("us", "UTC")
    assert (feats["impressions_30d"] == feats["clicks_30d"]).all()
    assert feats["click_categories_30d"].list.len().max() == 0


def test_bad_input_names_the_column(world):
    with pytest.raises(ValueError, match="missing column.*user_id"):
        user_behaviour(world["impressions"].drop("user_id"))
    with pytest.raises(ValueError, match="event_timestamp"):
        item_behaviour(world["impressions"].with_columns(pl.col("event_timestamp").cast(pl.String)))
    with pytest.raises(ValueError, match="item_embeddings.*embedding"):
        item_content(world["item_embeddings"].drop("embedding"))


def test_empty_log_gives_empty_tables(world):
    empty = world["impressions"].head(0)
    assert user_behaviour(empty).height == 0
    assert item_behaviour(empty).schema == pl.Schema(source_schema("item_behaviour"))
