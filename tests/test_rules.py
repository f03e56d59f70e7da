"""Request-time rules (`recsys.rules`) alone and through the Recommender on the tiny shop."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest
from test_recommender import rec, trained  # noqa: F401  (module-scoped fixtures)

from recsys.data import columns as C
from recsys.ranking.features import ItemTable
from recsys.rules import RuleError, Rules, select

WHEN = datetime(2024, 2, 1, tzinfo=UTC)


def test_mask_filters_categories_and_prices() -> None:
    cats = ("bags", "hats", "shoes")
    category = np.array([0, 1, 2, -1, 0])
    price = np.array([10.0, 50.0, np.nan, 5.0, 99.0])
    rules = Rules.build(exclude_categories="hats", max_price=60)
    assert rules.mask(category, cats, price).tolist() == [True, False, False, True, False]
    only = Rules.build(categories=["shoes", "bags"], min_price=20)
    assert only.mask(category, cats, price).tolist() == [False, False, False, False, True]
    assert not Rules().filters and rules.filters


def test_select_caps_categories_and_diversifies() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    category = np.array([0, 0, 0, 1, 2])
    assert select(scores, category, None, 3, Rules()).tolist() == [0, 1, 2]
    assert select(scores, category, None, 3, Rules(max_per_category=1)).tolist() == [0, 3, 4]
    # items 0-2 point the same way, 3-4 elsewhere: with strong diversity the second pick changes
    v = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0.6, 0.8]], float)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    assert select(scores, category, v, 2, Rules(diversity=0.9)).tolist() == [0, 3]
    assert select(scores, category, v, 2, Rules(diversity=0.0)).tolist() == [0, 1]
    with pytest.raises(RuleError, match="diversity"):
        Rules(diversity=1.5)
    with pytest.raises(RuleError, match="max_per_category"):
        Rules(max_per_category=0)


def test_recommender_obeys_rules_and_gives_reasons(rec) -> None:  # noqa: F811
    cats = rec.items.categories
    banned = cats[0]
    out = rec.recommend("u1", 10, history=["i1", "i2"], as_of=WHEN,
                        rules=Rules.build(exclude_categories=banned))
    got = rec.items.category[rec.items.rows([i for i, _, _ in out.items])]
    assert len(out.items) == 10 and cats.index(banned) not in got.tolist()
    capped = rec.recommend("u1", 10, history=["i1", "i2"], as_of=WHEN, rules=Rules(max_per_category=2))
    counts = np.bincount(rec.items.category[rec.items.rows([i for i, _, _ in capped.items])] + 1)
    eligible = 2 * len(cats)  # the tiny shop has 4 categories: at most 8 items can come back
    assert len(capped.items) == min(10, eligible) and counts.max() <= 2
    plain = rec.recommend("u1", 10, history=["i1", "i2"], as_of=WHEN)
    diverse = rec.recommend("u1", 10, history=["i1", "i2"], as_of=WHEN, rules=Rules(diversity=0.7))

    def distinct(r) -> int:
        return len(set(rec.items.category[rec.items.rows([i for i, _, _ in r.items])].tolist()))

    assert distinct(diverse) >= distinct(plain)
    assert len(plain.reasons) == len(plain.items) and all(plain.reasons)
    assert any(r.startswith("because you clicked") for r in plain.reasons)
    # five eligible items under the price bound, minus what the user already clicked: all come back
    price = rec.items.price
    cheap = float(np.sort(price[np.isfinite(price)])[4])
    few = rec.recommend("u1", 10, history=["i1"], as_of=WHEN, rules=Rules(max_price=cheap))
    known = set(rec.seen_by_user.get("u1", []).tolist()) | {rec.items.index["i1"]}
    eligible = {r for r in np.flatnonzero(price <= cheap).tolist() if r not in known}
    assert {rec.items.index[i] for i, _, _ in few.items} == eligible


def test_unavailable_items_are_never_recommended(trained) -> None:  # noqa: F811
    from recsys.recommender import Recommender

    rec = Recommender.load(trained[0])  # noqa: F811  (its own copy: availability is state)
    first = rec.recommend("u1", 5, history=["i1", "i2"], as_of=WHEN)
    gone = [i for i, _, _ in first.items[:2]]
    assert rec.set_available(gone + ["no-such-item"], False) == 2
    again = rec.recommend("u1", 5, history=["i1", "i2"], as_of=WHEN)
    assert len(again.items) == 5 and not set(gone) & {i for i, _, _ in again.items}
    rec.set_available(gone, True)
    assert [i for i, _, _ in rec.recommend("u1", 5, history=["i1", "i2"], as_of=WHEN).items] == \
        [i for i, _, _ in first.items]


def test_rules_name_categories_the_ranker_never_saw() -> None:
    """The ranker codes only its training catalogue's categories (its feature); the shop's rules
    code every catalogue category (`ItemTable.shop_category`), so filters and per-category caps
    treat categories imported later by name, item by item as `Rules.allows` does."""
    known = ["bags", "hats", "shoes"]
    cats = [*known, "gnomes", "kites", None]
    items = pl.DataFrame({C.ITEM_ID: [f"i{n}" for n in range(30)],
                          C.CATEGORY: [cats[n % 6] for n in range(30)],
                          C.PRICE: [float(n) for n in range(30)]})
    table = ItemTable.build(items, categories=known)
    assert set(table.category[table.shop_category == table.shop_categories.index("gnomes")]) == {-1}
    named = ["hats", "gnomes", "nowhere"]
    choices = [None, *(frozenset(c) for r in (1, 2) for c in itertools.combinations(named, r))]
    for allow, deny in itertools.product(choices, choices):
        rules = Rules(categories=allow, exclude_categories=deny or frozenset(), max_price=25.0)
        expected = [rules.allows(c, p) for c, p in zip(items[C.CATEGORY], items[C.PRICE], strict=True)]
        assert rules.mask(table.shop_category, table.shop_categories, table.price).tolist() == expected, rules
    # two new categories are two categories under a cap (the ranker's codes make both -1)
    order = np.array([3, 4, 9, 10])  # gnomes, kites, gnomes, kites
    picked = select(np.array([0.9, 0.8, 0.7, 0.6]), table.shop_category[order], None, 4,
                    Rules(max_per_category=1))
    assert picked.tolist() == [0, 1]
