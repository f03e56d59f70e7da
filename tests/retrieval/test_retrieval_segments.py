"""Segments of the retrieval evaluation on a hand-made log: what is ranked, among what."""

from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from recsys.data import columns as C
from recsys.retrieval.evaluate import evaluate_methods

ITEMS = ["a", "b", "c", "d", "e"]


def _clicks(rows):
    return pl.DataFrame({C.USER_ID: [u for u, _ in rows], C.ITEM_ID: [i for _, i in rows],
                         C.EVENT_TIMESTAMP: [datetime(2024, 1, 1, tzinfo=UTC)] * len(rows)})


def _fixed(order):
    """A scorer that ranks items in `order` for everybody."""
    scores = np.zeros(len(ITEMS))
    scores[[ITEMS.index(i) for i in order]] = np.arange(len(order), 0, -1)
    return lambda users: np.tile(scores, (len(users), 1))


KNOWN = _clicks([("u1", "a"), ("u2", "b")])   # a, b warm; c, d, e cold
TEST = _clicks([("u1", "d"), ("u2", "a")])


def test_cold_items_rank_among_cold_items_and_unavailable_items_are_skipped():
    methods = {"likes_e": _fixed(["e", "b", "a", "c", "d"])}
    open_all = evaluate_methods(methods, KNOWN, TEST, ITEMS, ks=(1, 2), segments=("cold_items",))
    # among cold items (c, d, e) the scorer puts e, then c: d is only third
    assert open_all.value("likes_e", "cold_items", "hit@2") == 0.0
    # e did not exist yet at test time: among c, d the scorer ranks c first, d second
    available = np.array([True, True, True, True, False])
    skipped = evaluate_methods(methods, KNOWN, TEST, ITEMS, ks=(1, 2), segments=("cold_items",),
                               available=available)
    assert skipped.value("likes_e", "cold_items", "hit@1") == 0.0
    assert skipped.value("likes_e", "cold_items", "hit@2") == 1.0


def test_warm_items_exclude_the_users_seen_items_and_their_reclicks():
    methods = {"likes_a": _fixed(["a", "b", "c", "d", "e"])}
    test = TEST.vstack(_clicks([("u1", "a")]))  # u1 clicks a again: a can never be a hit for u1
    result = evaluate_methods(methods, KNOWN, test, ITEMS, ks=(1,), segments=("warm_items",))
    # u2's test click on a is a hit at 1 (u2 saw b, not a); u1's other test click (d) is cold
    assert result.users["warm_items"] == ["u2"]
    assert result.value("likes_a", "warm_items", "hit@1") == 1.0


def test_a_mask_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="available must be a bool mask over the 5 items"):
        evaluate_methods({"x": _fixed(ITEMS)}, KNOWN, TEST, ITEMS, available=np.ones(3, dtype=bool))
