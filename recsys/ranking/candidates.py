"""Candidate sources for the ranker: the registered two-tower model, CLIP profiles, and EASE.

The two-tower and CLIP profiles present the `CandidateSource` shape (`recsys.ranking.dataset`):
item vectors aligned to ItemTable rows and a `user_vectors(user_ids, history, user_features)`
that embeds users from their recent clicks. The ranker's training (hard negatives,
`tt_score`/`tt_rank`) and the `Recommender` (stage 1) use the same object, so both see the same scores.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from recsys.config import Settings
from recsys.data import columns as C
from recsys.ranking.features import ItemTable, user_profiles
from recsys.retrieval.ease import EaseModel

if TYPE_CHECKING:
    from recsys.ranking.dataset import CandidateSource
    from recsys.retrieval.artifact import RetrievalModel
    from recsys.retrieval.index import ItemIndex

CLIP_PROFILE = "clip-profile"
USER_PREFIX = "user_behaviour__"  # Feast's full feature names of the user view
log = logging.getLogger(__name__)


class ClipProfileSource:
    """Content-based retrieval: the user's mean recent-click CLIP vector against item vectors.

    Needs no training; used where no two-tower is registered (`retrieval_uri="clip-profile"`).
    """

    wants_user_features = False
    index = None  # no index of its own: the recommender builds one over `item_vectors` when needed

    def __init__(self, items: ItemTable):
        if not items.emb.shape[1]:
            raise FileNotFoundError("clip-profile retrieval needs the item_embeddings table "
                                    "(`recsys backfill`)")
        self.version = CLIP_PROFILE
        self.item_rows = np.flatnonzero(items.has_emb)
        self.item_vectors = items.emb[self.item_rows]
        self._items = items

    def user_vectors(self, user_ids: Sequence[str], history: np.ndarray,
                     user_features: pl.DataFrame | None = None) -> np.ndarray:
        return user_profiles(history, self._items).clip


class TwoTowerSource:
    """The registered two-tower model (`recsys.retrieval`) seen as a candidate source."""

    wants_user_features = True

    def __init__(self, model: RetrievalModel, items: ItemTable, version: str):
        self.model = model
        self.version = version
        ids = [str(i) for i in model.item_ids]
        rows = items.rows(ids)
        ok = rows >= 0
        self.item_rows = rows[ok]
        self.item_vectors = np.asarray(model.item_vectors, np.float32)[ok]
        self.index: ItemIndex | None = model.index  # over the items the model was trained with
        self.new_items = 0
        self._items = items

    def with_new_items(self, catalogue: pl.DataFrame, embeddings: pl.DataFrame | None) -> TwoTowerSource:
        """This source plus vectors for the items of `catalogue` (the items table) that the model
        was trained without (imported, and usually backfilled, later): the model's item tower over
        their content and CLIP vectors in `embeddings` (`recsys.retrieval.cold`), as it scores its
        own cold items. Without them such an item is never a stage-1 candidate, not even under a
        category filter. The result has no `index` (the model's own lacks the new items), so the
        recommender searches its vectors exactly, or builds an IVF over them at
        `retrieval.exact_below` items. Itself when the model has a vector for every item."""
        known = np.zeros(len(self._items), bool)
        known[self.item_rows] = True
        new_ids = [str(i) for i in self._items.ids[~known]]
        if not new_ids:
            return self
        from recsys.retrieval.cold import cold_item_vectors  # torch: only when there are new items

        wanted = pl.col(C.ITEM_ID).is_in(new_ids)
        if embeddings is None:
            embeddings = pl.DataFrame(schema={C.ITEM_ID: pl.String, C.EMBEDDING: pl.List(pl.Float32)})
        ids, vectors = cold_item_vectors(self.model, catalogue.filter(wanted), embeddings.filter(wanted))
        out = copy.copy(self)
        out.item_rows = np.concatenate([self.item_rows, self._items.rows(ids)])
        out.item_vectors = np.vstack([self.item_vectors, vectors]).astype(np.float32, copy=False)
        out.index = None
        out.new_items = len(ids)
        return out

    def user_vectors(self, user_ids: Sequence[str], history: np.ndarray,
                     user_features: pl.DataFrame | None = None) -> np.ndarray:
        ids = self._items.ids
        # most recent first, as the two-tower was trained
        hist = [[str(ids[r]) for r in row[::-1] if r >= 0] for row in np.asarray(history)]
        feats = None
        if user_features is not None and user_features.height == len(user_ids):
            # the scaler may know the features with or without the view prefix: offer both
            feats = [{**row, **{f"{USER_PREFIX}{k}": v for k, v in row.items()}}
                     for row in user_features.iter_rows(named=True)]
        return np.asarray(self.model.user_vectors(list(user_ids), hist, feats), np.float32)


class UserTower:
    """The two-tower model's user tower in numpy for one user per request: the same inputs
    (hashed user id, mean CLIP vector of the recent clicks, standardised behaviour features), the
    same float32 MLP, without torch's per-call overhead and the polars frame the model's
    `user_vectors` takes (~0.3 ms of a request's CPU). Built only when it reproduces the model's
    `user_vectors` on probe users at load (to 1e-5; float32 sums in another order differ by
    ~1e-7); otherwise `of` returns None and the model's own code runs."""

    def __init__(self, source: TwoTowerSource, items: ItemTable):
        from torch import nn

        from recsys.retrieval.model import user_bucket

        model = source.model
        net = model.net
        first, relu, second = net.user_mlp
        if not (isinstance(first, nn.Linear) and isinstance(relu, nn.ReLU) and isinstance(second, nn.Linear)):
            raise TypeError("the user tower is not Linear-ReLU-Linear")
        self._bucket = user_bucket
        self.buckets = net.spec.user_buckets
        self.id_vectors = net.user_id.weight.detach().numpy()  # views of the model's tensors
        self.clip = net.item_clip.detach().numpy()
        self.w1 = np.ascontiguousarray(first.weight.detach().numpy().T)
        self.b1 = first.bias.detach().numpy()
        self.w2 = np.ascontiguousarray(second.weight.detach().numpy().T)
        self.b2 = second.bias.detach().numpy()
        self.n_features = net.spec.n_user_features
        self.scaler = model.scaler
        self.history = model.history
        # ItemTable row -> the model's 1-based item index (0: not in the model)
        self.index = np.zeros(len(items), np.int64)
        pos = model.encoding.index
        rows = items.rows([str(i) for i in pos])
        ok = rows >= 0
        self.index[rows[ok]] = np.fromiter(pos.values(), np.int64, count=len(pos))[ok]
        if len(self.scaler.names) != self.n_features:
            raise ValueError("the scaler's features do not match the tower's input")

    @classmethod
    def of(cls, retrieval: CandidateSource, items: ItemTable) -> UserTower | None:
        """The numpy tower of a two-tower candidate source, checked against it; None for other
        sources or on any mismatch."""
        if not isinstance(retrieval, TwoTowerSource):
            return None
        try:
            tower = cls(retrieval, items)
            if tower.check(retrieval, items) > 1e-5:
                log.warning("numpy user tower differs from the model's; using the model's")
                return None
        except Exception as exc:  # an architecture this copy does not know: the model's code serves
            log.info("numpy user tower not used: %s: %s", type(exc).__name__, exc)
            return None
        return tower

    def vector(self, user_id: str, history: np.ndarray, features: Mapping[str, Any]) -> np.ndarray:
        """(dim,) float32 user vector. `history`: ItemTable rows of recent clicks, most recent
        last, -1 pads; `features`: the user's scalar behaviour features (with or without the
        view prefix; what the scaler does not know is ignored, what it misses counts as average)."""
        rows = history[history >= 0][::-1]  # most recent first, as the model was trained
        idx = self.index[rows]
        idx = idx[idx > 0][:self.history]
        pooled = self.clip[idx].sum(axis=0) / max(len(idx), 1) if len(idx) else \
            np.zeros(self.clip.shape[1], np.float32)
        parts = [self.id_vectors[self._bucket(user_id, self.buckets)], pooled]
        if self.n_features:
            row = {**features, **{f"{USER_PREFIX}{k}": v for k, v in features.items()}}
            x = np.full((1, self.n_features), np.nan)
            for j, name in enumerate(self.scaler.names):
                value = row.get(name)
                if isinstance(value, int | float | np.integer | np.floating | np.bool_):
                    x[0, j] = float(value)
            parts.append(self.scaler._scale(x)[0])
        h = np.concatenate(parts).astype(np.float32, copy=False) @ self.w1 + self.b1
        np.maximum(h, 0, out=h)
        out = h @ self.w2 + self.b2
        return out / max(float(np.linalg.norm(out)), 1e-12)

    def check(self, retrieval: TwoTowerSource, items: ItemTable, probes: int = 8) -> float:
        """Largest difference from `retrieval.user_vectors` over probe users (random ids, recent
        clicks and feature values)."""
        rng = np.random.default_rng(0)
        known = np.flatnonzero(self.index > 0)
        worst = 0.0
        for p in range(probes):
            hist = np.full((1, 20), -1, np.int64)
            if len(known) and p:
                picks = rng.choice(known, min(p * 3, 20, len(known)))
                hist[0, -len(picks):] = picks
            feats = {n.removeprefix(USER_PREFIX): float(rng.normal()) for n in self.scaler.names[:p]}
            uf = pl.DataFrame([feats]) if feats else None
            want = np.asarray(retrieval.user_vectors([f"probe-{p}"], hist, uf)[0], np.float32)
            worst = max(worst, float(np.abs(self.vector(f"probe-{p}", hist[0], feats) - want).max()))
        return worst


class EaseSource:
    """A registered EASE model (`recsys.retrieval.ease`) over the rows of an `ItemTable`."""

    def __init__(self, model: EaseModel, items: ItemTable, version: str):
        rows = items.rows([str(i) for i in model.item_ids])
        ok = rows >= 0
        self.version = version
        self.lam = model.lam
        self.item_rows = rows[ok]
        # (n_e, n_e) B over the items in the table, and ItemTable row -> its column (-1: not in B)
        self.weights = model.weights if ok.all() else np.ascontiguousarray(model.weights[np.ix_(ok, ok)])
        self.column = np.full(len(items), -1, np.int64)
        self.column[self.item_rows] = np.arange(len(self.item_rows))
        self._n_items = len(items)
        self.item_popularity = np.full(len(items), np.nan, np.float32)  # share of users who clicked it
        self.item_popularity[self.item_rows] = model.item_clicks[ok] / max(model.users, 1)

    def weight_from(self, seen: np.ndarray, row: int) -> tuple[int, float] | None:
        """The seen ItemTable row with the largest EASE weight towards `row`, and that weight
        (None when `row` or every seen row is outside the model): why EASE ranks `row`."""
        col = self.column[row]
        cols = self.column[np.asarray(seen, np.int64)]
        ok = cols >= 0
        if col < 0 or not ok.any():
            return None
        w = self.weights[cols[ok], col]
        best = int(np.argmax(w))
        return int(np.asarray(seen)[ok][best]), float(w[best])

    def scores(self, seen: Sequence[np.ndarray]) -> np.ndarray:
        """(M, N) float32 scores x_u B over ItemTable rows from each user's known item rows;
        NaN for items outside the model."""
        out = np.full((len(seen), self._n_items), np.nan, np.float32)
        for r, rows in enumerate(seen):
            cols = self.column[np.asarray(rows, np.int64)]
            cols = np.unique(cols[cols >= 0])
            out[r, self.item_rows] = self.weights[cols].sum(axis=0) if len(cols) else 0.0
        return out


def top_rows(scores: np.ndarray, n: int) -> np.ndarray:
    """Rows of the `n` best finite scores of a (N,) vector, best first (ties: lower row)."""
    finite = np.flatnonzero(np.isfinite(scores))
    n = min(n, len(finite))
    if n == 0:
        return np.zeros(0, np.int64)
    s = scores[finite]
    top = np.argpartition(-s, n - 1)[:n] if n < len(s) else np.arange(len(s))
    top = top[np.lexsort((finite[top], -s[top]))]
    return finite[top]


def merge_candidates(lists: Sequence[np.ndarray], cap: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Union of several best-first candidate lists (first list's order first, then new rows of
    the next) and each candidate's rank in every list (`cap` where it is not in that list)."""
    seen: dict[int, None] = {}
    for rows in lists:
        seen.update(dict.fromkeys(np.asarray(rows, np.int64).tolist()))
    union = np.fromiter(seen, np.int64, count=len(seen))
    ranks = []
    for rows in lists:
        rank = np.full(len(union), float(cap), np.float32)
        pos = {r: i for i, r in enumerate(np.asarray(rows).tolist())}
        for j, r in enumerate(union.tolist()):
            if r in pos:
                rank[j] = pos[r]
        ranks.append(rank)
    return union, ranks


def load_ease_source(settings: Settings, uri: str, items: ItemTable) -> EaseSource:
    """A registered EASE model (`models:/ease@champion`, `.../3`) as a candidate source."""
    from recsys import tracking

    folder, ref = tracking.download_model(settings, uri)
    return EaseSource(EaseModel.load(folder), items, ref.tag)


def load_candidate_source(settings: Settings, uri: str,
                          items: ItemTable) -> ClipProfileSource | TwoTowerSource:
    """`clip-profile`, or a registered retrieval model (`models:/retrieval@champion`, `.../3`)."""
    if uri == CLIP_PROFILE:
        return ClipProfileSource(items)
    from recsys import tracking
    from recsys.retrieval.artifact import RetrievalModel

    folder, ref = tracking.download_model(settings, uri)
    return TwoTowerSource(RetrievalModel.load(folder), items, ref.tag)
