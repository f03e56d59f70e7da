"""Training rows bounded by `ranker.max_rows` (issue 21): query groups sampled, seeded."""

from __future__ import annotations

import polars as pl

from recsys.data import columns as C
from recsys.data.splits import candidate_split
from recsys.ranking.candidates import ClipProfileSource, EaseSource
from recsys.ranking.features import ItemTable
from recsys.ranking.stacking import stacked_candidates
from recsys.retrieval.ease import EaseModel
from training.ranker import sample_requests


def _stacked(world, max_groups: int | None, seed: int = 0):
    clicks = world["impressions"].filter(pl.col(C.CLICKED)).select(C.USER_ID, C.ITEM_ID, C.EVENT_TIMESTAMP)
    split = candidate_split(clicks, "random", seed=1)
    items = ItemTable.build(world["items"], world["item_embeddings"])
    ease = EaseSource(EaseModel.fit(split.train, lam=10.0), items, "ease(base)")
    return stacked_candidates(split.train, pl.concat([split.valid, split.test]), items,
                              source=ClipProfileSource(items), ease=ease, history=5, n_tt=8, n_ease=8,
                              max_groups=max_groups, seed=seed)


def test_stacking_samples_users_to_max_groups_and_keeps_their_rows(world) -> None:
    full = _stacked(world, None)
    sampled = _stacked(world, 10)
    assert sampled.counts["groups"] == 10 < full.counts["groups"] == sampled.counts["groups_before_sampling"]
    assert sampled.queries.height <= 10
    # a sampled user's group is the same as in the full set (sampling picks groups, not rows)
    key = [C.USER_ID, C.ITEM_ID, "label"]
    mine = sampled.rows.join(sampled.queries.select("q", C.USER_ID), on="q").select(key)
    theirs = full.rows.join(full.queries.select("q", C.USER_ID), on="q").select(key)
    assert mine.join(theirs, on=key, how="anti").height == 0
    assert _stacked(world, 10).rows.equals(sampled.rows)  # seeded


def test_requests_are_sampled_whole() -> None:
    log = pl.DataFrame({C.REQUEST_ID: [f"r{i // 3}" for i in range(30)],
                        C.ITEM_ID: [str(i) for i in range(30)]})
    kept, before = sample_requests(log, 4, seed=0)
    assert before == 10 and kept[C.REQUEST_ID].n_unique() == 4 and kept.height == 12
    assert sample_requests(log, 10, seed=0)[0].equals(log)
