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


def test_softmax_propensities_are_the_whole_pools_marginals() -> None:
    """What the response logs for each shown item, at every rank, is the item's row of the whole
    pool's exact marginals (`plackett_luce.marginals`), to well below 1e-6, at the serving
    temperature over a pool like the benchmark ranker's (30 candidates spanning ~0.4 in score)."""
    from recsys.evaluation import plackett_luce as PL

    rng = np.random.default_rng(1)
    scores = np.sort(rng.normal(1.5, 0.12, 30))[::-1]
    ranked = [(f"i{n}", float(s)) for n, s in enumerate(scores)]
    full = PL.marginals(scores[None, :], 0.05, 10)[0]
    shown_from_tail = 0
    for seed in range(200):
        slate = choose_slate(ranked, 10, "softmax", 0.05, np.random.default_rng(seed))
        assert len({i for i, *_ in slate}) == 10
        for rank, (item_id, score, p, every) in enumerate(slate):
            j = int(item_id[1:])
            assert score == ranked[j][1]
            np.testing.assert_allclose(every, full[j], rtol=0, atol=1e-9)
            assert p == every[rank] > 0
            shown_from_tail += j >= 20
    assert shown_from_tail > 0  # the pool's tail is shown now and then: it cannot be cut off
