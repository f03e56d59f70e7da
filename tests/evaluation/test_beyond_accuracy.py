"""Coverage, novelty and intra-list diversity on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.evaluation import beyond_accuracy as ba


def test_coverage_and_its_bootstrap_replicates() -> None:
    ranked = np.array([[0, 1, -1], [1, 2, 2]])
    assert ba.coverage(ranked, n_items=5) == pytest.approx(3 / 5)
    assert ba.coverage(ranked, 5, items=np.array([1, 0, 0, 0, 1], bool)) == pytest.approx(1 / 2)
    inc = ba.incidence(ranked, 5)
    w = np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(ba.coverage_replicates(inc, w), [2 / 5, 2 / 5, 3 / 5])


def test_novelty_is_mean_self_information() -> None:
    counts = np.array([6.0, 2.0, 0.0])  # p = (c + 1) / (8 + 3) = 7/11, 3/11, 1/11
    ranked = np.array([[0, 2], [1, -1]])
    expected = [(-np.log2(7 / 11) - np.log2(1 / 11)) / 2, -np.log2(3 / 11)]
    np.testing.assert_allclose(ba.novelty(ranked, counts), expected)


def test_intra_list_diversity_matches_the_pairwise_definition() -> None:
    emb = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [-1.0, 0.0]])
    ranked = np.array([[0, 1, 2], [0, 3, -1], [2, -1, -1]])
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)

    def pairwise(items: list[int]) -> float:
        d = [1 - unit[i] @ unit[j] for a, i in enumerate(items) for j in items[a + 1 :]]
        return float(np.mean(d))

    got = ba.intra_list_diversity(ranked, emb)
    assert got[0] == pytest.approx(pairwise([0, 1, 2]))
    assert got[1] == pytest.approx(2.0)  # opposite vectors
    assert np.isnan(got[2])
    has = np.array([True, True, False, True])
    assert ba.intra_list_diversity(ranked[:1], emb, has)[0] == pytest.approx(1.0)  # only items 0, 1


def test_exposure_share() -> None:
    ranked = np.array([[0, 1, 2], [3, -1, -1]])
    np.testing.assert_allclose(ba.exposure_share(ranked, np.array([1, 0, 1, 0], bool)), [2 / 3, 0.0])
