"""Each split protocol and its leakage rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from recsys.data import columns as C
from recsys.data.splits import hold_out_items, leave_last_out, random_ratio_split, temporal_split


@pytest.fixture
def log() -> pl.DataFrame:
    rng = np.random.default_rng(0)
    n = 3000
    start = datetime(2024, 1, 1, tzinfo=UTC)
    users = rng.integers(0, 120, n)
    seconds = rng.integers(0, 30 * 86400, n)
    seconds[:5] = seconds[5]  # some ties in time
    users[:5] = users[5]
    return pl.DataFrame(
        {
            C.USER_ID: [f"u{u}" for u in users],
            C.ITEM_ID: [f"i{i}" for i in rng.integers(0, 300, n)],
            C.EVENT_TIMESTAMP: [start + timedelta(seconds=int(s)) for s in seconds],
        }
    ).with_row_index("row")


def _complete_and_disjoint(log: pl.DataFrame, split) -> None:
    rows = [set(part["row"]) for part in (split.train, split.valid, split.test)]
    assert sum(len(r) for r in rows) == log.height and set().union(*rows) == set(log["row"])
    assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])
    assert split.train.columns == log.columns


def test_temporal_split_has_no_test_event_before_the_split_point(log: pl.DataFrame) -> None:
    split = temporal_split(log, valid_frac=0.1, test_frac=0.2)
    _complete_and_disjoint(log, split)
    t = C.EVENT_TIMESTAMP
    assert split.train[t].max() < split.valid[t].min() <= split.valid[t].max() < split.test[t].min()
    assert abs(split.test.height / log.height - 0.2) < 0.01
    cut = datetime(2024, 1, 20, tzinfo=UTC)
    fixed = temporal_split(log, valid_start=cut, test_start=cut + timedelta(days=5))
    assert fixed.test[t].min() >= cut + timedelta(days=5) and fixed.train[t].max() < cut


def test_leave_last_out_tests_each_users_latest_event(log: pl.DataFrame) -> None:
    split = leave_last_out(log)
    _complete_and_disjoint(log, split)
    t = C.EVENT_TIMESTAMP
    assert split.test[C.USER_ID].is_unique().all() and split.valid[C.USER_ID].is_unique().all()
    latest_other = (
        pl.concat([split.train, split.valid]).group_by(C.USER_ID).agg(pl.col(t).max().alias("other"))
    )
    joined = split.test.join(latest_other, on=C.USER_ID)
    assert (joined[t] >= joined["other"]).all()
    v = split.valid.join(split.train.group_by(C.USER_ID).agg(pl.col(t).max().alias("tr")), on=C.USER_ID)
    assert (v[t] >= v["tr"]).all()
    # ties in time: the later row in the file is the test event
    tied_user = log[C.USER_ID][5]
    rows = log.filter(pl.col(C.USER_ID) == tied_user)
    if rows[t].max() == rows[t][0]:
        assert split.test.filter(pl.col(C.USER_ID) == tied_user)["row"].item() == rows["row"][-1]


def test_leave_last_out_keeps_short_histories_in_train() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    df = pl.DataFrame(
        {
            C.USER_ID: ["a", "a", "b", "b", "b"],
            C.EVENT_TIMESTAMP: [start + timedelta(hours=h) for h in (1, 0, 0, 2, 1)],
        }
    )
    split = leave_last_out(df)
    assert split.train[C.USER_ID].to_list().count("a") == 2
    assert split.test[C.EVENT_TIMESTAMP].to_list() == [start + timedelta(hours=2)]
    assert split.valid[C.EVENT_TIMESTAMP].to_list() == [start + timedelta(hours=1)]


def test_random_ratio_split_is_disjoint_complete_per_user_and_seeded(log: pl.DataFrame) -> None:
    split = random_ratio_split(log, (0.8, 0.1, 0.1), seed=2020)
    _complete_and_disjoint(log, split)
    n = log.group_by(C.USER_ID).len()
    counts = n.join(split.test.group_by(C.USER_ID).len().rename({"len": "test"}), on=C.USER_ID, how="left")
    counts = counts.join(
        split.valid.group_by(C.USER_ID).len().rename({"len": "valid"}), on=C.USER_ID, how="left"
    )
    for row in counts.fill_null(0).iter_rows(named=True):
        assert row["test"] == int(0.1 * row["len"]) + (0 < 0.1 * row["len"] < 1)
        assert row["valid"] == row["test"]
    again = random_ratio_split(log, (0.8, 0.1, 0.1), seed=2020)
    other = random_ratio_split(log, (0.8, 0.1, 0.1), seed=1)
    assert again.test.equals(split.test) and not other.test.equals(split.test)


def test_random_ratio_split_recbole_rounding_for_tiny_users() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    df = pl.DataFrame({C.USER_ID: ["a"] * 3 + ["b"] * 2, C.EVENT_TIMESTAMP: [start] * 5})
    split = random_ratio_split(df, seed=0)
    sizes = {
        p: s[C.USER_ID].value_counts().sort(C.USER_ID).rows()
        for p, s in (("train", split.train), ("valid", split.valid), ("test", split.test))
    }
    # RecBole: n=3 -> 1/1/1; n=2 -> train 1, test 1 (train must keep one)
    assert sizes == {"train": [("a", 1), ("b", 1)], "valid": [("a", 1)], "test": [("a", 1), ("b", 1)]}
    with pytest.raises(ValueError, match="ratios"):
        random_ratio_split(df, (0.5, 0.1, 0.1))


def test_before_holdout_keeps_only_events_before_the_ab_window() -> None:
    from datetime import UTC, datetime, timedelta

    import polars as pl

    from recsys.data import columns as C
    from recsys.data.splits import before_holdout

    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    events = pl.DataFrame({C.EVENT_TIMESTAMP: [t0 + timedelta(days=d) for d in range(10)]})
    train, start = before_holdout(events, 3)
    assert start == t0 + timedelta(days=6)
    assert train[C.EVENT_TIMESTAMP].max() < start
    assert train.height == 6
    same, none = before_holdout(events, 0)
    assert none is None and same.height == 10


def test_hold_out_items_removes_their_training_clicks_only(log: pl.DataFrame) -> None:
    split = temporal_split(log, valid_frac=0.1, test_frac=0.1)
    items = sorted(set(log[C.ITEM_ID].to_list()))
    reduced, held = hold_out_items(split, items, 0.2, salt="s")
    assert 0.1 < len(held) / len(items) < 0.3
    for part in (reduced.train, reduced.valid):
        assert not set(part[C.ITEM_ID].to_list()) & set(held)
    assert reduced.test.equals(split.test)  # their test clicks stay: they are the cold items
    kept = split.train.filter(~pl.col(C.ITEM_ID).is_in(held))
    assert reduced.train.equals(kept)
    assert hold_out_items(split, items, 0.2, salt="s")[1] == held  # seeded: the same items again
    assert hold_out_items(split, items, 0.2, salt="t")[1] != held
