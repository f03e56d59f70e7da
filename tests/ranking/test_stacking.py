"""The multi-source training set of a click-only log (`recsys.ranking.stacking`) on the tiny shop."""

from __future__ import annotations

import numpy as np
import polars as pl

from recsys.data import columns as C
from recsys.data.splits import candidate_split
from recsys.ranking.candidates import ClipProfileSource, EaseSource, merge_candidates, top_rows
from recsys.ranking.dataset import feature_matrix
from recsys.ranking.features import FeatureSpec, ItemTable
from recsys.ranking.stacking import stacked_candidates
from recsys.retrieval.ease import EaseModel


def test_merge_keeps_first_order_and_ranks_every_list() -> None:
    union, (a, b) = merge_candidates([np.array([5, 2, 9]), np.array([2, 7])], cap=10)
    assert union.tolist() == [5, 2, 9, 7]
    assert a.tolist() == [0, 1, 2, 10] and b.tolist() == [10, 0, 10, 1]
    assert top_rows(np.array([0.1, np.nan, 0.9, 0.9, -np.inf]), 3).tolist() == [2, 3, 0]


def test_the_request_paths_merge_equals_merge_candidates() -> None:
    """`recsys.recommender.merged` (sorts, for lists without repeats) against the dict version."""
    from recsys.recommender import merged

    rng = np.random.default_rng(0)
    for _ in range(500):
        lists = [rng.choice(60, rng.integers(0, 25), replace=False) for _ in range(rng.integers(1, 4))]
        union, ranks = merged(lists, cap=30)
        want_union, want_ranks = merge_candidates(lists, cap=30)
        assert union.tolist() == want_union.tolist()
        assert [r.tolist() for r in ranks] == [r.tolist() for r in want_ranks]


def test_union_of_two_tower_and_ease_with_per_source_features(world) -> None:
    clicks = world["impressions"].filter(pl.col(C.CLICKED)).select(C.USER_ID, C.ITEM_ID, C.EVENT_TIMESTAMP)
    split = candidate_split(clicks, "random", seed=1)
    items = ItemTable.build(world["items"], world["item_embeddings"])
    ease = EaseSource(EaseModel.fit(split.train, lam=10.0), items, "ease(base)")
    source = ClipProfileSource(items)
    labels = pl.concat([split.valid, split.test])
    cands = stacked_candidates(split.train, labels, items, source=source, ease=ease, history=5,
                               n_tt=8, n_ease=8)
    rows = cands.rows.join(cands.queries.select("q", C.USER_ID), on="q")
    # no candidate is an item the user clicked in the base part
    base = split.train.select(C.USER_ID, C.ITEM_ID).unique()
    assert rows.join(base, on=[C.USER_ID, C.ITEM_ID]).height == 0
    # labels are exactly the label-part clicks among the candidates
    truth = labels.select(C.USER_ID, C.ITEM_ID).unique().with_columns(pl.lit(1).alias("_t"))
    got = rows.join(truth, on=[C.USER_ID, C.ITEM_ID], how="left")
    assert (got["_t"].fill_null(0) == got["label"]).all()
    # each source contributes its list: ranks below the cap come from that source, up to 8 each
    per_q = rows.group_by("q").agg((pl.col("tt_rank") < 8).sum().alias("tt"),
                                   (pl.col("ease_rank") < 8).sum().alias("ease"), pl.len().alias("n"))
    assert (per_q["tt"] <= 8).all() and (per_q["ease"] <= 8).all()
    assert (per_q["n"] > per_q["tt"]).any()  # EASE adds items the content source did not find
    assert (per_q["n"] <= per_q["tt"] + per_q["ease"]).all()
    # the features reach the matrix: EASE score/rank, item popularity and user activity are set
    spec = FeatureSpec(categories=items.categories)
    x, _ = feature_matrix(cands, spec, items)
    names = spec.names
    for name in ("ease_score", "ease_rank", "item_popularity", "user_clicks", "tt_score", "clip_cos"):
        assert np.isfinite(x[:, names.index(name)]).any(), name
    assert cands.counts["groups_used"] == cands.queries.height > 0
