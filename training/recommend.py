"""`recsys recommend`: top-K per user from the two-stage system as of a time, as parquet.

For e-mail campaigns, caches and offline metrics. Every user goes through
`Recommender.recommend`, the serving code path. As of `as_of`: item features are each item's
latest snapshot at or before it; a user's profile is their last clicks strictly before it;
every item the user clicked before it is excluded ("seen").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from recsys import memory
from recsys.config import Settings
from recsys.data import columns as C
from recsys.data import snapshots
from recsys.data.tables import load_table
from recsys.io import write_parquet
from recsys.progress import bar
from recsys.recommender import Recommender, latest_item_behaviour, user_state
from recsys.rules import Rules
from recsys.runtime import configure_threads
from recsys.workspace import Workspace

log = logging.getLogger(__name__)
OUT_SCHEMA = {C.USER_ID: pl.String, C.ITEM_ID: pl.String, "rank": pl.Int32, "score": pl.Float64,
              "reason": pl.String}


@dataclass
class BatchResult:
    out: Path
    users: int
    rows: int
    fallback_users: int
    versions: dict[str, str | None]
    seconds: float

    def summary(self) -> str:
        return (f"{self.rows:,} rows for {self.users:,} users ({self.fallback_users:,} popularity fallback) "
                f"-> {self.out} [{self.versions.get('ranker')}, {self.versions.get('retrieval')}]")


def read_users(path: Path) -> list[str]:
    """User ids from parquet/CSV with a `user_id` column, or a text file with one id per line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: users file not found")
    if path.suffix.lower() in (".parquet", ".csv"):
        parquet = path.suffix.lower() == ".parquet"
        df = pl.read_parquet(path) if parquet else pl.read_csv(path, infer_schema=False)
        if C.USER_ID not in df.columns:
            raise ValueError(f"{path}: expected a '{C.USER_ID}' column, found {df.columns}")
        return df[C.USER_ID].cast(pl.String).drop_nulls().unique(maintain_order=True).to_list()
    return list(dict.fromkeys(line.strip() for line in path.read_text().splitlines() if line.strip()))


def user_features_as_of(ws: Workspace, as_of: datetime) -> dict[str, dict[str, Any]]:
    """Each user's latest `user_behaviour` snapshot at or before `as_of` (empty without Feast sources)."""
    path = ws.feature_sources_dir / "user_behaviour.parquet"
    if not path.exists():
        return {}
    df = snapshots.latest_rows(path, C.USER_ID, as_of)
    return {r[C.USER_ID]: r for r in df.iter_rows(named=True)}


def batch_inputs(ws: Workspace, as_of: datetime | None,
                 users: list[str] | None) -> tuple[pl.DataFrame, datetime, list[str]]:
    """(click log, as_of, users) of a batch run: `as_of` defaults to just after the log's last
    event (every logged click is known; naive = UTC), `users` to the users table's (else the log's)."""
    log_df = load_table(ws, "impressions", columns=[C.USER_ID, C.ITEM_ID, C.EVENT_TIMESTAMP, C.CLICKED])
    if as_of is None:
        last = log_df[C.EVENT_TIMESTAMP].max()
        as_of = last + timedelta(microseconds=1) if last is not None else datetime.now(UTC)
    if as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=UTC)
    if users is None:
        if ws.table("users").exists():
            users = load_table(ws, "users", columns=[C.USER_ID])[C.USER_ID].to_list()
        else:
            users = log_df[C.USER_ID].unique(maintain_order=True).to_list()
    return log_df, as_of, users


def recommend_batch(settings: Settings, ws: Workspace, users: list[str] | None, k: int,
                    as_of: datetime | None,
                    out: Path, recommender: Recommender | None = None,
                    rules: Rules | None = None, say: Callable[[str], None] | None = None) -> BatchResult:
    """Write (user_id, item_id, rank, score, reason) parquet for `users` (None: every user).
    Before the models load, the memory plan (`recsys.memory`) goes to `say`; a plan above
    `memory_gib` stops the run."""
    configure_threads(settings.threads)
    t0 = time.perf_counter()
    log_df, as_of, users = batch_inputs(ws, as_of, users)
    if recommender is None:
        n_items = load_table(ws, "items", columns=[C.ITEM_ID]).height
        vectors = (load_table(ws, "item_embeddings", columns=[C.EMBEDDING]).estimated_size()
                   if ws.table("item_embeddings").exists() else 0)
        ease_items = min(n_items, settings.retrieval.ease_max_items) if settings.retrieval.ease else 0
        item_source = ws.feature_sources_dir / "item_behaviour.parquet"
        item_snapshots = (pl.scan_parquet(item_source).select(pl.len()).collect().item()
                          if item_source.exists() else 0)
        plan = memory.recommend(memory.budget_bytes(settings.memory_gib), log_bytes=log_df.estimated_size(),
                                log_rows=log_df.height, users=len(users),
                                item_bytes=3 * vectors + 600 * n_items, ease_items=ease_items, k=k,
                                item_snapshots=item_snapshots, compiled=settings.ranker.compile)
        (say or log.info)(plan.line())
        plan.check()
        item_f = latest_item_behaviour(item_source, as_of)
        recommender = Recommender.load(settings, item_features=item_f, as_of=as_of, log=log_df)
    rec = recommender
    state = user_state(log_df, as_of, rec.history)
    feats = user_features_as_of(ws, as_of)
    rows_u, rows_i, rows_r, rows_s, rows_why = [], [], [], [], []
    fallback = 0
    with bar("recommend", len(users), unit="users") as b:
        for u in users:
            hist, seen = state.get(u, ([], set()))
            r = rec.recommend(u, k, user_features=feats.get(u), as_of=as_of, history=hist, seen=seen,
                              rules=rules)
            rows_why.extend(r.reasons or [""] * len(r.items))
            fallback += r.fallback is not None
            for item, score, rank in r.items:
                rows_u.append(u)
                rows_i.append(item)
                rows_r.append(rank)
                rows_s.append(score)
            b.advance(1)
    df = pl.DataFrame({C.USER_ID: rows_u, C.ITEM_ID: rows_i, "rank": rows_r, "score": rows_s,
                       "reason": rows_why}, schema=OUT_SCHEMA)
    write_parquet(df, out)
    seconds = time.perf_counter() - t0
    return BatchResult(Path(out), len(users), df.height, fallback, dict(rec.versions), seconds)
