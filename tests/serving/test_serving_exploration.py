"""Propensities of the exploration policies."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from serving.exploration import choose_slate, seed_from

RANKED = [(f"i{n}", 3.0 - n * 0.5) for n in range(6)]


def test_top_k_is_deterministic_with_propensity_one() -> None:
    assert choose_slate(RANKED, 3) == [(i, s, 1.0) for i, s in RANKED[:3]]


@pytest.mark.parametrize("policy", ["epsilon", "softmax"])
def test_first_slot_propensity_matches_its_frequency(policy: str) -> None:
    rng = np.random.default_rng(0)
    draws = [choose_slate(RANKED, 2, policy, epsilon=0.3, temperature=1.0, rng=rng)[0] for _ in range(4000)]
    freq = Counter(d[0] for d in draws)
    for item_id, _, p in draws[:50]:
        assert math.isclose(freq[item_id] / len(draws), p, abs_tol=0.03)


def test_epsilon_propensities() -> None:
    out = choose_slate(RANKED, 6, "epsilon", epsilon=0.2, rng=np.random.default_rng(1))
    assert sorted(i for i, _, _ in out) == sorted(i for i, _ in RANKED)
    n = len(RANKED)
    assert out[0][2] in (pytest.approx(0.8 + 0.2 / n), pytest.approx(0.2 / n))


def test_same_request_id_same_slate() -> None:
    a = choose_slate(RANKED, 3, "softmax", rng=np.random.default_rng(seed_from("abc")))
    b = choose_slate(RANKED, 3, "softmax", rng=np.random.default_rng(seed_from("abc")))
    assert a == b
