"""Propensities of the exploration policies: marginal, per rank, what the sampler does."""

from __future__ import annotations

from collections import Counter

import numpy as np

from serving.exploration import choose_slate, seed_from

RANKED = [(f"i{n}", 3.0 - n * 0.5) for n in range(6)]


def test_top_k_is_deterministic_with_propensity_one_at_its_rank() -> None:
    out = choose_slate(RANKED, 3)
    assert [(i, s, p) for i, s, p, _ in out] == [(i, s, 1.0) for i, s in RANKED[:3]]
    assert [per_rank for *_, per_rank in out] == [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]


def test_softmax_propensities_are_the_marginal_frequencies_at_every_rank() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    shown = Counter()
    recorded: dict[tuple[str, int], float] = {}
    per_rank: dict[str, tuple[float, ...]] = {}
    for _ in range(n):
        for rank, (item_id, _, p, every) in enumerate(choose_slate(RANKED, 3, "softmax", 1.0, rng)):
            shown[item_id, rank] += 1
            recorded[item_id, rank] = p
            per_rank[item_id] = every
            assert every[rank] == p
    for (item_id, rank), count in shown.items():
        assert abs(count / n - recorded[item_id, rank]) < 0.03  # marginal, not conditional on the ranks above
    for rank in range(3):  # each rank holds one item
        assert abs(sum(v[rank] for v in per_rank.values()) - 1) < 1e-6


def test_same_request_id_same_slate() -> None:
    a = choose_slate(RANKED, 3, "softmax", rng=np.random.default_rng(seed_from("abc")))
    b = choose_slate(RANKED, 3, "softmax", rng=np.random.default_rng(seed_from("abc")))
    assert a == b
