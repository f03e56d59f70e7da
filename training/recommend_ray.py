"""`recsys recommend --engine ray`: batch recommendations from a pool of Ray actors.

The driver reads what the local path reads (the click log, the users, their state and behaviour
features as of `as_of`, the items' behaviour), cuts the users into contiguous partitions
(`ray.partitions_per_worker` per actor) and hands them to `RankUsers` actors, each holding one
`Recommender` loaded as the local path loads it; `ordered_results` keeps every actor busy (the
next partition already shipped while one is ranked) and returns the partitions in order, so the
output (rows, order, scores, reasons) is the local path's.

The actors are started first, so their processes start and import (LightGBM with scikit-learn,
MLflow: seconds) while the driver reads its inputs; then each loads its `Recommender` from the
log the driver put in the object store once.

Each actor loads the registered models and the workspace's item tables: on a cluster the MLflow
store and the workspace must be reachable from every node.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from recsys.config import Settings
from recsys.data import columns as C
from recsys.distributed.cluster import ray_session, worker_count
from recsys.distributed.tasks import actors, ordered_results
from recsys.io import write_parquet
from recsys.recommender import Recommender, latest_item_behaviour, user_state
from recsys.rules import Rules
from recsys.runtime import configure_threads
from recsys.workspace import Workspace
from training.recommend import OUT_SCHEMA, BatchResult, batch_inputs, user_features_as_of

log = logging.getLogger(__name__)
UserState = Mapping[str, tuple[list[str], set[str]]]
# what `Recommender.load` imports on first use (LightGBM pulls in scikit-learn)
WARM_IMPORTS = ("lightgbm", "mlflow", "recsys.tracking", "recsys.ranking.candidates")


def rank_users(rec: Recommender, users: Sequence[str], state: UserState,
               feats: Mapping[str, Mapping[str, Any]], k: int, as_of: datetime,
               rules: Rules | None) -> tuple[pl.DataFrame, int]:
    """(user_id, item_id, rank, score, reason) rows for `users` in order, and how many of them
    got the popularity fallback: what `recommend_batch` computes per user."""
    rows_u, rows_i, rows_r, rows_s, rows_why = [], [], [], [], []
    fallback = 0
    for u in users:
        hist, seen = state.get(u, ([], set()))
        r = rec.recommend(u, k, user_features=feats.get(u), as_of=as_of, history=hist, seen=seen, rules=rules)
        rows_why.extend(r.reasons or [""] * len(r.items))
        fallback += r.fallback is not None
        for item, score, rank in r.items:
            rows_u.append(u)
            rows_i.append(item)
            rows_r.append(rank)
            rows_s.append(score)
    df = pl.DataFrame({C.USER_ID: rows_u, C.ITEM_ID: rows_i, "rank": rows_r, "score": rows_s,
                       "reason": rows_why}, schema=OUT_SCHEMA)
    return df, fallback


class RankUsers:
    """A Ray actor holding one `Recommender`; ranks the user partitions it is given.

    Created before the driver reads its inputs: the constructor imports what `Recommender.load`
    needs (LightGBM with scikit-learn, MLflow: ~4-8 s in a fresh process) while the driver reads
    the log and the users' features; `load` then builds the `Recommender`."""

    def __init__(self, threads: int) -> None:
        configure_threads(threads)
        self.rec: Recommender | None = None
        for name in WARM_IMPORTS:
            importlib.import_module(name)

    def load(self, settings: Settings, log_df: pl.DataFrame, as_of: datetime,
             item_features: pl.DataFrame | None) -> dict[str, str | None]:
        self.rec = Recommender.load(settings, item_features=item_features, as_of=as_of, log=log_df)
        return dict(self.rec.versions)

    def rank(self, users: list[str], state: UserState, feats: Mapping[str, Mapping[str, Any]], k: int,
             as_of: datetime, rules: Rules | None) -> tuple[pl.DataFrame, int, float]:
        """(rows, fallback users, CPU seconds this call took in the actor)."""
        if self.rec is None:
            raise RuntimeError("RankUsers.rank before load")
        t = time.process_time()
        df, fallback = rank_users(self.rec, users, state, feats, k, as_of, rules)
        return df, fallback, time.process_time() - t


def partitions(users: Sequence[str], n: int) -> list[list[str]]:
    """`users` cut into at most `n` contiguous, nearly equal, non-empty parts (in order)."""
    n = max(1, min(n, len(users)))
    size, extra = divmod(len(users), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (i < extra)
        out.append(list(users[start:end]))
        start = end
    return [p for p in out if p]


def recommend_on_ray(settings: Settings, ws: Workspace, users: list[str] | None, k: int,
                     as_of: datetime | None, out: Path, rules: Rules | None = None) -> BatchResult:
    """`training.recommend.recommend_batch` with the ranking on Ray actors (same parquet)."""
    import ray

    configure_threads(settings.threads)
    t0 = time.perf_counter()
    with ray_session(settings.ray), actors(RankUsers, worker_count(settings.ray), settings.threads) as pool:
        # the actors' processes start and import while this process reads its inputs
        log_df, as_of, users = batch_inputs(ws, as_of, users)  # as the local path
        state = user_state(log_df, as_of, settings.ranker.history)
        feats = user_features_as_of(ws, as_of)
        item_f = latest_item_behaviour(ws.feature_sources_dir / "item_behaviour.parquet", as_of)
        t_read = time.perf_counter()
        log_ref, item_ref = ray.put(log_df), ray.put(item_f)
        del log_df
        versions = ray.get([a.load.remote(settings, log_ref, as_of, item_ref) for a in pool])[0]
        t_load = time.perf_counter()
        parts = partitions(users, len(pool) * settings.ray.partitions_per_worker)

        def call(actor: Any, part: list[str]) -> Any:
            return actor.rank.remote(part, {u: state[u] for u in part if u in state},
                                     {u: feats[u] for u in part if u in feats}, k, as_of, rules)

        results = list(ordered_results(pool, call, parts))
    df = pl.concat([r[0] for r in results]) if results else pl.DataFrame(schema=OUT_SCHEMA)
    write_parquet(df, out)
    fallback = sum(r[1] for r in results)
    t_end = time.perf_counter()
    log.debug("recommend on Ray: %d users in %d partitions on %d actors; inputs read %.1f s, actors "
              "loaded %.1f s later, ranked and written in %.1f s (%.1f actor CPU s), in all %.1f s",
              len(users), len(parts), len(pool), t_read - t0, t_load - t_read, t_end - t_load,
              sum(r[2] for r in results), t_end - t0)
    return BatchResult(Path(out), len(users), df.height, fallback, versions, t_end - t0)
