"""The feature assembly: one function, same numbers for a batch and for one request."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recsys.data import columns as C
from recsys.ranking.features import FeatureSpec, ItemTable, assemble, numeric_columns, user_profiles


@pytest.fixture(scope="module")
def items(world) -> ItemTable:
    return ItemTable.build(world["items"], world["item_embeddings"])


def test_spec_round_trip_and_order(tmp_path) -> None:
    spec = FeatureSpec(("clicks_7d",), ("ctr_7d", "popularity_rank"), ("a", "b"))
    assert spec.names[:3] == ["user.clicks_7d", "item.ctr_7d", "item.popularity_rank"]
    assert "position" not in spec.names  # position de-biases training; it is never a feature
    spec.save(tmp_path / "f.json")
    assert FeatureSpec.load(tmp_path / "f.json") == spec


def test_numeric_columns_skip_keys_lists_and_text() -> None:
    df = pl.DataFrame({C.USER_ID: ["u"], "clicks_7d": [3], "ctr_7d": [0.1], "last_clicked_items": [["i1"]],
                       "name": ["x"], "flag": [True]})
    assert numeric_columns(df) == ("clicks_7d", "ctr_7d", "flag")


def test_batch_equals_per_request(items: ItemTable) -> None:
    """Training assembles many queries at once, serving one: the rows must be identical."""
    spec = FeatureSpec(("clicks_7d",), ("ctr_7d",), items.categories)
    rng = np.random.default_rng(0)
    hist = np.full((3, 5), -1)
    hist[0, 2:] = [1, 2, 3]
    hist[1, :] = [4, 5, 6, 7, 8]
    profiles = user_profiles(hist, items)
    item_rows = np.array([0, 5, 9, 10, 11, 12, 13])
    query_rows = np.array([0, 0, 0, 1, 1, 2, 2])
    ub = np.array([[1.0], [2.0], [np.nan]], np.float32)
    ib = rng.normal(size=(7, 1)).astype(np.float32)
    ts = np.array([1.7e9, 1.7e9 + 86400, 1.7e9 + 2 * 86400])
    tt = rng.normal(size=7).astype(np.float32)
    batch = assemble(spec, items, item_rows, query_rows, profiles, ub, ts, tt, np.arange(7.0), ib)
    assert batch.shape == (7, len(spec.names)) and batch.dtype == np.float32
    for q in range(3):
        sel = query_rows == q
        prof = user_profiles(hist[q:q + 1], items)
        one = assemble(spec, items, item_rows[sel], np.zeros(sel.sum(), int), prof,
                       ub[q:q + 1], ts[q:q + 1], tt[sel], np.arange(7.0)[sel], ib[sel])
        np.testing.assert_array_equal(one, batch[sel])


def test_request_features_mean_what_they_say(items: ItemTable) -> None:
    spec = FeatureSpec(categories=items.categories)
    names = spec.names
    hist = np.array([[3, 3, 3]])
    prof = user_profiles(hist, items)
    x = assemble(spec, items, np.array([3, 4]), np.zeros(2, int), prof, np.zeros((1, 0)), np.array([1.7e9]))
    row = dict(zip(names, x[0], strict=True))
    assert row["clip_cos"] == pytest.approx(1.0, abs=1e-5)  # the profile is this very item
    assert row["category_share"] == 1.0 and row["category_match"] == 1.0
    assert row["price_rel"] == pytest.approx(1.0)
    assert row["history_len"] == 3
    assert np.isnan(row["tt_score"]) and np.isnan(row["tt_rank"])
    # no history: profile features are missing, not zero-valued lies
    empty = user_profiles(np.full((1, 3), -1), items)
    y = assemble(spec, items, np.array([3]), np.zeros(1, int), empty, np.zeros((1, 0)), np.array([1.7e9]))
    r = dict(zip(names, y[0], strict=True))
    assert np.isnan(r["clip_cos"]) and np.isnan(r["price_rel"]) and r["history_len"] == 0


def test_serving_needs_the_models_item_features(items: ItemTable) -> None:
    spec = FeatureSpec((), ("ctr_7d",), items.categories)
    prof = user_profiles(np.full((1, 2), -1), items)
    with pytest.raises(ValueError, match="with_behaviour"):
        assemble(spec, items, np.array([0]), np.zeros(1, int), prof, np.zeros((1, 0)), np.array([1.7e9]))
    beh = pl.DataFrame({C.ITEM_ID: ["i0", "nope"], "ctr_7d": [0.25, 0.5]})
    it = items.with_behaviour(beh, ("ctr_7d",))
    x = assemble(spec, it, np.array([0, 1]), np.zeros(2, int), prof, np.zeros((1, 0)), np.array([1.7e9]))
    assert x[0, 0] == 0.25 and np.isnan(x[1, 0])  # an item without features stays NaN


def test_profiles_of_many_queries_equal_one_at_a_time(items: ItemTable) -> None:
    """Training takes the sparse path (M > 64), serving the dense one: same profiles."""
    rng = np.random.default_rng(1)
    hist = rng.integers(-1, len(items), size=(100, 6))
    many = user_profiles(hist, items)
    for q in (0, 17, 99):
        one = user_profiles(hist[q:q + 1], items)
        np.testing.assert_allclose(one.clip[0], many.clip[q], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(one.category_share[0], many.category_share[q])
