"""The ranker's training sets beside EASE, by stacking (pure: frames in, `Candidates` out).

`with_ease` adds EASE to a log of impressions (see its docstring); `stacked_candidates` builds the
whole training set of a click-only log:

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
from recsys.ranking.dataset import (
    FEATURE_TS,
    Candidates,
    CandidateSource,
    TrainingDataError,
    click_history,
    dense_vectors,
    known_items,
)
from recsys.ranking.features import ItemTable

_NONE = np.zeros(0, np.int64)


def stacked_candidates(base: pl.DataFrame, labels: pl.DataFrame, items: ItemTable, *,
                       source: CandidateSource | None, ease: EaseSource, history: int, n_tt: int,
                       n_ease: int, chunk: int = 512, max_groups: int | None = None,
                       seed: int = 0, max_cells: int = 20_000_000) -> Candidates:
    """Query groups (one per user of `labels` who has base clicks) with the union of the sources'
    candidates, their per-source scores and ranks, and labels from `labels`. With more users than
    `max_groups`, a seeded sample of `max_groups` of them (the training rows' memory budget,
    `ranker.max_rows`)."""
    cols = [C.USER_ID, C.ITEM_ID, C.EVENT_TIMESTAMP]
    base = base.select(cols).with_columns(pl.lit(True).alias(C.CLICKED))
    as_of = base[C.EVENT_TIMESTAMP].max() + timedelta(microseconds=1)
    users = sorted(set(labels[C.USER_ID].to_list()) & set(base[C.USER_ID].to_list()))
    if not users:
        raise TrainingDataError("no user has clicks in both the base and the label part of the log: "
                                "the ranker has nothing to learn from")
    sampled_from = len(users)
    if max_groups is not None and len(users) > max_groups:
        pick = np.random.default_rng(seed).choice(len(users), size=max_groups, replace=False)
        users = [users[i] for i in np.sort(pick)]
    queries = pl.DataFrame({"q": np.arange(len(users), dtype=np.int64), C.REQUEST_ID: users,
                            C.USER_ID: users})
    queries = queries.with_columns(pl.lit(as_of).cast(pl.Datetime("us", "UTC")).alias(C.EVENT_TIMESTAMP),
                                   pl.lit(as_of).cast(pl.Datetime("us", "UTC")).alias(FEATURE_TS))
    hist = click_history(base, queries, items, history)
    seen_by, truth_by = known_items(base, items), known_items(labels, items)
    seen = [np.sort(seen_by.get(u, _NONE)) for u in users]
    truth = [np.sort(truth_by.get(u, _NONE)) for u in users]
    parts: list[dict[str, np.ndarray]] = []
    counts = {"label_clicks": int(sum(len(t) for t in truth)), "label_clicks_outside_candidates": 0}
    if source is not None:
        vecs, present = dense_vectors(source, len(items))
    chunk = max(1, min(chunk, max_cells // max(len(items), 1)))  # (users, items) score blocks bounded
    for s in range(0, len(users), chunk):
        e = min(s + chunk, len(users))
        tt = None
        if source is not None:
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
    counts.update({"groups": len(users), "groups_used": good.len(), "groups_before_sampling": sampled_from})
    if good.len() == 0:
        raise TrainingDataError("no user's label clicks are among their candidates: nothing to rank")
    remap = pl.DataFrame({"q": good, "_new": np.arange(good.len(), dtype=np.int64)})
    rows = rows.join(remap, on="q").drop("q").rename({"_new": "q"}).sort("q", maintain_order=True)
    keep = good.to_numpy()
    queries = queries.filter(pl.col("q").is_in(good.implode())).with_columns(
        pl.Series("q", np.arange(good.len(), dtype=np.int64)))
    counts["rows"] = rows.height
    return Candidates(queries=queries, rows=rows, history=hist[keep], counts=counts)


def with_ease(cands: Candidates, past: pl.DataFrame, items: ItemTable, ease: EaseSource,
              source: CandidateSource | None, *, n_ease: int, negatives: int, cap: int, seed: int = 0,
              max_cells: int = 20_000_000) -> Candidates:
    """The impressions path's EASE features (temporal stacking): `ease` was fit on clicks before
    the first query of `cands`; each query's user is x_u = every item they clicked before the
    query's day (`past`, all clicks), as serving sees them.

    Adds to every row `ease_score`, `ease_rank` (in EASE's top `n_ease` of items the user never
    clicked before, `cap` outside it), `item_popularity` and `user_clicks`; and per query up to
    `negatives` items drawn (seeded) from EASE's top `n_ease` that were not logged in the query and
    that the user never clicks: the ranker then also learns to order EASE's candidates, which
    serving unions with the two-tower's (their `tt_score`/`tt_rank` computed as for any item)."""
    rng = np.random.default_rng(seed)
    q = cands.queries.select("q", C.USER_ID, FEATURE_TS)
    clicks = past.filter(pl.col(C.CLICKED)).select(C.USER_ID, C.ITEM_ID, C.EVENT_TIMESTAMP)
    clicks = clicks.with_columns(pl.Series("item_row", items.rows(clicks[C.ITEM_ID]))).filter(
        pl.col("item_row") >= 0)
    before = (q.join(clicks, on=C.USER_ID).filter(pl.col(C.EVENT_TIMESTAMP) < pl.col(FEATURE_TS))
              .select("q", "item_row").unique())
    ever = q.join(clicks.select(C.USER_ID, "item_row").unique(), on=C.USER_ID).select("q", "item_row")
    m, n = q.height, len(items)
    seen = _by_query(before, m)
    avoid = _by_query(ever, m)
    rows = cands.rows
    rq, ri = rows["q"].to_numpy(), rows["item_row"].to_numpy()
    e_score = np.full(len(rq), np.nan, np.float32)
    e_rank = np.full(len(rq), float(cap), np.float32)
    vecs, present = dense_vectors(source, n) if source is not None else (None, None)
    order = np.argsort(rq, kind="stable")
    chunk = max(1, max_cells // max(n, 1))
    bounds = np.searchsorted(rq[order], np.arange(0, m + chunk, chunk))
    extra: list[dict[str, np.ndarray]] = []
    for c, s in enumerate(range(0, m, chunk)):
        e = min(s + chunk, m)
        scores = ease.scores(seen[s:e])
        sel = order[bounds[c]:bounds[c + 1]]
        e_score[sel] = scores[rq[sel] - s, ri[sel]]
        tt = None
        if source is not None:
            hist = cands.history[s:e]
            tt = np.asarray(source.user_vectors(cands.queries[C.USER_ID][s:e].to_list(), hist), np.float32) \
                @ vecs.T
            tt[:, ~present] = np.nan
        logged = {(int(a), int(b)) for a, b in zip(rq[sel], ri[sel], strict=True)}
        for r in range(e - s):
            qq = s + r
            masked = scores[r].copy()
            masked[seen[qq]] = np.nan
            top = top_rows(masked, n_ease)
            pos = {int(i): j for j, i in enumerate(top.tolist())}
            mine = sel[rq[sel] == qq]
            e_rank[mine] = [pos.get(int(i), cap) for i in ri[mine]]
            never = set(avoid[qq].tolist())
            free = [i for i in top.tolist() if (qq, i) not in logged and i not in never]
            if not free or not negatives:
                continue
            pick = np.asarray(rng.choice(free, size=min(negatives, len(free)), replace=False), np.int64)
            tt_rank = np.full(len(pick), np.nan, np.float32)
            tt_score = np.full(len(pick), np.nan, np.float32)
            if tt is not None:
                row = np.where(np.isfinite(tt[r]), tt[r], -np.inf)
                row[seen[qq]] = -np.inf
                tt_score = tt[r, pick]
                tt_rank = np.array([min(int((row > row[p]).sum()), cap) for p in pick], np.float32)
            extra.append({"q": np.full(len(pick), qq, np.int64), "item_row": pick,
                          "tt_score": tt_score, "tt_rank": tt_rank, "ease_score": scores[r, pick],
                          "ease_rank": np.array([pos[int(p)] for p in pick], np.float32)})
    rows = rows.with_columns(pl.Series("ease_score", e_score), pl.Series("ease_rank", e_rank))
    if extra:
        add = pl.DataFrame({k: np.concatenate([x[k] for x in extra]) for k in extra[0]})
        id_col = pl.Series(C.ITEM_ID, list(items.ids), dtype=pl.String)
        add = add.with_columns(pl.lit(0, dtype=pl.Int32).alias("label"), pl.lit(None, dtype=pl.Int32)
                               .alias(C.POSITION), pl.lit("ease").alias("source"),
                               id_col.gather(add["item_row"].to_numpy()).alias(C.ITEM_ID))
        rows = pl.concat([rows, add.select(rows.columns)], how="vertical_relaxed")
        rows = rows.unique(["q", "item_row"], keep="first", maintain_order=True)
    n_seen = np.array([len(s) for s in seen], np.float32)
    rows = rows.with_columns(
        pl.Series("item_popularity", ease.item_popularity[rows["item_row"].to_numpy()]),
        pl.Series("user_clicks", np.log1p(n_seen[rows["q"].to_numpy()])),
        pl.Series("_r", rng.permutation(rows.height)))
    rows = rows.sort(["q", "_r"]).drop("_r")
    counts = {**cands.counts, "ease_negatives": int(sum(len(x["q"]) for x in extra)), "rows": rows.height}
    return Candidates(queries=cands.queries, rows=rows, history=cands.history, counts=counts,
                      examination=cands.examination)


def _by_query(pairs: pl.DataFrame, m: int) -> list[np.ndarray]:
    """(q, item_row) pairs as a list of m row arrays."""
    grouped = dict(pairs.group_by("q").agg(pl.col("item_row")).iter_rows())
    return [np.asarray(grouped.get(i, []), np.int64) for i in range(m)]
