"""The ranker's training set for a click-only log, by stacking (pure: frames in, `Candidates` out).

A click-only log has no impressions, so there is nothing "shown but not clicked" to learn from.
Instead the ranker learns what the serving path will ask of it: to order the union of the
candidate sources' lists for a user. The log is split as the candidate models were trained
(`recsys.data.splits.candidate_split`): the candidate models see the `base` part, and the ranker
learns from the `labels` part, so the scores it sees on its positives are scores of pairs the
models never trained on, as at serving time (a model scoring its own training clicks would
teach the ranker to trust it far too much).

One query group per user with label clicks, as of the end of the base part. Candidates: the
two-tower's top `n_tt` and EASE's top `n_ease` (EASE fit on `base`), the user's base items
excluded; label 1 where the item is among the user's label clicks. Label clicks outside the
union cannot be ranked and are counted, not kept.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl

from recsys.data import columns as C
from recsys.ranking.candidates import EaseSource, merge_candidates, top_rows
from recsys.ranking.dataset import FEATURE_TS, Candidates, CandidateSource, TrainingDataError, click_history
from recsys.ranking.features import ItemTable


def stacked_candidates(base: pl.DataFrame, labels: pl.DataFrame, items: ItemTable, *,
                       source: CandidateSource | None, ease: EaseSource, history: int, n_tt: int,
                       n_ease: int, chunk: int = 512) -> Candidates:
    """Query groups (one per user of `labels` who has base clicks) with the union of the sources'
    candidates, their per-source scores and ranks, and labels from `labels`."""
    cols = [C.USER_ID, C.ITEM_ID, C.EVENT_TIMESTAMP]
    base = base.select(cols).with_columns(pl.lit(True).alias(C.CLICKED))
    as_of = base[C.EVENT_TIMESTAMP].max() + timedelta(microseconds=1)
    users = sorted(set(labels[C.USER_ID].to_list()) & set(base[C.USER_ID].to_list()))
    if not users:
        raise TrainingDataError("no user has clicks in both the base and the label part of the log: "
                                "the ranker has nothing to learn from")
    queries = pl.DataFrame({"q": np.arange(len(users), dtype=np.int64), C.REQUEST_ID: users,
                            C.USER_ID: users})
    queries = queries.with_columns(pl.lit(as_of).cast(pl.Datetime("us", "UTC")).alias(C.EVENT_TIMESTAMP),
                                   pl.lit(as_of).cast(pl.Datetime("us", "UTC")).alias(FEATURE_TS))
    hist = click_history(base, queries, items, history)
    seen = _rows_by_user(base, items, users)
    truth = _rows_by_user(labels, items, users)
    parts: list[dict[str, np.ndarray]] = []
    counts = {"label_clicks": int(sum(len(t) for t in truth)), "label_clicks_outside_candidates": 0}
    for s in range(0, len(users), chunk):
        e = min(s + chunk, len(users))
        tt = None
        if source is not None:
            vecs = np.zeros((len(items), source.item_vectors.shape[1]), np.float32)
            vecs[source.item_rows] = source.item_vectors
            present = np.zeros(len(items), bool)
            present[source.item_rows] = True
            tt = np.asarray(source.user_vectors(users[s:e], hist[s:e]), np.float32) @ vecs.T
            tt[:, ~present] = np.nan
        es = ease.scores(seen[s:e])
        for r in range(e - s):
            u = s + r
            blocked = np.zeros(len(items), bool)
            blocked[seen[u]] = True
            lists = [top_rows(np.where(blocked, np.nan, es[r]), n_ease)]
            if tt is not None:
                lists.insert(0, top_rows(np.where(blocked, np.nan, tt[r]), n_tt))
            union, ranks = merge_candidates(lists, max(n_tt, n_ease))
            label = np.isin(union, truth[u])
            counts["label_clicks_outside_candidates"] += int(len(np.setdiff1d(truth[u], union)))
            parts.append({
                "q": np.full(len(union), u, np.int64), "item_row": union, "label": label.astype(np.int32),
                "tt_score": tt[r, union] if tt is not None else np.full(len(union), np.nan, np.float32),
                "tt_rank": ranks[0] if tt is not None else np.full(len(union), np.nan, np.float32),
                "ease_score": es[r, union], "ease_rank": ranks[-1],
                "item_popularity": ease.item_popularity[union],
                "user_clicks": np.full(len(union), np.log1p(len(seen[u])), np.float32),
            })
    rows = pl.DataFrame({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    rows = rows.with_columns(pl.col("q").cast(pl.Int64), pl.col("label").cast(pl.Int32),
                             *(pl.col(c).cast(pl.Float32) for c in rows.columns
                               if c not in ("q", "item_row", "label")),
                             pl.lit(None, dtype=pl.Int32).alias(C.POSITION), pl.lit("union").alias("source"))
    id_col = pl.Series(C.ITEM_ID, list(items.ids), dtype=pl.String)
    rows = rows.with_columns(id_col.gather(rows["item_row"].to_numpy()).alias(C.ITEM_ID))
    stats = rows.group_by("q").agg(pl.col("label").sum().alias("pos"), pl.len().alias("n"))
    good = stats.filter((pl.col("pos") > 0) & (pl.col("pos") < pl.col("n")))["q"].sort()
    counts.update({"groups": len(users), "groups_used": good.len()})
    if good.len() == 0:
        raise TrainingDataError("no user's label clicks are among their candidates: nothing to rank")
    remap = pl.DataFrame({"q": good, "_new": np.arange(good.len(), dtype=np.int64)})
    rows = rows.join(remap, on="q").drop("q").rename({"_new": "q"}).sort("q", maintain_order=True)
    keep = good.to_numpy()
    queries = queries.filter(pl.col("q").is_in(good.implode())).with_columns(
        pl.Series("q", np.arange(good.len(), dtype=np.int64)))
    counts["rows"] = rows.height
    return Candidates(queries=queries, rows=rows, history=hist[keep], counts=counts)


def _rows_by_user(clicks: pl.DataFrame, items: ItemTable, users: list[str]) -> list[np.ndarray]:
    """Per user of `users`, the ItemTable rows of the distinct items they clicked in `clicks`."""
    pairs = clicks.select(C.USER_ID, C.ITEM_ID).unique()
    pairs = pairs.with_columns(pl.Series("_row", items.rows(pairs[C.ITEM_ID]))).filter(pl.col("_row") >= 0)
    grouped = dict(pairs.group_by(C.USER_ID).agg(pl.col("_row")).iter_rows())
    return [np.sort(np.asarray(grouped.get(u, []), np.int64)) for u in users]
