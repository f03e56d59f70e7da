"""Top-K ranking metrics on full rankings, one value per user (so callers can bootstrap them).

Conventions follow RecBole so that figures compare with published ml-100k numbers:

- `ranked` is an int array (U, K) of item indices, best first; -1 pads short lists.
- a user's relevant items are given as pairs (`truth_rows`, `truth_items`): row of `ranked`
  and item index; items the user saw in training are excluded *before* ranking (see
  `top_k`), so they can neither be hits nor take a slot.

With hits h_i in {0, 1} at rank i (1-based) and R = number of relevant items of the user:

- Recall@K   = sum_{i<=K} h_i / R
- HitRate@K  = 1[sum_{i<=K} h_i > 0]
- NDCG@K     = sum_{i<=K} h_i / log2(i + 1)  /  sum_{i<=min(R, K)} 1 / log2(i + 1)
- MRR@K      = 1 / (rank of the first hit), 0 when no hit within K
- MAP@K      = sum_{i<=K} h_i * Precision@i / min(R, K)
- Precision@K = sum_{i<=K} h_i / K

Users with no relevant item get NaN (they carry no signal); `summarize` skips them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

import numpy as np

METRICS = ("recall", "ndcg", "hit", "mrr", "map", "precision")


def _check_ranked(ranked: np.ndarray) -> np.ndarray:
    ranked = np.asarray(ranked)
    if ranked.ndim != 2:
        raise ValueError(f"ranked must be a 2-d array (users, K), got shape {ranked.shape}")
    if not np.issubdtype(ranked.dtype, np.integer):
        raise ValueError(f"ranked must hold integer item indices, got dtype {ranked.dtype}")
    return ranked


def hit_matrix(ranked: np.ndarray, truth_rows: np.ndarray, truth_items: np.ndarray) -> np.ndarray:
    """Bool (U, K): whether `ranked[u, i]` is one of user u's relevant items.

    Vectorised through one sorted membership test on the keys row * n + item.
    """
    ranked = _check_ranked(ranked)
    truth_rows = np.asarray(truth_rows, dtype=np.int64)
    truth_items = np.asarray(truth_items, dtype=np.int64)
    if truth_rows.shape != truth_items.shape:
        raise ValueError("truth_rows and truth_items must have the same length")
    if truth_rows.size and (truth_rows.min() < 0 or truth_rows.max() >= ranked.shape[0]):
        raise ValueError("truth_rows must index rows of ranked")
    n = int(max(ranked.max(initial=0), truth_items.max(initial=0))) + 2
    rows = np.arange(ranked.shape[0], dtype=np.int64)[:, None]
    keys = rows * n + ranked.astype(np.int64)
    truth_keys = truth_rows * n + truth_items
    hits = np.isin(keys, truth_keys)
    hits &= ranked >= 0
    return hits


def relevant_counts(n_users: int, truth_rows: np.ndarray, truth_items: np.ndarray) -> np.ndarray:
    """Number of distinct relevant items per user (duplicated pairs count once)."""
    truth_rows = np.asarray(truth_rows, dtype=np.int64)
    truth_items = np.asarray(truth_items, dtype=np.int64)
    if truth_rows.size == 0:
        return np.zeros(n_users, dtype=np.int64)
    pairs = np.unique(np.stack([truth_rows, truth_items], axis=1), axis=0)
    return np.bincount(pairs[:, 0], minlength=n_users)


def metrics_from_hits(hits: np.ndarray, n_relevant: np.ndarray, ks: Iterable[int] = (10,),
                      metrics: Sequence[str] = METRICS) -> dict[str, np.ndarray]:
    """Per-user arrays `{"recall@10": (U,), ...}` from a hit matrix and relevant counts."""
    hits = np.asarray(hits, dtype=bool)
    n_relevant = np.asarray(n_relevant, dtype=np.float64)
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; expected some of {METRICS}")
    n_users, width = hits.shape
    valid = n_relevant > 0
    h = hits.astype(np.float64)
    ranks = np.arange(1, width + 1, dtype=np.float64)
    discounts = 1.0 / np.log2(ranks + 1.0)
    cum_hits = np.cumsum(h, axis=1)
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])
    out: dict[str, np.ndarray] = {}
    for k in ks:
        if k < 1 or k > width:
            raise ValueError(f"k={k} must be within 1..{width} (the width of the ranking)")
        hk = h[:, :k]
        n_hits = cum_hits[:, k - 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            values: dict[str, np.ndarray] = {}
            if "recall" in metrics:
                values["recall"] = n_hits / n_relevant
            if "hit" in metrics:
                values["hit"] = (n_hits > 0).astype(np.float64)
            if "precision" in metrics:
                values["precision"] = n_hits / k
            if "ndcg" in metrics:
                dcg = hk @ discounts[:k]
                idcg = ideal[np.minimum(n_relevant, k).astype(np.int64)]
                values["ndcg"] = dcg / idcg
            if "mrr" in metrics:
                first = np.argmax(hk, axis=1)
                values["mrr"] = np.where(n_hits > 0, 1.0 / (first + 1.0), 0.0)
            if "map" in metrics:
                precision_at_i = cum_hits[:, :k] / ranks[:k]
                values["map"] = (hk * precision_at_i).sum(axis=1) / np.minimum(n_relevant, k)
        for name in metrics:
            out[f"{name}@{k}"] = np.where(valid, values[name], np.nan)
    return out


def ranking_metrics(ranked: np.ndarray, truth_rows: np.ndarray, truth_items: np.ndarray,
                    ks: Iterable[int] = (10,), metrics: Sequence[str] = METRICS) -> dict[str, np.ndarray]:
    """Per-user metrics of a ranking (U, K) against relevant (row, item) pairs."""
    ranked = _check_ranked(ranked)
    hits = hit_matrix(ranked, truth_rows, truth_items)
    n_rel = relevant_counts(ranked.shape[0], truth_rows, truth_items)
    return metrics_from_hits(hits, n_rel, ks, metrics)


def ranking_metrics_from_sets(ranked: Sequence[Sequence[str]], relevant: Sequence[Collection[str]],
                              ks: Iterable[int] = (10,),
                              metrics: Sequence[str] = METRICS) -> dict[str, np.ndarray]:
    """The same metrics on lists of item ids (str) and one relevant set per user.

    Convenient for callers holding ids rather than indices (the ranker, offline A/B).
    """
    if len(ranked) != len(relevant):
        raise ValueError(f"{len(ranked)} rankings but {len(relevant)} relevant sets")
    vocab: dict[str, int] = {}
    width = max((len(r) for r in ranked), default=0)
    ks = list(ks)
    width = max(width, max(ks, default=1))
    mat = np.full((len(ranked), width), -1, dtype=np.int64)
    for u, items in enumerate(ranked):
        for i, item in enumerate(items):
            mat[u, i] = vocab.setdefault(item, len(vocab))
    rows, cols = [], []
    for u, rel in enumerate(relevant):
        for item in set(rel):
            rows.append(u)
            cols.append(vocab.setdefault(item, len(vocab)))
    return ranking_metrics(mat, np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64), ks, metrics)


def top_k(scores: np.ndarray, k: int, exclude_rows: np.ndarray | None = None,
          exclude_items: np.ndarray | None = None, candidates: np.ndarray | None = None) -> np.ndarray:
    """Indices (U, k) of the k best-scoring items per row, best first.

    `exclude_rows`/`exclude_items` are (row, item) pairs that must not be ranked (items seen in
    training). `candidates`, a bool mask over items, restricts the ranking (e.g. cold items
    only). Deterministic: ties inside the top k break by lower item index. Slots beyond the
    number of rankable items hold -1.
    """
    scores = np.array(scores, dtype=np.float64, copy=True)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (users, items), got shape {scores.shape}")
    n_users, n_items = scores.shape
    if candidates is not None:
        scores[:, ~np.asarray(candidates, dtype=bool)] = -np.inf
    if exclude_rows is not None and exclude_items is not None and len(exclude_rows):
        scores[np.asarray(exclude_rows), np.asarray(exclude_items)] = -np.inf
    k_eff = min(k, n_items)
    # top-k by argpartition, then a lexsort over (-score, index) of those k
    part = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff] if k_eff < n_items else \
        np.tile(np.arange(n_items), (n_users, 1))
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    ranked = np.take_along_axis(part, order, axis=1)
    ranked_scores = np.take_along_axis(part_scores, order, axis=1)
    ranked = np.where(np.isfinite(ranked_scores), ranked, -1)
    if k > k_eff:
        ranked = np.pad(ranked, ((0, 0), (0, k - k_eff)), constant_values=-1)
    return ranked.astype(np.int64)


def summarize(per_user: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Mean over users with at least one relevant item (NaN rows skipped)."""
    out = {}
    for name, values in per_user.items():
        values = np.asarray(values, dtype=np.float64)
        finite = values[~np.isnan(values)]
        out[name] = float(finite.mean()) if finite.size else float("nan")
    return out
