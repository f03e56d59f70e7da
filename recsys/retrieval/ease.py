"""EASE: a closed-form item-item model of the click matrix (Steck, WWW 2019, "Embarrassingly
Shallow Autoencoders for Sparse Data").

With X the (users, items) binary click matrix, G = XᵀX and P = (G + λI)⁻¹, the weights are

    B = I − P · diag(1 / diag(P)),   diag(B) = 0,

the ridge regression of every item's column on all the others with the self-weight forced to
zero. A user's scores are x_u B (x_u their (n,) click row): the summed weights from the items
they clicked. One hyper-parameter, λ, is chosen on a validation part (`choose_lambda`).

Cost: the inverse is O(n³) (a Cholesky factorisation and inverse, LAPACK `potrf` + `potri`,
in place) and memory about 8 n² bytes: G + λI in float32, turned into P and then B in the same
buffer, plus one n × n temporary (10k items: about 0.8 GB, 17 s on 2 threads in
benchmarks/ease.py). Catalogues past `max_items` keep the `max_items` most-clicked items in the
model (the others have no EASE score and reach users through the other candidate sources).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from scipy import sparse
from scipy.linalg import lapack

from recsys.data import columns as C
from recsys.io import write_json

WEIGHTS_FILE, META_FILE = "ease_weights.npy", "ease.json"


def click_matrix(clicks: pl.DataFrame, item_ids: Sequence[str],
                 users: Sequence[str] | None = None) -> tuple[sparse.csr_matrix, list[str]]:
    """(U, n) binary CSR of who clicked what (repeat clicks count once) and its row users.

    Columns follow `item_ids`; clicks on other items are ignored. `users` fixes the rows (users
    without clicks get empty rows); by default the users of `clicks`, sorted."""
    col = pl.DataFrame({C.ITEM_ID: list(item_ids), "_c": np.arange(len(item_ids), dtype=np.int64)},
                       schema={C.ITEM_ID: pl.String, "_c": pl.Int64})
    pairs = clicks.select(pl.col(C.USER_ID).cast(pl.String), pl.col(C.ITEM_ID).cast(pl.String))
    if users is not None:  # only their clicks: a few users' rows need no hash of the whole log's pairs
        pairs = pairs.filter(pl.col(C.USER_ID).is_in(pl.Series(list(users), dtype=pl.String).implode()))
    pairs = pairs.unique()
    pairs = pairs.join(col, on=C.ITEM_ID)
    if users is None:
        users = sorted(pairs[C.USER_ID].unique().to_list())
    row = pl.DataFrame({C.USER_ID: list(users), "_r": np.arange(len(users), dtype=np.int64)},
                       schema={C.USER_ID: pl.String, "_r": pl.Int64})
    pairs = pairs.join(row, on=C.USER_ID)
    r, c = pairs["_r"].to_numpy(), pairs["_c"].to_numpy()
    mat = sparse.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(len(users), len(item_ids)))
    return mat, list(users)


def ease_weights(x: sparse.spmatrix, lam: float) -> np.ndarray:
    """(n, n) float32 B of the module docstring from a (U, n) click matrix."""
    if lam <= 0:
        raise ValueError(f"EASE needs λ > 0, got {lam}")
    g = np.asarray((x.T @ x).toarray(), dtype=np.float32)
    g[np.diag_indices_from(g)] += lam
    return _weights_from_regularised_gram(g)


def _weights_from_regularised_gram(g: np.ndarray) -> np.ndarray:
    """B from G + λI (overwritten): P by Cholesky (G + λI is symmetric positive definite)."""
    c, info = lapack.spotrf(g, lower=False, overwrite_a=True, clean=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"Cholesky of XᵀX + λI failed (info {info}); increase λ")
    p, info = lapack.spotri(c, lower=False, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"inverse of XᵀX + λI failed (info {info})")
    _mirror_upper(p)  # potri fills the upper triangle only
    diag = np.diag(p).copy()
    p /= -diag[None, :]  # in place: B_ij = -P_ij / P_jj
    p[np.diag_indices_from(p)] = 0.0
    return np.ascontiguousarray(p, dtype=np.float32)


def _mirror_upper(p: np.ndarray, block: int = 1024) -> None:
    """Copy the upper triangle of `p` onto its lower one in place, a block of rows at a time (a
    whole `p + p.T` would need one more n × n buffer)."""
    n = p.shape[0]
    for i in range(0, n, block):
        e = min(i + block, n)
        p[i:e, :i] = p[:i, i:e].T
        d = p[i:e, i:e]
        lower = np.tril_indices(e - i, -1)
        d[lower] = d.T[lower]


@dataclass
class EaseModel:
    """EASE weights over `item_ids` (the model's columns), with each item's click count."""

    item_ids: list[str]
    weights: np.ndarray  # (n, n) float32, zero diagonal
    item_clicks: np.ndarray  # (n,) float32: users who clicked each item in the fitted data
    lam: float
    users: int  # users in the fitted data
    version: str = "ease"

    @classmethod
    def fit(cls, clicks: pl.DataFrame, lam: float, max_items: int = 10_000) -> EaseModel:
        """Fit on a click log (user_id, item_id) over its `max_items` most-clicked items."""
        items = top_items(clicks, max_items)
        x, _ = click_matrix(clicks, items)
        return cls(items, ease_weights(x, lam), np.asarray(x.sum(axis=0)).ravel().astype(np.float32), lam,
                   x.shape[0])

    def scores(self, x: sparse.spmatrix) -> np.ndarray:
        """(U, n) float32 scores x B of users' (U, n) click rows over `item_ids`."""
        return np.asarray(x @ self.weights, dtype=np.float32)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / WEIGHTS_FILE, self.weights)
        write_json({"item_ids": self.item_ids, "item_clicks": self.item_clicks.tolist(),
                    "lambda": self.lam, "users": self.users, "version": self.version}, folder / META_FILE)

    @classmethod
    def load(cls, folder: str | Path) -> EaseModel:
        folder = Path(folder)
        meta = json.loads((folder / META_FILE).read_text())
        weights = np.load(folder / WEIGHTS_FILE, mmap_mode="r")
        n = len(meta["item_ids"])
        if weights.shape != (n, n):
            raise ValueError(f"{folder / WEIGHTS_FILE}: weights of shape {weights.shape} do not match "
                             f"the {n} item ids of {META_FILE}")
        return cls(meta["item_ids"], np.asarray(weights), np.asarray(meta["item_clicks"], np.float32),
                   float(meta["lambda"]), int(meta["users"]), meta.get("version", "ease"))


def top_items(clicks: pl.DataFrame, max_items: int) -> list[str]:
    """The `max_items` items clicked by most users (ties by id), as sorted ids' order of counts."""
    counts = (clicks.select(C.USER_ID, C.ITEM_ID).unique().group_by(C.ITEM_ID).len()
              .sort(["len", C.ITEM_ID], descending=[True, False]).head(max_items))
    return counts[C.ITEM_ID].cast(pl.String).to_list()


def ndcg_of_scores(scores: np.ndarray, seen: sparse.csr_matrix, truth: sparse.csr_matrix,
                   k: int = 10) -> float:
    """Mean NDCG@k over users with truth, seen items excluded (the metric of
    `recsys.evaluation.metrics`, on a (U, n) score matrix and (U, n) seen/truth masks)."""
    from recsys.evaluation.metrics import ranking_metrics, top_k

    s_rows, s_items = seen.nonzero()
    ranked = top_k(np.asarray(scores, np.float64), k, s_rows, s_items)
    t_rows, t_items = truth.nonzero()
    per_user = ranking_metrics(ranked, t_rows, t_items, ks=(k,))
    vals = per_user[f"ndcg@{k}"]
    return float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")


SCORE_CELLS = 4_000_000  # (user, item) scores per chunk when ranking validation users


def _chunked_ndcg(x_users: sparse.csr_matrix, b: np.ndarray, truth: sparse.csr_matrix, k: int) -> float:
    """`ndcg_of_scores` of x B over users in chunks of ~`SCORE_CELLS` scores (a (U, n) score
    matrix for every validation user would follow the number of users)."""
    n_users, n = x_users.shape
    step = max(1, SCORE_CELLS // max(n, 1))
    if n_users <= step:
        return ndcg_of_scores(np.asarray(x_users @ b), x_users, truth, k)
    total, count = 0.0, 0
    for s in range(0, n_users, step):
        xs, ts = x_users[s:s + step], truth[s:s + step]
        users_with_truth = int((np.diff(ts.indptr) > 0).sum())
        if users_with_truth == 0:
            continue
        value = ndcg_of_scores(np.asarray(xs @ b), xs, ts, k)
        if np.isfinite(value):
            total += value * users_with_truth
            count += users_with_truth
    return total / count if count else float("nan")


def choose_lambda(train: pl.DataFrame, valid: pl.DataFrame, lambdas: Sequence[float], k: int = 10,
                  max_items: int = 10_000) -> tuple[float, dict[float, float]]:
    """λ with the best validation NDCG@k: fit on `train`, rank for `valid`'s users (their train
    clicks excluded). Returns (best λ, {λ: NDCG@k}). One Gram matrix serves every λ."""
    items = top_items(train, max_items)
    users = sorted(set(valid[C.USER_ID].cast(pl.String).to_list()))
    x_all, _ = click_matrix(train, items)
    x_users, _ = click_matrix(train, items, users)
    truth, _ = click_matrix(valid, items, users)
    truth = truth - truth.multiply(x_users)  # re-clicks of seen items can never be hits
    truth.eliminate_zeros()
    gram = np.asarray((x_all.T @ x_all).toarray(), dtype=np.float32)
    g = np.empty_like(gram)  # one working buffer for every λ
    table: dict[float, float] = {}
    for lam in lambdas:
        np.copyto(g, gram)
        g[np.diag_indices_from(g)] += lam
        b = _weights_from_regularised_gram(g)
        table[float(lam)] = _chunked_ndcg(x_users, b, truth.tocsr(), k)
    best = max(table, key=lambda lam: (np.nan_to_num(table[lam], nan=-1.0), -lam))
    return best, table
