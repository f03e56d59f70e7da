"""Beyond accuracy: catalogue coverage, novelty and intra-list diversity of top-K lists.

Inputs are integer item indices `ranked` (U, K), -1 padding, as in `recsys.evaluation.metrics`.

- coverage@K  = |union of the lists| / |catalogue|            (catalogue-level, one number)
- novelty@K   = mean over a list of -log2 p(i), p(i) = (clicks_i + 1) / (clicks + n_items)
                (mean self-information; Zhou et al. 2010, PNAS)           per user (U,)
- ILD@K       = mean over pairs i != j in the list of (1 - cos(e_i, e_j)), e = CLIP item vectors
                (intra-list diversity; Ziegler et al. 2005)                per user (U,)

Coverage under the bootstrap: item i is covered in replicate b when sum_u W[b, u] A[u, i] > 0
with A the (U, n_items) list incidence, one sparse product per weight block.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse


def incidence(ranked: np.ndarray, n_items: int) -> sparse.csr_matrix:
    """Sparse (U, n_items) 0/1 matrix: whether item i is in user u's list."""
    ranked = np.asarray(ranked)
    rows = np.broadcast_to(np.arange(ranked.shape[0])[:, None], ranked.shape)
    valid = ranked >= 0
    data = np.ones(int(valid.sum()), dtype=np.float32)
    mat = sparse.csr_matrix((data, (rows[valid], ranked[valid])), shape=(ranked.shape[0], n_items))
    mat.data[:] = 1.0  # duplicates within a list count once
    return mat


def coverage(ranked: np.ndarray, n_items: int, items: np.ndarray | None = None) -> float:
    """Share of the catalogue (or of the item subset `items`, a bool mask) in at least one list."""
    ranked = np.asarray(ranked)
    shown = np.zeros(n_items, dtype=bool)
    shown[ranked[ranked >= 0]] = True
    if items is None:
        return float(shown.mean()) if n_items else float("nan")
    items = np.asarray(items, dtype=bool)
    return float(shown[items].mean()) if items.any() else float("nan")


def coverage_replicates(
    inc: sparse.csr_matrix, weights: np.ndarray, items: np.ndarray | None = None
) -> np.ndarray:
    """Coverage per bootstrap replicate: weights (b, U) -> (b,)."""
    counts = (inc.T @ weights.T).T  # (b, n_items)
    covered = counts > 0
    if items is not None:
        covered = covered[:, np.asarray(items, dtype=bool)]
    return covered.mean(axis=1)


def exposure_share(ranked: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Per user (U,): share of filled slots that hold items of a segment (bool mask over items)."""
    ranked = np.asarray(ranked)
    valid = ranked >= 0
    inseg = np.asarray(items, dtype=bool)[np.maximum(ranked, 0)] & valid
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(valid.any(axis=1), inseg.sum(axis=1) / valid.sum(axis=1), np.nan)


def self_information(click_counts: np.ndarray) -> np.ndarray:
    """-log2 p(i) with add-one smoothing, (n_items,)."""
    counts = np.asarray(click_counts, dtype=np.float64)
    p = (counts + 1.0) / (counts.sum() + counts.size)
    return -np.log2(p)


def novelty(ranked: np.ndarray, click_counts: np.ndarray) -> np.ndarray:
    """Mean self-information of each user's list, (U,); NaN for an empty list."""
    ranked = np.asarray(ranked)
    info = self_information(click_counts)
    valid = ranked >= 0
    vals = np.where(valid, info[np.maximum(ranked, 0)], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(valid.any(axis=1), vals.sum(axis=1) / valid.sum(axis=1), np.nan)


def intra_list_diversity(
    ranked: np.ndarray, embeddings: np.ndarray, has_vector: np.ndarray | None = None
) -> np.ndarray:
    """Mean pairwise cosine distance within each list, (U,); NaN with fewer than two vectors.

    embeddings (n_items, d); rows need not be normalised. With s = sum of the list's unit
    vectors, sum_{i != j} cos = |s|^2 - n, so no (K, K) matrix per user is built.
    """
    ranked = np.asarray(ranked)
    emb = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    unit = np.divide(emb, norms, out=np.zeros_like(emb), where=norms > 0)
    valid = ranked >= 0
    if has_vector is not None:
        valid &= np.asarray(has_vector, dtype=bool)[np.maximum(ranked, 0)]
    n = valid.sum(axis=1).astype(np.float64)
    out = np.full(ranked.shape[0], np.nan)
    for start in range(0, ranked.shape[0], 8192):  # bound the (chunk, K, d) gather
        sl = slice(start, start + 8192)
        vec = unit[np.maximum(ranked[sl], 0)] * valid[sl][..., None]
        s = vec.sum(axis=1)
        pair_cos = (np.einsum("ud,ud->u", s, s) - n[sl]) / np.maximum(n[sl] * (n[sl] - 1), 1)
        out[sl] = np.where(n[sl] >= 2, 1.0 - pair_cos, np.nan)
    return out
