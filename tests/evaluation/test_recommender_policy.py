"""The two-stage recommender as an offline A/B policy: what it may rank as of the split time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from recsys.config import load_settings
from recsys.data import columns as C
from recsys.ranking.features import FeatureSpec, ItemTable
from recsys.ranking.model import RankerModel, RankSet, fit, lgb_params
from recsys.recommender import Recommender
from training.evaluate import RecommenderPolicy

AS_OF = datetime(2024, 3, 1, tzinfo=UTC)


def _recommender(n_items: int = 30) -> Recommender:
    rng = np.random.default_rng(0)
    # even items exist before AS_OF, odd ones arrive after it (a catalogue growing during the window)
    created = [AS_OF + timedelta(days=(5 if i % 2 else -5)) for i in range(n_items)]
    items = pl.DataFrame({C.ITEM_ID: [f"i{i}" for i in range(n_items)], C.CATEGORY: ["c"] * n_items,
                          C.PRICE: rng.uniform(1, 10, n_items), C.CREATED_AT: created})
    table = ItemTable.build(items)
    spec = FeatureSpec(categories=table.categories)
    x = rng.normal(size=(200, len(spec.names))).astype(np.float32)
    y = (rng.random(200) < 0.3).astype(np.int32)
    train = RankSet(x, y, np.full(20, 10))
    settings = load_settings(**{"ranker.rounds": 5})
    booster, _ = fit(lgb_params(settings.ranker, 0, 1), spec, train, None, 5, 0)
    pop = pl.DataFrame({C.ITEM_ID: items[C.ITEM_ID], "score": np.arange(n_items, 0, -1, dtype=np.float64)})
    return Recommender(RankerModel(booster, spec, pop), table, n_candidates=n_items)


def test_items_created_after_as_of_are_never_ranked() -> None:
    rec = _recommender()
    clicks = pl.DataFrame({C.USER_ID: ["u1", "u1"], C.ITEM_ID: ["i0", "i2"],
                           C.EVENT_TIMESTAMP: [AS_OF - timedelta(days=2), AS_OF - timedelta(days=1)],
                           C.CLICKED: [True, True]})
    policy = RecommenderPolicy(rec, "ranker/v1", clicks, history=5)
    ranked = policy.rank(np.array(["u1", "stranger"]), AS_OF, k=20)
    shown = {i for i in ranked.ravel().tolist() if i}
    assert shown, "the policy ranked nothing"
    # only even items existed at AS_OF; the user's own clicks stay excluded as before
    assert all(int(i[1:]) % 2 == 0 for i in shown), sorted(shown)
    assert not {"i0", "i2"} & set(ranked[0].tolist())
