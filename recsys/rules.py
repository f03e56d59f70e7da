"""A shop's request-time rules: which items may be recommended, and how the top k is cut.

Filters (`categories`, `exclude_categories`, `min_price` / `max_price`, `exclude`) act before
retrieval, as a mask over the catalogue, so the candidate search only ever sees eligible items
and k items come back whenever k eligible items exist. An item without a price is never
within a price bound. `max_per_category` and `diversity` act on the ranked list:

- `max_per_category` m: walk the ranking best first, skip an item whose category already has m.
- `diversity` λ in [0, 1]: maximal marginal relevance (Carbonell & Goldstein 1998) over the
  item vectors: pick next argmax_i (1 − λ)·rel_i − λ·max_{j picked} cos(v_i, v_j), with rel the
  ranker's scores min-max scaled to [0, 1] within the candidates. λ = 0 is the ranker's order.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np


class RuleError(ValueError):
    """A rule that cannot be applied; the message names the field."""


@dataclass(frozen=True)
class Rules:
    categories: frozenset[str] | None = None  # only these categories (None: any)
    exclude_categories: frozenset[str] = field(default_factory=frozenset)
    min_price: float | None = None
    max_price: float | None = None
    exclude: frozenset[str] = field(default_factory=frozenset)  # item ids
    max_per_category: int | None = None
    diversity: float = 0.0

    def __post_init__(self) -> None:
        if self.max_per_category is not None and self.max_per_category < 1:
            raise RuleError(f"max_per_category must be at least 1, got {self.max_per_category}")
        if not 0.0 <= self.diversity <= 1.0:
            raise RuleError(f"diversity must be in [0, 1], got {self.diversity}")
        if self.min_price is not None and self.max_price is not None and self.min_price > self.max_price:
            raise RuleError(f"min_price {self.min_price} is above max_price {self.max_price}")

    @classmethod
    def build(cls, categories: Collection[str] | str | None = None,
              exclude_categories: Collection[str] | str | None = None, min_price: float | None = None,
              max_price: float | None = None, exclude: Collection[str] | str | None = None,
              max_per_category: int | None = None, diversity: float = 0.0) -> Rules:
        """From request parameters; comma lists ("a,b") or collections."""
        return cls(categories=_set(categories) or None, exclude_categories=_set(exclude_categories),
                   min_price=min_price, max_price=max_price, exclude=_set(exclude),
                   max_per_category=max_per_category, diversity=float(diversity or 0.0))

    @property
    def filters(self) -> bool:
        """Whether a catalogue mask is needed (the ANN index cannot search within one)."""
        return bool(self.categories is not None or self.exclude_categories or self.min_price is not None
                    or self.max_price is not None)

    def allows(self, category: str | None, price: float | None) -> bool:
        """Whether the filters let one item through (the per-item form of `mask`)."""
        if self.categories is not None and category not in self.categories:
            return False
        if category in self.exclude_categories:
            return False
        if self.min_price is None and self.max_price is None:
            return True
        if price is None or price != price:  # no price: outside every bound
            return False
        return (self.min_price is None or price >= self.min_price) and \
            (self.max_price is None or price <= self.max_price)

    def mask(self, category: np.ndarray, categories: tuple[str, ...], price: np.ndarray) -> np.ndarray:
        """(N,) bool: items the filters allow. `category` holds codes into `categories` (-1 unknown)."""
        ok = np.ones(len(category), bool)
        code = {c: i for i, c in enumerate(categories)}
        if self.categories is not None:
            ok &= np.isin(category, [code[c] for c in self.categories if c in code])
        if self.exclude_categories:
            ok &= ~np.isin(category, [code[c] for c in self.exclude_categories if c in code])
        with np.errstate(invalid="ignore"):
            if self.min_price is not None:
                ok &= price >= self.min_price
            if self.max_price is not None:
                ok &= price <= self.max_price
        return ok


def _set(value: Collection[str] | str | None) -> frozenset[str]:
    if value is None:
        return frozenset()
    parts = value.split(",") if isinstance(value, str) else value
    return frozenset(p.strip() for p in parts if p and p.strip())


def select(scores: np.ndarray, category: np.ndarray, vectors: np.ndarray | None, k: int,
           rules: Rules, taken: np.ndarray | None = None) -> np.ndarray:
    """Positions (into the candidate arrays) of the k items shown, in order.

    `scores` (n,) ranker scores, `category` (n,) codes (-1 unknown), `vectors` (n, d)
    L2-normalised item vectors (None: no diversity possible), `taken` the category codes of items
    already shown (they count towards `max_per_category`). Without per-category caps or diversity
    this is the top k by score."""
    order = np.argsort(-scores, kind="stable")
    if rules.max_per_category is None and (rules.diversity <= 0 or vectors is None):
        return order[:k]
    taken = np.zeros(0, np.int64) if taken is None else np.asarray(taken, np.int64)
    cap = rules.max_per_category or len(scores) + len(taken)
    lam = rules.diversity if vectors is not None else 0.0
    span = float(scores.max() - scores.min()) if len(scores) else 0.0
    rel = (scores - scores.min()) / span if span > 0 else np.zeros(len(scores))
    slot = np.asarray(category, np.int64) + 1  # unknown (-1) counts as a category of its own
    count = np.bincount(taken + 1, minlength=int(max(slot.max(initial=0), taken.max(initial=-1) + 1)) + 1)
    picked: list[int] = []
    closest = np.full(len(scores), -np.inf) if lam > 0 else None  # max cos to a picked item
    free = np.ones(len(scores), bool)
    while len(picked) < k:
        ok = free & (count[slot] < cap)
        if not ok.any():
            break
        if closest is None:
            pick = int(order[ok[order]][0])
        else:
            value = (1 - lam) * rel - lam * np.where(np.isfinite(closest), closest, 0.0)
            pick = int(np.flatnonzero(ok)[np.argmax(value[ok])])
            closest = np.maximum(closest, vectors @ vectors[pick])
        picked.append(pick)
        free[pick] = False
        count[slot[pick]] += 1
    return np.asarray(picked, np.int64)
