"""What the offline A/B compares: a policy ranks items for users as of a time.

Anything with a `name` and `rank(user_ids, as_of, k)` is a `Policy` (the two-stage recommender
is adapted to it in `training/evaluate.py`). Off-policy estimation of a deterministic policy
needs nothing more: its probability of an (item, slot) is 1 when its slate puts the item there.
A `ScoredPolicy` also gives its scores, so it can be evaluated as the server runs it with
exploration on: Plackett-Luce over its top `exploration_pool(k)` (`StochasticSlates`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

import numpy as np
import polars as pl

from recsys.data import columns as C
from recsys.evaluation import plackett_luce as PL
from recsys.retrieval.ease import EaseModel, click_matrix


@runtime_checkable
class Policy(Protocol):
    """A ranking policy under evaluation.

    rank(user_ids (n,) str, as_of, k) -> item ids (n, k) str, best first, '' where it has fewer
    than k items for a user. Items the user already interacted with before `as_of` are
    excluded (full-ranking protocol).
    """

    name: str

    def rank(self, user_ids: np.ndarray, as_of: datetime, k: int) -> np.ndarray: ...


@runtime_checkable
class ScoredPolicy(Policy, Protocol):
    """A policy that also gives its scores: scored(user_ids, as_of, k) -> per user its top k as
    (item id, score), best first (what the server's exploration samples from)."""

    def scored(self, user_ids: np.ndarray, as_of: datetime, k: int) -> list[list[tuple[str, float]]]: ...


def exploration_pool(k: int) -> int:
    """How many of the ranked candidates the server's exploration samples a k-slate from."""
    return min(max(3 * k, 20), 300)


@dataclass(frozen=True)
class StochasticSlates:
    """A Plackett-Luce target: each user's ranked pool items (u, P) ('' pads) with scores (u, P)
    (-inf pads), sampled at `temperature` into slates of `marginals.shape[2]` slots;
    marginals (u, P, L) is the exact probability of each pool item at each slot."""

    items: np.ndarray
    scores: np.ndarray
    temperature: float
    marginals: np.ndarray

    @classmethod
    def of(cls, scored: Sequence[Sequence[tuple[str, float]]], temperature: float, slots: int,
           pool: int) -> StochasticSlates:
        """From each user's top `pool` (item, score) lists, as `ScoredPolicy.scored` gives them."""
        items = np.full((len(scored), pool), "", dtype=object)
        scores = np.full((len(scored), pool), -np.inf)
        for row, ranked in enumerate(scored):
            for j, (item, score) in enumerate(ranked[:pool]):
                items[row, j], scores[row, j] = item, score
        marginals = np.zeros((len(scored), pool, slots))
        some = np.isfinite(scores).any(axis=1)  # users with nothing to show keep zero mass
        if some.any():
            mu = PL.marginals(scores[some], temperature, min(slots, pool))
            marginals[some, :, : mu.shape[2]] = mu
        return cls(items.astype(str), scores, temperature, marginals)

    def sample(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One slate (len(rows), L) of item ids per requested row, drawn as the server draws it."""
        slots = self.marginals.shape[2]
        out = np.full((len(rows), slots), "", dtype=object)
        scores = self.scores[rows]
        some = np.isfinite(scores).any(axis=1)
        if some.any():
            picked = PL.sample(rng, scores[some], self.temperature, slots)
            ids = np.take_along_axis(self.items[rows][some], np.maximum(picked, 0), axis=1)
            out[np.flatnonzero(some), : picked.shape[1]] = np.where(picked >= 0, ids, "")
        return out.astype(str)


def as_simulator_policy(policy: Policy, k: int):
    """Adapt to the simulator's `policy(user_ids, as_of) -> (n, k)` calling convention."""

    def serve(user_ids: np.ndarray, as_of: datetime) -> np.ndarray:
        return policy.rank(np.asarray(user_ids), as_of, k)

    serve.__name__ = policy.name
    return serve


class PopularPolicy:
    """Most-clicked items before `as_of` (clicks in the last `window_days`, or all history),
    minus the items each user already clicked or was shown-and-clicked.

    The baseline every learned ranker must beat. `events` is a click log with user_id, item_id,
    event_timestamp and, optionally, clicked (rows with clicked = false are ignored).
    """

    def __init__(self, events: pl.DataFrame, window_days: float | None = None, name: str = "popular"):
        cols = [C.USER_ID, C.ITEM_ID, C.EVENT_TIMESTAMP]
        if C.CLICKED in events.columns:
            events = events.filter(pl.col(C.CLICKED))
        self.events = events.select(cols)
        self.window_days = window_days
        self.name = name
        self._cache: tuple[datetime, np.ndarray, pl.DataFrame] | None = None

    def _ranking(self, as_of: datetime) -> tuple[np.ndarray, pl.DataFrame]:
        """(items by clicks, most first; the unique (user, item) clicks before `as_of`), cached per
        `as_of`: `rank` is called batch by batch at one time."""
        if self._cache is not None and self._cache[0] == as_of:
            return self._cache[1], self._cache[2]
        past = self.events.filter(pl.col(C.EVENT_TIMESTAMP) < as_of)
        seen = past.select(C.USER_ID, C.ITEM_ID).unique()
        if self.window_days is not None:
            past = past.filter(
                pl.col(C.EVENT_TIMESTAMP) >= pl.lit(as_of) - pl.duration(days=self.window_days)
            )
        counts = past.group_by(C.ITEM_ID).len().sort(["len", C.ITEM_ID], descending=[True, False])
        ranking = counts[C.ITEM_ID].to_numpy().astype(str)
        self._cache = (as_of, ranking, seen)
        return ranking, seen

    def rank(self, user_ids: np.ndarray, as_of: datetime, k: int) -> np.ndarray:
        ranking, seen_pairs = self._ranking(as_of)
        user_ids = np.asarray(user_ids).astype(str)
        n = len(user_ids)
        out = np.full((n, k), "", dtype=object)
        if not len(ranking) or not n:
            return out.astype(str)
        width = min(len(ranking), k + 64)
        users = pl.DataFrame({C.USER_ID: user_ids, "row": np.arange(n)}).unique(C.USER_ID)
        # rows of duplicated users share the first row's mask
        first_row = dict(zip(users[C.USER_ID].to_list(), users["row"].to_list(), strict=True))
        rows = np.array([first_row[u] for u in user_ids])
        user_seen = seen_pairs.join(users, on=C.USER_ID)
        while True:
            top = pl.DataFrame({C.ITEM_ID: ranking[:width], "slot": np.arange(width)})
            seen = user_seen.join(top, on=C.ITEM_ID)
            mask_u = np.zeros((n, width), dtype=bool)
            mask_u[seen["row"].to_numpy(), seen["slot"].to_numpy()] = True
            mask = mask_u[rows]
            if width == len(ranking) or (~mask).sum(axis=1).min() >= k:
                break
            width = min(len(ranking), width * 4)
        order = np.argsort(mask, axis=1, kind="stable")[:, :k]
        chosen = np.take_along_axis(np.broadcast_to(np.arange(width), (n, width)), order, axis=1)
        valid = ~np.take_along_axis(mask, order, axis=1)
        out = np.where(valid, ranking[:width][chosen], "")
        if out.shape[1] < k:
            out = np.pad(out, ((0, 0), (0, k - out.shape[1])), constant_values="")
        return out.astype(str)


class EasePolicy:
    """EASE alone (a registered `models:/ease@...`): each user's clicks before `as_of` times B,
    items they clicked excluded; its fitted click counts break ties (a user without clicks gets
    the most-clicked items). The collaborative baseline a two-stage system must beat."""

    def __init__(self, model: EaseModel, events: pl.DataFrame, name: str = "ease"):
        if C.CLICKED in events.columns:
            events = events.filter(pl.col(C.CLICKED))
        self.model, self.name = model, name
        self.events = events.select(C.USER_ID, C.ITEM_ID, C.EVENT_TIMESTAMP)
        self._past: tuple[datetime, pl.DataFrame] | None = None

    def rank(self, user_ids: np.ndarray, as_of: datetime, k: int) -> np.ndarray:
        if self._past is None or self._past[0] != as_of:
            self._past = (as_of, self.events.filter(pl.col(C.EVENT_TIMESTAMP) < as_of))
        users = [str(u) for u in np.asarray(user_ids)]
        x, _ = click_matrix(self._past[1], self.model.item_ids, users)
        clicks = self.model.item_clicks
        scores = self.model.scores(x) + 1e-6 * clicks / max(float(clicks.max()), 1.0)
        scores[x.nonzero()] = -np.inf
        width = min(k, scores.shape[1])
        top = np.argpartition(-scores, width - 1, axis=1)[:, :width]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), axis=1), 1)
        ids = np.asarray(self.model.item_ids, dtype=object)[top]
        out = np.where(np.isfinite(np.take_along_axis(scores, top, 1)), ids, "")
        return np.pad(out, ((0, 0), (0, k - width)), constant_values="").astype(str)
