"""`recsys recommend --engine ray`: batch recommendations from a pool of Ray actors.

The driver reads what the local path reads (the click log, the users, their state and behaviour
features as of `as_of`, the items' behaviour), cuts the users into contiguous partitions
(`ray.partitions_per_worker` per actor) and hands them to `RankUsers` actors, each holding one
`Recommender` loaded as the local path loads it; `ray.util.ActorPool` keeps every actor busy and
returns the partitions in order, so the output (rows, order, scores, reasons) is the local path's.

Each actor loads the registered models and the workspace's item tables: on a cluster the MLflow
store and the workspace must be reachable from every node.
"""

from __future__ import annotations

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
from recsys.io import write_parquet
from recsys.recommender import Recommender, latest_item_behaviour, user_state
from recsys.rules import Rules
from recsys.runtime import configure_threads
from recsys.workspace import Workspace
from training.recommend import OUT_SCHEMA, BatchResult, batch_inputs, user_features_as_of

log = logging.getLogger(__name__)
UserState = Mapping[str, tuple[list[str], set[str]]]


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
    """A Ray actor holding one `Recommender`; ranks the user partitions it is given."""

    def __init__(self, settings: Settings, log_df: pl.DataFrame, as_of: datetime,
                 item_features: pl.DataFrame | None) -> None:
        configure_threads(settings.threads)
        self.rec = Recommender.load(settings, item_features=item_features, as_of=as_of, log=log_df)

    def versions(self) -> dict[str, str | None]:
        return dict(self.rec.versions)

    def rank(self, users: list[str], state: UserState, feats: Mapping[str, Mapping[str, Any]], k: int,
             as_of: datetime, rules: Rules | None) -> tuple[pl.DataFrame, int]:
        return rank_users(self.rec, users, state, feats, k, as_of, rules)


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
    from ray.util import ActorPool

    configure_threads(settings.threads)
    t0 = time.perf_counter()
    log_df, as_of, users = batch_inputs(ws, as_of, users)  # as the local path
    state = user_state(log_df, as_of, settings.ranker.history)
    feats = user_features_as_of(ws, as_of)
    item_f = latest_item_behaviour(ws.feature_sources_dir / "item_behaviour.parquet", as_of)
    with ray_session(settings.ray):
        n = worker_count(settings.ray)
        log_ref, item_ref = ray.put(log_df), ray.put(item_f)
        actor = ray.remote(num_cpus=1, max_restarts=0)(RankUsers)
        actors = [actor.remote(settings, log_ref, as_of, item_ref) for _ in range(n)]
        versions = ray.get(actors[0].versions.remote())
        parts = partitions(users, n * settings.ray.partitions_per_worker)

        def submit(a: Any, part: list[str]) -> Any:
            return a.rank.remote(part, {u: state[u] for u in part if u in state},
                                 {u: feats[u] for u in part if u in feats}, k, as_of, rules)

        results = list(ActorPool(actors).map(submit, parts))
        for a in actors:
            ray.kill(a)
    df = pl.concat([r[0] for r in results]) if results else pl.DataFrame(schema=OUT_SCHEMA)
    write_parquet(df, out)
    fallback = sum(r[1] for r in results)
    log.debug("recommend on Ray: %d users in %d partitions on %d actors", len(users), len(parts), n)
    return BatchResult(Path(out), len(users), df.height, fallback, versions, time.perf_counter() - t0)
