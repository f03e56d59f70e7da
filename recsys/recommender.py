"""The two-stage recommender that serving and batch recommendations share.

Stage 1: the two-tower user vector against the item vectors gives the top-N candidates, the
user's recent clicks and the caller's exclusions left out. Below `retrieval.exact_below` items
(and with a category filter) the search is exact; from there on an ANN index (the retrieval
model's own IVF/HNSW, or an IVF built at load) returns the top N + |excluded| and the excluded
are dropped; if that leaves fewer than N the request falls back to the exact search. At 100k
items IVF (nprobe 32, recall@100 0.994 in benchmarks/README.md) took stage 1 from 2.3 to 0.7 ms.
When the ranker was trained beside EASE, EASE's top `n_ease` (x_u B over every item the user
clicked, the known log held in memory since load) join the two-tower's list, and every
candidate carries its score and rank under both (`recsys.ranking.candidates.merge_candidates`).
The shop's rules (`recsys.rules`) mask the catalogue before stage 1 and cut the ranked list
after stage 2; items the user clicked are never recommended (`ranker.exclude_seen`).
Stage 2: `recsys.ranking.features.assemble` builds the candidates' features (the function
training used) from arrays prebuilt at load, and the LightGBM ranker orders them.
Users the system knows nothing about (no recent clicks, no behaviour features) get the
ranker's popularity list. Per-request work is numpy only: no polars or pandas on the hot path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys.config import Settings
from recsys.data import columns as C
from recsys.data import snapshots
from recsys.ranking.candidates import (
    USER_PREFIX,
    EaseSource,
    TwoTowerSource,
    UserTower,
    load_candidate_source,
    load_ease_source,
    merge_candidates,
    top_rows,
)
from recsys.ranking.dataset import CandidateSource, dense_vectors, known_items
from recsys.ranking.features import ItemTable, assemble, user_profiles
from recsys.ranking.model import RankerModel
from recsys.retrieval.index import ItemIndex
from recsys.rules import Rules, select

log = logging.getLogger(__name__)
ITEM_PREFIX = "item_behaviour__"
HISTORY_KEYS = ("last_clicked_items", f"{USER_PREFIX}last_clicked_items")
_NO_ROWS = np.zeros(0, np.int64)


@dataclass
class Recommendation:
    """Top-k for one user: (item_id, score, rank) best first, with versions and stage timings."""

    items: list[tuple[str, float, int]]
    versions: dict[str, str | None]
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    fallback: str | None = None  # "popularity" for users the system does not know
    candidates: int = 0
    reasons: list[str] = field(default_factory=list)  # one short reason per item


def _strip(features: Mapping[str, Any] | None, prefix: str) -> dict[str, Any]:
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in (features or {}).items()}


def latest_item_behaviour(path: Path, as_of: datetime | None = None) -> pl.DataFrame | None:
    """Each item's latest behaviour snapshot at or before `as_of` from the feature-view source."""
    return snapshots.latest_rows(path, C.ITEM_ID, as_of) if path.exists() else None


def user_state(log_df: pl.DataFrame, as_of: datetime, history: int) -> dict[str, tuple[list[str], set[str]]]:
    """Per user: last `history` clicks before `as_of` (oldest first) and every item clicked before it,
    i.e. the `history` and `exclude` of `Recommender.recommend` as of `as_of`. Rows with
    clicked = false are ignored (a log without the column is all clicks)."""
    if C.CLICKED in log_df.columns:
        log_df = log_df.filter(pl.col(C.CLICKED))
    clicks = (log_df.filter(pl.col(C.EVENT_TIMESTAMP) < as_of)
              .sort([C.USER_ID, C.EVENT_TIMESTAMP])
              .group_by(C.USER_ID, maintain_order=True).agg(pl.col(C.ITEM_ID)))
    return {u: (items[-history:], set(items)) for u, items in
            zip(clicks[C.USER_ID].to_list(), clicks[C.ITEM_ID].to_list(), strict=True)}


class Recommender:
    """Two-tower retrieval + LightGBM ranking over in-process item arrays; thread-safe reads."""

    # False: the reference forms of the request path's numpy shortcuts (the torch user tower, EASE
    # scores over the whole catalogue, per-item reasons), which the tests compare them against
    fast: bool = True

    def __init__(self, ranker: RankerModel, items: ItemTable, retrieval: CandidateSource | None = None,
                 versions: Mapping[str, str | None] | None = None, n_candidates: int = 300,
                 history: int = 20, exact_below: int | None = None, ease: EaseSource | None = None,
                 n_ease: int = 300, seen: Mapping[str, np.ndarray] | None = None,
                 exclude_seen: str = "all"):
        """`exact_below`: catalogues with at least this many retrievable items search an ANN
        index (the retrieval model's own when it is approximate, else an IVF built here);
        None keeps exact search at every size. `ease`: a second candidate source (its top
        `n_ease` join the two-tower's top `n_candidates`). `seen`: user -> ItemTable rows of
        every item they clicked (the known log), EASE's input and what `exclude_seen = all`
        keeps out."""
        self.ranker = ranker
        self.items = items
        self.retrieval = retrieval
        self.versions: dict[str, str | None] = dict(versions or {})
        self.n_candidates = n_candidates
        self.history = history
        self.ease = ease
        self.n_ease = n_ease
        self.seen_by_user: Mapping[str, np.ndarray] = seen or {}
        if exclude_seen not in ("all", "recent", "none"):
            raise ValueError(f"exclude_seen must be all, recent or none, got {exclude_seen!r}")
        self.exclude_seen = exclude_seen
        self.spec = ranker.spec
        rows = items.rows(ranker.popularity[C.ITEM_ID].to_list()) if ranker.popularity.height else \
            np.zeros(0, np.int64)
        ok = rows >= 0
        self._pop_rows = rows[ok]
        self._pop_scores = ranker.popularity["score"].to_numpy()[ok] if ranker.popularity.height else \
            np.zeros(0)
        self._vectors: np.ndarray | None = None
        self._present = np.zeros(len(items), bool)
        if retrieval is not None:
            self._vectors, self._present = dense_vectors(retrieval, len(items))
        self._n_present = int(self._present.sum())
        self._ann: ItemIndex | None = None
        self._ann_rows = np.zeros(0, np.int64)  # index position -> ItemTable row (-1: not in the table)
        if retrieval is not None:
            self._ann, self._ann_rows = _ann_index(retrieval, items, exact_below)
        # the request path's numpy forms of the two-tower's user tower and of EASE's scores (each
        # checked against the model's own code at load, else that code runs; `fast` = False: always)
        self._tower = UserTower.of(retrieval, items) if retrieval is not None else None
        self._ease_arrays = _ease_arrays(ease)
        self._ease_avail: tuple[np.ndarray | None, np.ndarray] | None = None

    # -- loading --------------------------------------------------------------------------
    @classmethod
    def load(cls, settings: Settings, ranker_uri: str | None = None, retrieval_uri: str | None = None,
             item_features: pl.DataFrame | None = None, as_of: datetime | None = None,
             log: pl.DataFrame | None = None) -> Recommender:
        """Load the ranker (default `models:/ranker@<ranker.model_alias>`), the two-tower it was
        trained with (or `retrieval_uri`), and the item arrays from the workspace.

        `item_features`: latest item-behaviour rows (e.g. the online store's item cache, columns
        with or without the `item_behaviour__` prefix); by default the feature-view source's
        latest snapshot at or before `as_of`. `log`: the click log the caller already holds
        (user_id, item_id, clicked, event_timestamp), for the users' known items; by default the
        workspace's impressions are read.
        """
        from recsys import tracking
        from recsys.data.tables import load_table
        from recsys.workspace import Workspace

        ws = Workspace.at(settings.home)
        ranker_uri = ranker_uri or f"models:/ranker@{settings.ranker.model_alias}"
        folder, ref = tracking.download_model(settings, ranker_uri)
        ranker = RankerModel.load(folder, ws.models_dir / "compiled" if settings.ranker.compile else None)
        emb = load_table(ws, "item_embeddings") if ws.table("item_embeddings").exists() else None
        catalogue = load_table(ws, "items")
        items = ItemTable.build(catalogue, emb, ranker.spec.categories)
        if item_features is None:
            item_features = latest_item_behaviour(ws.feature_sources_dir / "item_behaviour.parquet", as_of)
        items = items.with_behaviour(_strip_frame(item_features, ITEM_PREFIX), ranker.spec.item_behaviour)
        retrieval = None
        trained_with = ranker.meta.get("retrieval")
        uri = retrieval_uri
        if uri is None and trained_with:
            uri = _model_uri(trained_with)
        if uri:
            retrieval = load_candidate_source(settings, uri, items)
            if isinstance(retrieval, TwoTowerSource):
                retrieval = _with_new_items(retrieval, catalogue, emb)
        ease = None
        if ranker.meta.get("ease"):  # trained with EASE features: the EASE version it was trained beside
            ease = load_ease_source(settings, _model_uri(ranker.meta["ease"]), items)
        seen = None
        if settings.ranker.exclude_seen == "all" or ease is not None:
            if log is None:
                log = load_table(ws, "impressions",
                                 columns=[C.USER_ID, C.ITEM_ID, C.CLICKED, C.EVENT_TIMESTAMP])
            seen = known_items(log, items, as_of)
        versions = {"ranker": ref.tag, "retrieval": retrieval.version if retrieval else None}
        if ease is not None:
            versions["ease"] = ease.version
        return cls(ranker, items, retrieval, versions, n_candidates=settings.retrieval.candidates,
                   history=settings.ranker.history, exact_below=settings.retrieval.exact_below,
                   ease=ease, n_ease=settings.retrieval.ease_candidates, seen=seen,
                   exclude_seen=settings.ranker.exclude_seen)

    def set_available(self, item_ids: Sequence[str], available: bool) -> int:
        """Mark items in or out of stock (one atomic swap of the item table); returns how many
        of `item_ids` are in the catalogue."""
        rows = _rows(self.items, item_ids)
        mask = np.ones(len(self.items), bool) if self.items.available is None else self.items.available.copy()
        mask[rows] = available
        self.items = replace(self.items, available=mask)
        return len(rows)

    def refresh_item_features(self, item_features: pl.DataFrame | None) -> None:
        """Swap in new item-behaviour rows (after a materialization); one atomic assignment."""
        self.items = self.items.with_behaviour(_strip_frame(item_features, ITEM_PREFIX),
                                               self.spec.item_behaviour)

    # -- the request path -----------------------------------------------------------------
    def history_rows(self, user_features: Mapping[str, Any] | None,
                     history: Sequence[str] | None) -> np.ndarray:
        """(1, H) item rows of recent clicks, most recent last (Feast lists most recent first)."""
        if history is None:
            for key in HISTORY_KEYS:
                if user_features and user_features.get(key) is not None:
                    history = list(user_features[key])[::-1]
                    break
        out = np.full((1, self.history), -1, np.int64)
        if history:
            rows = self.items.rows(list(history)[-self.history:])
            rows = rows[rows >= 0]
            if len(rows):
                out[0, -len(rows):] = rows
        return out

    def recommend(self, user_id: str, k: int = 10, user_features: Mapping[str, Any] | None = None,
                  exclude: Collection[str] = (), category: str | None = None,
                  as_of: datetime | None = None, history: Sequence[str] | None = None,
                  seen: Collection[str] | None = None, rules: Rules | None = None) -> Recommendation:
        """Top-k items for a user. `user_features` is the online `user_behaviour` row (keys with
        or without the `user_behaviour__` prefix); `history` (recent clicks, oldest first)
        overrides its `last_clicked_items`; `seen` (every item the user clicked) overrides the
        known log held since load. What is never recommended follows `exclude_seen`: all seen
        items, the recent clicks only, or none; `exclude` always. `rules` (`recsys.rules`): the
        shop's filters, per-category caps and diversity; `category` is `rules.categories = {category}`."""
        t0 = time.perf_counter()
        rules = rules or Rules()
        if category is not None:
            rules = replace(rules, categories=frozenset({category}))
        exclude = set(exclude) | set(rules.exclude)
        as_of = as_of or datetime.now(UTC)
        feats = _strip(user_features, USER_PREFIX)
        hist = self.history_rows(feats, history)
        seen_rows = self.seen_by_user.get(user_id, _NO_ROWS) if seen is None else _rows(self.items, seen)
        bad = _rows(self.items, exclude)  # rows never recommended
        if self.exclude_seen == "all":
            bad = np.concatenate([bad, seen_rows, hist[hist >= 0]])
        elif self.exclude_seen == "recent":
            bad = np.concatenate([bad, hist[hist >= 0]])
        known = bool((hist >= 0).any()) or len(seen_rows) > 0 or any(
            v is not None for n, v in feats.items() if n in self.spec.user_behaviour)
        timings: dict[str, float] = {}
        if not known:
            return self._popular(k, self._allowed(bad, rules), timings, t0, "popularity", rules)
        # stage 1: retrieval (popularity order when the ranker was trained without a two-tower)
        t = time.perf_counter()
        top = tt_score = q = None
        if self.retrieval is not None:
            # only scalar numbers can be user-tower features (lists, text, None count as missing)
            wants = getattr(self.retrieval, "wants_user_features", False)
            scalars = {n: v for n, v in feats.items()
                       if isinstance(v, int | float | np.integer | np.floating | np.bool_)} if wants else {}
            if self._tower is not None and self.fast:
                q = self._tower.vector(user_id, hist[0], scalars)
            else:
                uf = pl.DataFrame([scalars]) if scalars else None
                q = self.retrieval.user_vectors([user_id], hist, uf)[0]
            if self._ann is not None and not rules.filters:
                top, tt_score = self._ann_candidates(q, bad)
        allowed = None
        if top is None:
            allowed = self._allowed(bad, rules)
            if self.retrieval is not None:
                scores = self._vectors @ q
                scores[~(allowed & self._present)] = -np.inf
            else:
                scores = np.full(len(self.items), -1.0)
                scores[self._pop_rows] = self._pop_scores
                scores[~allowed] = -np.inf
            n = int(min(self.n_candidates, int(np.isfinite(scores).sum())))
            top = top_rows(scores, n)
            tt_score = scores[top] if self.retrieval is not None else None
        sources: dict[str, np.ndarray] = {}
        tt_rank = np.arange(len(top), dtype=np.float32) if self.retrieval is not None else None
        if self.ease is not None:
            ease_in = seen_rows if len(seen_rows) else hist[hist >= 0]
            if self.fast:
                # over EASE's own items (its most clicked, ~10k) rather than the whole catalogue
                ease_top, ease_score = self._ease_top(ease_in, bad, rules)
            else:
                e = self.ease.scores([ease_in])[0]
                if allowed is None:
                    allowed = self._allowed(bad, rules)
                ease_top, ease_score = top_rows(np.where(allowed, e, np.nan), self.n_ease), e.__getitem__
            merge = merged if self.fast else merge_candidates
            top, (rank_a, ease_rank) = merge([top, ease_top], max(self.n_candidates, self.n_ease))
            if self.retrieval is not None:
                tt_score = self._vectors[top] @ q
                tt_score[~self._present[top]] = np.nan
                tt_rank = rank_a
            sources = {"ease_score": ease_score(top), "ease_rank": ease_rank,
                       "item_popularity": self.ease.item_popularity[top],
                       "user_clicks": np.full(len(top), np.log1p(len(np.unique(ease_in))), np.float32)}
        n = len(top)
        if n == 0:
            return self._popular(k, self._allowed(bad, rules), timings, t0, "no-candidates", rules)
        timings["retrieval"] = time.perf_counter() - t
        # stage 2: features + ranker
        t = time.perf_counter()
        ub = np.array([[_num(feats.get(name)) for name in self.spec.user_behaviour]], np.float32)
        prof = user_profiles(hist, self.items)
        ts = np.array([as_of.timestamp()])
        x = assemble(self.spec, self.items, top, np.zeros(n, np.int64), prof, ub, ts,
                     tt_score=tt_score, tt_rank=tt_rank, sources=sources)
        timings["features"] = time.perf_counter() - t
        t = time.perf_counter()
        s = self.ranker.predict(x)
        vectors = self.items.emb[top] if rules.diversity > 0 and self.items.emb.shape[1] else None
        order = select(s, self.items.shop_category[top], vectors, k, rules)
        timings["ranking"] = time.perf_counter() - t
        ids = self.items.ids
        out = [(str(ids[top[i]]), float(s[i]), r + 1) for r, i in enumerate(order)]
        if len(out) < k:  # per-category caps cut the candidates short: fill by popularity
            taken = self.items.shop_category[top[order]]
            out += self._popular(k, self._allowed(np.concatenate([bad, top[order]]), rules), {}, t0,
                                 "fill", rules, taken=taken).items[:k - len(out)]
            out = [(i, sc, r + 1) for r, (i, sc, _) in enumerate(out)]
        shown = top[order]  # rows of `out`, then those the fill added
        if len(out) > len(shown):
            shown = np.concatenate([shown, self.items.rows([i for i, _, _ in out[len(shown):]])])
        reasons = self.reasons(shown, hist, seen_rows)
        timings["total"] = time.perf_counter() - t0
        return Recommendation(out, dict(self.versions), timings, None, n, reasons)

    def reasons(self, rows: Sequence[int], hist: np.ndarray, seen_rows: np.ndarray) -> list[str]:
        """A short reason per recommended row: the clicked item that EASE weighs most towards it
        ("often clicked with <title>"), else the recent click closest by CLIP vector ("because you
        clicked <title>"), else "popular now"."""
        recent = hist[hist >= 0]
        if self.fast:
            return self._reasons(np.asarray(rows, np.int64), recent, seen_rows)
        out = []
        for row in rows:
            why = None
            if self.ease is not None and len(seen_rows):
                w = self.ease.weight_from(seen_rows, int(row))
                if w is not None and w[1] > 0:
                    why = f"often clicked with {self.items.title(w[0])}"
            if why is None and len(recent) and self.items.emb.shape[1] and self.items.has_emb[row]:
                sims = self.items.emb[recent] @ self.items.emb[row]
                why = f"because you clicked {self.items.title(int(recent[int(np.argmax(sims))]))}"
            out.append(why or "popular now")
        return out

    def _reasons(self, rows: np.ndarray, recent: np.ndarray, seen_rows: np.ndarray) -> list[str]:
        """`reasons` for all rows at once: one (seen, rows) block of EASE weights and one (recent,
        rows) block of cosines instead of a lookup per row (argmax picks the same first maximum)."""
        why: list[str | None] = [None] * len(rows)
        if self.ease is not None and len(seen_rows) and len(rows):
            weights, col, _, _ = self._ease_arrays
            seen_cols = col[np.asarray(seen_rows, np.int64)]
            ok = seen_cols >= 0
            row_cols = col[rows]
            inside = np.flatnonzero(row_cols >= 0)
            if ok.any() and len(inside):
                block = weights[np.ix_(seen_cols[ok], row_cols[inside])]  # (seen, rows)
                best = block.argmax(axis=0)
                from_rows = np.asarray(seen_rows, np.int64)[ok][best]
                for i, b, src in zip(inside.tolist(), block[best, np.arange(len(inside))].tolist(),
                                     from_rows.tolist(), strict=True):
                    if b > 0:
                        why[i] = f"often clicked with {self.items.title(src)}"
        left = [i for i, w in enumerate(why) if w is None]
        if left and len(recent) and self.items.emb.shape[1]:
            cand = rows[left]
            has = self.items.has_emb[cand]
            if has.any():
                sims = self.items.emb[recent] @ self.items.emb[cand[has]].T  # (recent, rows)
                closest = recent[sims.argmax(axis=0)]
                for i, src in zip(np.asarray(left)[has].tolist(), closest.tolist(), strict=True):
                    why[i] = f"because you clicked {self.items.title(src)}"
        return [w or "popular now" for w in why]

    def _ease_top(self, ease_in: np.ndarray, bad: np.ndarray,
                  rules: Rules) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
        """EASE's best `n_ease` allowed rows (best first, ties: lower row) and the EASE score of
        any rows (NaN outside the model): `top_rows` of `scores` masked by `_allowed`, computed
        over the model's items only (no catalogue-sized arrays; the same rows and scores)."""
        weights, col, by_row, item_rows = self._ease_arrays
        cols = col[np.asarray(ease_in, np.int64)]
        cols = np.unique(cols[cols >= 0])
        e = weights[cols].sum(axis=0) if len(cols) else np.zeros(weights.shape[1], weights.dtype)
        # in ItemTable row order, as `top_rows` meets them (the same pick among ties at the cut)
        s = e[by_row]
        ok = self._ease_available(item_rows).copy()
        bad_cols = col[bad]
        ok[np.searchsorted(item_rows, bad[bad_cols >= 0])] = False
        if rules.filters:
            ok &= rules.mask(self.items.shop_category[item_rows], self.items.shop_categories,
                             self.items.price[item_rows])

        def score(rows: np.ndarray) -> np.ndarray:
            c = col[rows]
            out = np.full(len(rows), np.nan, np.float32)
            inside = c >= 0
            out[inside] = e[c[inside]]
            return out

        # positions follow ItemTable rows, so `top_rows`' ties (lower position) are lower rows
        return item_rows[top_rows(np.where(ok, s, np.nan), self.n_ease)], score

    def _ease_available(self, item_rows: np.ndarray) -> np.ndarray:
        """`items.available` at EASE's items (ItemTable row order), kept until the table's
        availability array is swapped (`set_available`)."""
        available = self.items.available
        cached = self._ease_avail
        if cached is None or cached[0] is not available:
            cached = (available, np.ones(len(item_rows), bool) if available is None else available[item_rows])
            self._ease_avail = cached
        return cached[1]

    def _allowed(self, bad: np.ndarray, rules: Rules) -> np.ndarray:
        """(N,) bool: items that may be recommended (not in `bad`, within the rules' filters)."""
        allowed = np.ones(len(self.items), bool) if self.items.available is None else \
            self.items.available.copy()
        allowed[bad] = False
        if rules.filters:
            allowed &= rules.mask(self.items.shop_category, self.items.shop_categories, self.items.price)
        return allowed

    def _ann_candidates(self, q: np.ndarray, bad: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Top-N rows and scores from the ANN index, best first, `bad` rows left out; (None,
        None) when the index returned fewer than N allowed items though more exist (then the
        caller searches exactly)."""
        assert self._ann is not None
        want = min(self.n_candidates + len(bad), len(self._ann))
        pos, sc = self._ann.search_positions(q[None, :], want)
        pos, sc = pos[0], sc[0]
        rows = self._ann_rows[np.maximum(pos, 0)]
        ok = (pos >= 0) & (rows >= 0)
        if self.items.available is not None:
            ok &= self.items.available[np.maximum(rows, 0)]
        if len(bad):
            ok &= ~np.isin(rows, bad)
        rows, sc = rows[ok][:self.n_candidates], sc[ok][:self.n_candidates]
        available = self._n_present - int(self._present[np.unique(bad)].sum()) if len(bad) else \
            self._n_present
        if len(rows) < min(self.n_candidates, available) or not len(rows):
            return None, None
        return rows, sc

    def _popular(self, k: int, allowed: np.ndarray, timings: dict[str, float], t0: float, why: str,
                 rules: Rules | None = None, taken: np.ndarray | None = None) -> Recommendation:
        """The most clicked allowed items, at most `rules.max_per_category` per category counting
        the categories already `taken` (codes)."""
        ok = allowed[self._pop_rows]
        rows, scores = self._pop_rows[ok], self._pop_scores[ok]
        keep = select(scores, self.items.shop_category[rows], None, k, rules or Rules(), taken)
        rows, scores = rows[keep], scores[keep]
        ids = self.items.ids
        out = [(str(ids[r]), float(s), i + 1) for i, (r, s) in enumerate(zip(rows, scores, strict=True))]
        timings["total"] = time.perf_counter() - t0
        return Recommendation(out, dict(self.versions), timings, why, len(self._pop_rows),
                              ["popular now"] * len(out))


def _with_new_items(source: TwoTowerSource, catalogue: pl.DataFrame,
                    embeddings: pl.DataFrame | None) -> TwoTowerSource:
    """`source.with_new_items`, logged; a failure is logged and leaves `source` as loaded (the
    catalogue the model was trained with still serves)."""
    t = time.perf_counter()
    try:
        out = source.with_new_items(catalogue, embeddings)
    except Exception as exc:  # noqa: BLE001 - e.g. CLIP vectors of another length than the model's
        log.warning("items new since %s was trained stay out of stage 1: %s: %s", source.version,
                    type(exc).__name__, exc)
        return source
    if out.new_items:
        log.info("%d items new since %s was trained get item-tower vectors from their content in %.0f ms",
                 out.new_items, source.version, 1000 * (time.perf_counter() - t))
    return out


def _ann_index(retrieval: CandidateSource, items: ItemTable,
               exact_below: int | None) -> tuple[ItemIndex | None, np.ndarray]:
    """The ANN index for stage 1 and its position -> ItemTable row map; (None, []) for exact search.

    The retrieval model's own index when it is approximate (it was built for this catalogue
    size); otherwise an IVF index over the candidate source's vectors, built here (0.4 s at
    100k items), once the catalogue reaches `exact_below` items."""
    none = (None, np.zeros(0, np.int64))
    if exact_below is None:
        return none
    own = retrieval.index
    if own is not None and own.kind != "exact":
        return own, items.rows(own.item_ids.tolist())
    rows = np.asarray(retrieval.item_rows, np.int64)
    if len(rows) < max(exact_below, 1):
        return none
    index = ItemIndex.build([str(r) for r in rows], retrieval.item_vectors, str(retrieval.version),
                            kind="ivf")
    return index, rows


def merged(lists: Sequence[np.ndarray], cap: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """`recsys.ranking.candidates.merge_candidates` for lists that each hold a row at most once
    (the candidate sources' top rows do), with sorts instead of Python dicts: the same union in
    the same order and the same ranks (tested against it), ~0.03 ms for a request's 300 + 100."""
    arrays = [np.asarray(rows, np.int64) for rows in lists]
    union = arrays[0] if arrays else np.zeros(0, np.int64)
    for rows in arrays[1:]:  # append the rows not yet in the union, in their list's order
        known = np.sort(union)
        at = np.minimum(np.searchsorted(known, rows), max(len(known) - 1, 0))
        union = np.concatenate([union, rows if not len(known) else rows[known[at] != rows]])
    order = np.argsort(union)
    ordered = union[order]
    ranks = []
    for rows in arrays:
        rank = np.full(len(union), float(cap), np.float32)
        rank[order[np.searchsorted(ordered, rows)]] = np.arange(len(rows))
        ranks.append(rank)
    return union, ranks


def _ease_arrays(ease: EaseSource | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """EASE's weights (n_e, n_e), its ItemTable row -> column map (-1 outside), its columns in
    ItemTable row order and their rows (ascending), for the request path's scores over EASE's
    items only."""
    if ease is None:
        return None
    rows = np.asarray(ease.item_rows, np.int64)
    by_row = np.argsort(rows, kind="stable")
    return ease.weights, ease.column, by_row, rows[by_row]


def _model_uri(tag: str) -> str:
    """`models:/name/3` for a registry tag `name/v3` (other URIs pass through)."""
    return f"models:/{tag.replace('/v', '/')}" if "/v" in tag and not tag.startswith("models:/") else tag


def _rows(items: ItemTable, ids: Collection[str]) -> np.ndarray:
    """ItemTable rows of `ids` that are in the table."""
    if not ids:
        return _NO_ROWS
    rows = items.rows(list(ids))
    return rows[rows >= 0]


def _num(v: Any) -> float:
    try:
        return float(v) if v is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def _strip_frame(df: pl.DataFrame | None, prefix: str) -> pl.DataFrame | None:
    if df is None:
        return None
    return df.rename({c: c[len(prefix):] for c in df.columns if c.startswith(prefix)})
