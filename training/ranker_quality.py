"""Full-ranking quality of the two-stage system on MovieLens, against two-tower-only and popularity.

    OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 RECSYS_PROGRESS=0 \\
        .venv/bin/python -m training.ranker_quality --home <workspace with ml-100k + item_embeddings>

Protocols (every rating is a positive; items a user rated in the known part are excluded
before ranking; metrics by `recsys.evaluation.metrics` through `recsys.retrieval.evaluate`):

- `recbole`: per-user random 80/10/10 (RecBole's rounding, `recsys.data.splits`).
- `ms75`: per-user random 75/25 (Microsoft Recommenders' stratified split); 15% of each user's
  known part is held out inside it, as below.

Stacking: the two-tower learns from the first known part (`train`); the ranker learns from the
held-out known part (`valid` for RecBole), so the two-tower score it sees on its positives is
the score of unseen pairs, as at test time. Ranker query groups are users (one group each, as
of the end of the known period; a random split has no meaningful days); candidates are the
held-out clicks plus hard negatives drawn from the two-tower's top 300. Ranker settings for
this small data: 100 negatives per user, 15 leaves, 50 rows per leaf (chosen on the RecBole
held-out part, never on the test). The workspace's Feast behaviour views are left out: they
are computed from the whole log, test ratings included, and would leak; in their place
all-time click counts of user and item from the clicks each stage may know. The three rows
come from the same run, the same split and the same metric code.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import polars as pl

from recsys.data import columns as C
from recsys.data.splits import random_ratio_split
from recsys.data.tables import load_table
from recsys.ranking.candidates import TwoTowerSource
from recsys.ranking.dataset import build_candidates, feature_matrix
from recsys.ranking.features import FeatureSpec, ItemTable
from recsys.ranking.model import RankerModel, fit, lgb_params, ndcg_at, popularity
from recsys.recommender import Recommender
from recsys.runtime import configure_threads
from recsys.workspace import Workspace

log = logging.getLogger(__name__)
PUBLISHED = {
    "recbole": "RecBole BPR: Recall@10 0.2523, NDCG@10 0.2920 (LightGCN tuned ~0.31 NDCG@10)",
    "ms75": "Microsoft Recommenders BiVAE: NDCG@10 0.475, Recall@10 0.219 (BPR 0.442 / 0.213)",
}


@dataclass
class QualityResult:
    protocol: str
    table: pl.DataFrame
    text: str
    ranker_valid_ndcg: float
    seconds: float


def _splits(clicks: pl.DataFrame, protocol: str, seed: int
            ) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(two-tower train, ranker train, test)."""
    if protocol == "recbole":
        s = random_ratio_split(clicks, (0.8, 0.1, 0.1), seed=seed)
        return s.train, s.valid, s.test
    if protocol == "ms75":
        outer = random_ratio_split(clicks, (0.75, 0.0, 0.25), seed=seed)
        inner = random_ratio_split(outer.train, (0.85, 0.15, 0.0), seed=seed + 1)
        return inner.train, inner.valid, outer.test
    raise ValueError(f"unknown protocol '{protocol}'; expected recbole or ms75")


def evaluate_protocol(settings: Any, ws: Workspace, protocol: str,
                      ks: Sequence[int] = (10,)) -> QualityResult:
    from recsys.retrieval.evaluate import evaluate_methods, popularity_scorer, recent_histories
    from recsys.retrieval.train import train_two_tower

    configure_threads(settings.threads)
    t0 = time.perf_counter()
    items_df = load_table(ws, "items")
    emb = load_table(ws, "item_embeddings")
    imp = load_table(ws, "impressions")
    clicks = imp.filter(pl.col(C.CLICKED)).select(C.USER_ID, C.ITEM_ID, C.EVENT_TIMESTAMP)
    tt_train, rk_train, test = _splits(clicks, protocol, settings.seed)
    known = pl.concat([tt_train, rk_train])
    print(f"[{protocol}] two-tower train {tt_train.height:,}, ranker train {rk_train.height:,}, "
          f"test {test.height:,} ratings", flush=True)

    trained = train_two_tower(items_df, emb, tt_train, rk_train, settings.retrieval, seed=settings.seed,
                              device="cpu")
    model = trained.model
    items = ItemTable.build(items_df, emb)
    source = TwoTowerSource(model, items, f"two-tower({protocol})")

    # the ranker: one group per user as of the end of the known period
    end = known[C.EVENT_TIMESTAMP].max() + timedelta(days=1)
    end = end.replace(hour=0, minute=0, second=0, microsecond=0)
    rk_log = rk_train.with_columns(pl.col(C.USER_ID).alias(C.REQUEST_ID),
                                   pl.lit(end).alias(C.EVENT_TIMESTAMP), pl.lit(True).alias(C.CLICKED),
                                   pl.lit(None, dtype=pl.Int32).alias(C.POSITION))
    hist_log = tt_train.with_columns(pl.lit(True).alias(C.CLICKED))
    cfg = settings.ranker
    cands = build_candidates(rk_log, items, history=cfg.history, negatives=cfg.candidates, source=source,
                             rank_cap=settings.retrieval.candidates, seed=settings.seed, debias="none",
                             history_log=hist_log)
    # behaviour features from the clicks each stage may know: the two-tower's training clicks
    # for the ranker's training rows, every known click at test time (all-time counts; the
    # workspace's Feast views would leak, see the module docstring)
    ts_col = "feature_timestamp"
    item_b = tt_train.group_by(C.ITEM_ID).agg(pl.len().cast(pl.Float64).alias("clicks_all"))
    user_b = tt_train.group_by(C.USER_ID).agg(pl.len().cast(pl.Float64).alias("clicks_all"))
    spec = FeatureSpec(("clicks_all",), ("clicks_all",), items.categories)
    x, _ = feature_matrix(cands, spec, items, user_b.with_columns(pl.lit(end).alias(ts_col)),
                          item_b.with_columns(pl.lit(end).alias(ts_col)))
    from recsys.ranking.model import RankSet

    q = cands.rows["q"].to_numpy()
    valid_q = np.random.default_rng(settings.seed).random(cands.queries.height) < cfg.validation_fraction
    vmask = valid_q[q]
    y = cands.rows["label"].to_numpy().astype(np.int32)

    def rankset(mask: np.ndarray) -> RankSet:
        g = np.bincount(q[mask], minlength=cands.queries.height)
        return RankSet(x[mask], y[mask], g[g > 0])

    train, valid = rankset(~vmask), rankset(vmask)
    booster, _ = fit(lgb_params(cfg, settings.seed, settings.threads), spec, train, valid, cfg.rounds,
                     cfg.early_stopping)
    ranker_ndcg = ndcg_at(booster.predict(valid.x), valid.y, valid.group)
    pop_log = known.with_columns(pl.lit(True).alias(C.CLICKED))
    ranker = RankerModel(booster, spec, popularity(pop_log, days=10_000))
    known_items = known.group_by(C.ITEM_ID).agg(pl.len().cast(pl.Float64).alias("clicks_all"))
    serving_items = items.with_behaviour(known_items, spec.item_behaviour)
    user_clicks = dict(known.group_by(C.USER_ID).agg(pl.len()).iter_rows())
    rec = Recommender(ranker, serving_items, source, {"ranker": "eval", "retrieval": source.version},
                      n_candidates=settings.retrieval.candidates, history=cfg.history)

    item_ids = model.item_ids
    pos = {i: r for r, i in enumerate(item_ids)}
    seen = known.group_by(C.USER_ID).agg(pl.col(C.ITEM_ID))
    seen_by = dict(zip(seen[C.USER_ID].to_list(), seen[C.ITEM_ID].to_list(), strict=True))

    def two_tower(users: list[str]) -> np.ndarray:
        vecs = model.user_vectors(users, recent_histories(known, users, model.history))
        return vecs @ model.item_vectors.T

    def two_stage(users: list[str]) -> np.ndarray:
        base = two_tower(users) - 1e6  # beyond the candidates: the two-tower's order
        hists = recent_histories(known, users, cfg.history)
        for r, u in enumerate(users):
            out = rec.recommend(u, rec.n_candidates, user_features={"clicks_all": user_clicks.get(u)},
                                exclude=set(seen_by.get(u, ())), as_of=end, history=list(reversed(hists[r])))
            for item, score, _ in out.items:
                base[r, pos[item]] = score
        return base

    methods = {"two_stage": two_stage, "two_tower": two_tower,
               "popularity": popularity_scorer(known, item_ids)}
    result = evaluate_methods(methods, known, test, item_ids, ks=ks, segments=("all",))
    text = result.format(ks)
    return QualityResult(protocol, result.table, text, ranker_ndcg, time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description="Two-stage vs two-tower vs popularity on MovieLens")
    ap.add_argument("--home", required=True)
    ap.add_argument("--protocols", default="recbole,ms75")
    args = ap.parse_args()
    from recsys import tracking
    from recsys.config import load_settings

    # a small ranker for ~10k held-out positives (chosen on the RecBole validation part)
    settings = load_settings(home=args.home, **{"ranker.candidates": 100, "ranker.num_leaves": 15,
                                                "ranker.min_data_in_leaf": 50})
    ws = Workspace.at(settings.home)
    with tracking.start_run(settings, "ranker-quality") as _:
        import mlflow

        for protocol in args.protocols.split(","):
            r = evaluate_protocol(settings, ws, protocol)
            print(f"\n== {protocol} ({r.seconds:.0f} s; ranker held-out NDCG@10 {r.ranker_valid_ndcg:.4f})\n"
                  f"{r.text}\npublished: {PUBLISHED[protocol]}", flush=True)
            for row in r.table.iter_rows(named=True):
                mlflow.log_metrics({f"{protocol}.{row['method']}.{m.replace('@', '_at_')}": float(v)
                                    for m, v in row.items() if "@" in m and v == v})
            mlflow.log_text(r.text, f"quality_{protocol}.txt")


if __name__ == "__main__":
    main()
