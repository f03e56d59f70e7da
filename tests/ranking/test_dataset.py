"""Query groups, candidates, labels and weights from click logs, and bad input."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recsys.data import columns as C
from recsys.ranking.candidates import ClipProfileSource
from recsys.ranking.dataset import TrainingDataError, build_candidates, click_history, ips_weights
from recsys.ranking.features import ItemTable


@pytest.fixture(scope="module")
def items(world) -> ItemTable:
    return ItemTable.build(world["items"], world["item_embeddings"])


def test_groups_are_requests_with_hard_negatives(world, items) -> None:
    c = build_candidates(world["impressions"], items, history=5, negatives=4, source=ClipProfileSource(items))
    rows = c.rows
    sizes = rows.group_by("q").agg(pl.len(), pl.col("label").sum().alias("pos"), pl.col("source"))
    assert (sizes["len"] >= 2).all() and (sizes["pos"] > 0).all()
    assert set(rows["source"].unique()) == {"logged", "retrieved"}
    assert rows.filter(pl.col("source") == "retrieved")["label"].sum() == 0
    assert rows.filter(pl.col("source") == "retrieved")[C.POSITION].null_count() == \
        rows.filter(pl.col("source") == "retrieved").height
    # contiguous groups, queries in time order
    q = rows["q"].to_numpy()
    assert (np.diff(q) >= 0).all()
    assert c.queries[C.EVENT_TIMESTAMP].is_sorted()
    # a hard negative is never an item of the request's slate nor of the user's history
    neg = rows.filter(pl.col("source") == "retrieved")
    logged = rows.filter(pl.col("source") == "logged")
    assert neg.join(logged, on=["q", "item_row"]).height == 0
    for qq, item in neg.select("q", "item_row").head(200).iter_rows():
        assert item not in set(c.history[qq].tolist())
    assert c.counts["groups_without_click"] > 0  # counted, then dropped


def test_history_is_point_in_time(world, items) -> None:
    log = world["impressions"]
    c = build_candidates(log, items, history=50, negatives=0)
    clicks = log.filter(pl.col(C.CLICKED))
    for q in range(0, c.queries.height, 37):
        row = c.queries.row(q, named=True)
        before = clicks.filter((pl.col(C.USER_ID) == row[C.USER_ID])
                               & (pl.col(C.EVENT_TIMESTAMP) < row["feature_timestamp"]))
        got = [i for i in c.history[q].tolist() if i >= 0]
        assert len(got) == min(before.height, 50)


def test_click_history_most_recent_last(items) -> None:
    from datetime import UTC, datetime

    t = [datetime(2024, 1, d, tzinfo=UTC) for d in (1, 2, 3, 5)]
    log = pl.DataFrame({C.USER_ID: ["u"] * 3, C.ITEM_ID: ["i1", "i2", "i3"], C.EVENT_TIMESTAMP: t[:3],
                        C.CLICKED: [True] * 3})
    queries = pl.DataFrame({"q": [0, 1], C.USER_ID: ["u", "u"], "feature_timestamp": [t[1], t[3]]})
    h = click_history(log, queries, items, 2)
    assert h[0].tolist() == [-1, items.index["i1"]]
    assert h[1].tolist() == [items.index["i2"], items.index["i3"]]


def test_ips_weights_up_weight_clicks_low_in_the_slate(world, items) -> None:
    c = build_candidates(world["impressions"], items, history=5, negatives=0)
    exam = c.examination
    assert exam[0] == 1.0 and all(a >= b for a, b in zip(exam, exam[1:], strict=False))
    w = ips_weights(c.rows, c.examination, clip=10.0)
    lab = c.rows["label"].to_numpy()
    pos = c.rows[C.POSITION].to_numpy()
    assert (w[lab == 0] == 1).all()
    assert w[(lab == 1) & (pos == 5)].min() > w[(lab == 1) & (pos == 0)].max() == 1.0
    assert w.max() <= 10.0


def test_click_only_log_gets_user_days_and_sampled_negatives(world, items) -> None:
    clicks = world["impressions"].filter(pl.col(C.CLICKED))
    log = clicks.with_columns((pl.col(C.USER_ID) + ":" + pl.col(C.EVENT_TIMESTAMP).dt.strftime("%Y-%m-%d"))
                              .alias(C.REQUEST_ID), pl.lit(None, dtype=pl.Int32).alias(C.POSITION))
    c = build_candidates(log, items, history=5, negatives=5, seed=1)
    assert c.counts["groups"] == log[C.REQUEST_ID].n_unique()
    assert set(c.rows["source"].unique()) == {"logged", "random"}
    assert c.examination == []  # no positions: nothing to de-bias
    again = build_candidates(log, items, history=5, negatives=5, seed=1)
    assert again.rows.equals(c.rows)  # seeded


def test_no_clicks_is_a_clear_error(world, items) -> None:
    log = world["impressions"].with_columns(pl.lit(False).alias(C.CLICKED))
    with pytest.raises(TrainingDataError, match="no click at all"):
        build_candidates(log, items, history=5, negatives=0)


def test_unknown_items_are_dropped_and_counted(world, items) -> None:
    log = world["impressions"]
    bad = log.head(30).with_columns(pl.lit("ghost").alias(C.ITEM_ID), (pl.col(C.REQUEST_ID) + "x"))
    c = build_candidates(pl.concat([log, bad]), items, history=5, negatives=0)
    assert c.counts["unknown_item_rows"] == 30
    assert "ghost" not in c.rows[C.ITEM_ID].to_list()


def test_single_candidate_groups_are_dropped_and_counted(world, items) -> None:
    log = world["impressions"]
    single = log.filter(pl.col(C.CLICKED)).head(10).with_columns(
        ("solo" + pl.int_range(pl.len()).cast(pl.String)).alias(C.REQUEST_ID))
    c = build_candidates(pl.concat([log, single]), items, history=5, negatives=0)
    assert c.counts["groups_single_candidate"] == 10
    assert not c.queries[C.REQUEST_ID].str.starts_with("solo").any()


def test_only_single_candidate_groups_is_an_error(world, items) -> None:
    log = world["impressions"].filter(pl.col(C.CLICKED))
    with pytest.raises(TrainingDataError, match="nothing to rank"):
        build_candidates(log, items, history=5, negatives=0)


def test_hard_negatives_skip_items_the_user_clicks_on_other_days(world, items) -> None:
    c = build_candidates(world["impressions"], items, history=5, negatives=6, source=ClipProfileSource(items))
    clicked = world["impressions"].filter(pl.col(C.CLICKED)).select(C.USER_ID, C.ITEM_ID).unique()
    neg = (c.rows.filter(pl.col("source") == "retrieved").join(c.queries.select("q", C.USER_ID), on="q")
           .select(C.USER_ID, C.ITEM_ID))
    assert neg.join(clicked, on=[C.USER_ID, C.ITEM_ID]).height == 0
