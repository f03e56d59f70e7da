"""Ranker benchmarks: the whole `train ranker` path against `lightgbm.train` on the same matrix,
and the ranking latency of one request's 300 candidates.

    OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 RECSYS_PROGRESS=0 .venv/bin/python benchmarks/ranker.py

1. A synthetic shop (items with 64-d vectors, a click log of `--rows` impressions in slates of
   10, clicks from taste x position bias) is written to a fresh workspace.
2. `training.ranker.train_ranker` runs end to end (validation, groups, features, IPS weights,
   LightGBM, MLflow logging and registration), `--rounds` trees, no early stop.
3. Baseline: `lightgbm.train` with the same parameters on the same prepared train/valid
   matrices (built beforehand, untimed). Goal: pipeline / baseline <= 1.2.
4. Latency: `Recommender` with 300 candidates per request; the ranker part (feature assembly
   + LightGBM predict) and the whole `recommend` call, p50/p99 over `--requests` requests.
   Goal: ranker part p99 <= 2 ms.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RECSYS_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from recsys.data import columns as C  # noqa: E402


def synthetic_shop(n_items: int, rows: int, slate: int = 10, dim: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    cats = [f"c{i}" for i in range(12)]
    item_cat = rng.integers(0, len(cats), n_items)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    items = pl.DataFrame({
        C.ITEM_ID: [f"i{i}" for i in range(n_items)], C.TITLE: "t", C.DESCRIPTION: "d",
        C.CATEGORY: [cats[c] for c in item_cat], C.PRICE: rng.uniform(5, 100, n_items),
        C.IMAGE_URI: pl.Series([None] * n_items, dtype=pl.String),
        C.IMAGE_SOURCE: rng.choice(["original", "generated", "none"], n_items),
        C.CREATED_AT: [start - timedelta(days=int(d)) for d in rng.integers(1, 90, n_items)],
    })
    vecs = rng.normal(size=(len(cats), dim))[item_cat] + 0.7 * rng.normal(size=(n_items, dim))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    emb = pl.DataFrame({C.ITEM_ID: items[C.ITEM_ID], C.EMBEDDING: vecs.astype(np.float32),
                        C.IMAGE_SOURCE: items[C.IMAGE_SOURCE], C.MODEL_VERSION: "bench"})
    n_req = rows // slate
    n_users = max(n_req // 20, 10)
    taste = rng.integers(0, len(cats), n_users)
    user = rng.integers(0, n_users, n_req)
    ts = start + pl.Series(np.sort(rng.integers(0, 28 * 86400, n_req)) * 1_000_000).cast(pl.Duration("us"))
    shown = rng.integers(0, n_items, (n_req, slate))
    pos = np.tile(np.arange(slate), (n_req, 1))
    rel = np.where(item_cat[shown] == taste[user][:, None], 0.95, 0.3)  # most slates get a click
    clicked = rng.random((n_req, slate)) < rel / (1 + pos) ** 0.7
    log = pl.DataFrame({
        C.REQUEST_ID: np.repeat(np.arange(n_req), slate).astype(str),
        C.USER_ID: np.char.add("u", np.repeat(user, slate).astype(str)),
        C.ITEM_ID: np.char.add("i", shown.ravel().astype(str)),
        C.POSITION: pos.ravel().astype(np.int32),
        C.EVENT_TIMESTAMP: np.repeat(ts.to_numpy(), slate),
        C.CLICKED: clicked.ravel(),
        C.PROPENSITY: np.full(n_req * slate, 0.1),
        C.POLICY: "bench",
    }).with_columns(pl.col(C.EVENT_TIMESTAMP).dt.replace_time_zone("UTC"))
    return items, emb, log


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--candidates", type=int, default=300)
    args = ap.parse_args()

    from recsys.config import load_settings
    from recsys.data.tables import save_table
    from recsys.ranking.dataset import build_candidates, feature_matrix, ips_weights
    from recsys.ranking.features import FeatureSpec, ItemTable, assemble, user_profiles
    from recsys.ranking.model import fit, lgb_params
    from recsys.recommender import Recommender
    from recsys.workspace import Workspace
    from training.ranker import _rankset, _split, train_ranker

    home = Path(tempfile.mkdtemp(prefix="recsys-bench-ranker-"))
    settings = load_settings(home=str(home), **{"ranker.rounds": args.rounds, "ranker.early_stopping": 10**6,
                                                "retrieval.candidates": args.candidates})
    ws = Workspace.at(settings.home)
    items_df, emb, log = synthetic_shop(args.items, args.rows)
    save_table(ws, "items", items_df)
    save_table(ws, "item_embeddings", emb)
    path = home / "log.parquet"
    log.write_parquet(path)
    print(f"log: {log.height:,} impressions, {log[C.CLICKED].sum():,} clicks, {args.items} items; "
          f"workspace {home}")

    from recsys import tracking

    t = time.perf_counter()
    tracking.list_models(settings)  # a workspace's tracking DB is created once (alembic): not timed
    print(f"MLflow tracking DB created (once per workspace, untimed): {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    result = train_ranker(settings, ws, path, promote=True, retrieval_uri="none")
    pipeline = time.perf_counter() - t
    stages = {k: round(v, 2) for k, v in result.seconds.items()}
    print(f"train ranker (whole path): {pipeline:.2f} s  stages {stages}  rows {result.counts['rows']:,}, "
          f"{result.best_iteration} best iteration")

    # the same matrices, prepared outside the clock
    items = ItemTable.build(items_df, emb)
    cands = build_candidates(pl.read_parquet(path), items, history=settings.ranker.history, negatives=0,
                             debias="ips")
    spec = FeatureSpec(categories=items.categories)
    x, _ = feature_matrix(cands, spec, items)
    w = ips_weights(cands.rows, cands.examination, settings.ranker.ips_clip)
    tr, va = _split(cands, settings.ranker.validation_fraction)
    train, valid = _rankset(x, cands, tr, w), _rankset(x, cands, va, None)
    t = time.perf_counter()
    fit(lgb_params(settings.ranker, settings.seed, settings.threads), spec, train, valid, args.rounds, 10**6)
    direct = time.perf_counter() - t
    print(f"lightgbm.train on the prepared matrix ({len(train.y):,} + {len(valid.y):,} rows x "
          f"{x.shape[1]} features): {direct:.2f} s")
    print(f"ratio pipeline / direct: {pipeline / direct:.2f}x (goal <= 1.2x)")

    # latency: one request's candidates through the serving path
    rec = Recommender.load(settings, retrieval_uri="clip-profile")
    rng = np.random.default_rng(1)
    users = log[C.USER_ID].unique().sort().to_list()
    hist_pool = items_df[C.ITEM_ID].to_list()
    rank_ms, total_ms, rank_cpu_ms = [], [], []
    ub = np.zeros((1, 0), np.float32)
    import gc

    for r in range(-50, args.requests):  # 50 warm-up requests, then gc.freeze() as a server does
        if r == 0:
            gc.collect()
            gc.freeze()
            rank_ms.clear()
            rank_cpu_ms.clear()
            total_ms.clear()
        hist = [hist_pool[i] for i in rng.integers(0, args.items, 10)]
        h = rec.history_rows(None, hist)
        prof = user_profiles(h, rec.items)
        top = rng.choice(args.items, args.candidates, replace=False)
        tt = rng.normal(size=args.candidates).astype(np.float32)
        t = time.perf_counter()
        c0 = time.thread_time()
        xx = assemble(rec.spec, rec.items, top, np.zeros(args.candidates, np.int64), prof, ub,
                      np.array([1.7e9]), tt, np.arange(args.candidates, dtype=np.float32))
        s = rec.ranker.predict(xx)
        np.argsort(-s)[:10]
        rank_ms.append((time.perf_counter() - t) * 1e3)
        rank_cpu_ms.append((time.thread_time() - c0) * 1e3)
        t = time.perf_counter()
        out = rec.recommend(users[abs(r) % len(users)], 10, history=hist)
        total_ms.append((time.perf_counter() - t) * 1e3)
        assert out.candidates == args.candidates
    for name, v in (("ranker part (assemble + predict, 300 candidates)", rank_ms),
                    ("ranker part, CPU time of the thread (excludes waiting for a core)", rank_cpu_ms),
                    ("whole recommend() (retrieval + profile + ranker)", total_ms)):
        print(f"{name}: p50 {np.percentile(v, 50):.3f} ms, p99 {np.percentile(v, 99):.3f} ms "
              f"over {len(v)} requests")


if __name__ == "__main__":
    main()
