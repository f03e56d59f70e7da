"""Plackett-Luce marginals against brute-force enumeration and against the sampler."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from recsys.evaluation import plackett_luce as PL


def _enumerated(scores: np.ndarray, temperature: float, slots: int) -> np.ndarray:
    """mu (M, slots) by summing the probability of every ordered slate."""
    w = np.exp((scores - scores.max()) / temperature)
    out = np.zeros((len(w), slots))
    for slate in itertools.permutations(range(len(w)), slots):
        p, left = 1.0, list(range(len(w)))
        for j in slate:
            p *= w[j] / w[left].sum()
            left.remove(j)
        for k, j in enumerate(slate):
            out[j, k] += p
    return out


@pytest.mark.parametrize("temperature", [0.05, 0.5, 3.0])
def test_marginals_match_enumeration(temperature: float) -> None:
    scores = np.random.default_rng(1).normal(0.0, 2.0, (3, 7))
    scores[2, 3] = -np.inf  # never shown
    mu = PL.marginals(scores, temperature, 4)
    for row in range(3):
        np.testing.assert_allclose(mu[row], _enumerated(scores[row], temperature, 4), atol=1e-7)
    assert (mu[2, 3] == 0).all()


def test_marginals_of_a_large_catalogue_match_the_sampler() -> None:
    """2,000 candidates: most are 'light' (the power-sum path), the top ones 'heavy'."""
    rng = np.random.default_rng(0)
    scores = rng.normal(0.0, 1.5, (2, 2000))
    mu = PL.marginals(scores, 0.7, 10)
    np.testing.assert_allclose(mu.sum(axis=1), 1.0, atol=1e-6)  # every slot holds one item
    assert (mu.sum(axis=2) <= 1 + 1e-9).all()  # an item shows at most once
    n = 20_000
    slates = PL.sample(rng, np.repeat(scores[:1], n, axis=0), 0.7, 10)
    freq = np.zeros((2000, 10))
    np.add.at(freq, (slates, np.broadcast_to(np.arange(10), slates.shape)), 1 / n)
    assert np.abs(freq - mu[0]).max() < 5 * np.sqrt(mu[0].max() / n)
    # slot 0 is the softmax itself
    np.testing.assert_allclose(mu[:, :, 0], PL.weights(scores, 0.7), atol=1e-12)


def test_ties_and_bad_temperature() -> None:
    np.testing.assert_allclose(PL.marginals(np.zeros((1, 12)), 1.0, 3), 1 / 12, atol=1e-7)
    with pytest.raises(ValueError, match="temperature"):
        PL.marginals(np.zeros((1, 3)), 0.0, 2)


def test_grouped_rejection_sampling_draws_the_same_marginals() -> None:
    rng = np.random.default_rng(2)
    scores = rng.normal(0.0, 1.5, (3, 300))
    scores[:, 250:] = -np.inf  # never drawn
    mu = PL.marginals(scores, 1.0, 5)
    group = rng.integers(0, 3, 60_000)
    slates = PL.sample_grouped(rng, PL.weights(scores, 1.0), group, 5)
    assert (slates < 250).all() and all(len(set(row)) == 5 for row in slates[:2000])
    for g in range(3):
        drawn = slates[group == g]
        freq = np.zeros((300, 5))
        np.add.at(freq, (drawn, np.broadcast_to(np.arange(5), drawn.shape)), 1 / len(drawn))
        assert np.abs(freq - mu[g]).max() < 5 * np.sqrt(mu[g].max() / len(drawn))
    # two dominant items: rows still clashing after the redraw rounds take the Gumbel draw
    heavy = np.array([[10.0, 9.5] + [0.0] * 10])
    drawn = PL.sample_grouped(rng, PL.weights(heavy, 1.0), np.zeros(20_000, dtype=np.int64), 3, rounds=2)
    freq = np.zeros((12, 3))
    np.add.at(freq, (drawn, np.broadcast_to(np.arange(3), drawn.shape)), 1 / 20_000)
    assert np.abs(freq - PL.marginals(heavy, 1.0, 3)[0]).max() < 0.02


@pytest.mark.parametrize("pool,slots", [(2, 2), (7, 4), (12, 10), (30, 10), (64, 20), (128, 32)])
@pytest.mark.parametrize("temperature", [0.05, 0.5, 3.0])
def test_marginals_of_a_serving_pool_match_the_whole_computation(pool: int, slots: int,
                                                                 temperature: float) -> None:
    """The generating-function path (`marginals_of`) against `marginals` on the same quadrature:
    within its stated bound (~1e-9), far below the 1e-6 that logged propensities need."""
    rng = np.random.default_rng(pool * slots)
    bound = PL.marginals_of_error(pool, slots)
    assert 0 < bound < 1e-7
    for spread in (0.1, 0.4, 2.0):  # the benchmark ranker's pool of 30 spans ~0.4
        scores = np.sort(rng.normal(0.0, spread, pool))[::-1]
        scores[pool // 3] = scores[pool // 3 + 1 if pool > 3 else 0]  # a tie
        if pool > 10:
            scores[-1] = -np.inf  # never shown
        full = PL.marginals(scores[None, :], temperature, slots)[0]
        items = rng.permutation(pool)
        got = PL.marginals_of(scores, temperature, slots, items)
        assert got.shape == (pool, slots)
        np.testing.assert_allclose(got, full[items], rtol=0, atol=bound)
        if pool > 10:
            assert (got[items == pool - 1] == 0).all()


def test_marginals_of_match_enumeration_and_fall_back_for_large_pools() -> None:
    scores = np.random.default_rng(3).normal(0.0, 2.0, 7)
    for temperature in (0.05, 0.5, 3.0):
        got = PL.marginals_of(scores, temperature, 4, np.array([6, 0, 3]))
        np.testing.assert_allclose(got, _enumerated(scores, temperature, 4)[[6, 0, 3]], atol=2e-7)
    big = np.random.default_rng(4).normal(0.0, 1.0, 300)  # beyond the generating-function sizes
    np.testing.assert_array_equal(PL.marginals_of(big, 0.5, 10, np.array([0, 5])),
                                  PL.marginals(big[None, :], 0.5, 10)[0][[0, 5]])
    assert PL.marginals_of_error(300, 10) == 0.0
