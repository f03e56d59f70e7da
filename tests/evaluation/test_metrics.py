"""Ranking metrics against values computed by hand, and against a naive per-user loop."""

import math

import numpy as np
import pytest

from recsys.evaluation.metrics import (
    hit_matrix,
    ranking_metrics,
    ranking_metrics_from_sets,
    summarize,
    top_k,
)

# user 0: ranked [3, 1, 4, 0, 2], relevant {1, 2}: hits at ranks 2 and 5
# user 1: relevant {9}: no hit; user 2: nothing relevant (NaN, skipped by summarize)
RANKED = np.array([[3, 1, 4, 0, 2], [0, 1, 2, 3, 4], [4, 3, 2, 1, 0]])
ROWS = np.array([0, 0, 1])
ITEMS = np.array([1, 2, 9])


def test_hand_computed_values():
    m = ranking_metrics(RANKED, ROWS, ITEMS, ks=(1, 2, 5))
    d2, d6 = 1 / math.log2(3), 1 / math.log2(6)
    assert m["recall@5"][0] == pytest.approx(1.0)
    assert m["recall@2"][0] == pytest.approx(0.5)
    assert m["hit@1"][0] == 0.0 and m["hit@2"][0] == 1.0
    assert m["precision@5"][0] == pytest.approx(0.4)
    assert m["mrr@5"][0] == pytest.approx(0.5)
    assert m["mrr@1"][0] == 0.0
    assert m["ndcg@5"][0] == pytest.approx((d2 + d6) / (1 + d2))
    assert m["ndcg@2"][0] == pytest.approx(d2 / (1 + d2))
    assert m["map@5"][0] == pytest.approx((1 / 2 + 2 / 5) / 2)
    for name in ("recall@5", "ndcg@5", "hit@5", "mrr@5", "map@5"):
        assert m[name][1] == 0.0
        assert np.isnan(m[name][2])
    s = summarize(m)
    assert s["recall@5"] == pytest.approx(0.5)
    assert s["hit@2"] == pytest.approx(0.5)


def test_padding_and_duplicates():
    ranked = np.array([[2, -1, -1]])
    m = ranking_metrics(ranked, np.array([0, 0, 0]), np.array([2, 2, 5]), ks=(3,))
    assert m["recall@3"][0] == pytest.approx(0.5)  # {2, 5}, duplicate pair counted once
    assert m["ndcg@3"][0] == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert not hit_matrix(np.array([[-1]]), np.array([0]), np.array([0])).any()


def _naive(ranked, relevant, k):
    out = []
    for items, rel in zip(ranked, relevant, strict=True):
        if not rel:
            out.append(None)
            continue
        top = list(items[:k])
        hits = [1 if i in rel else 0 for i in top]
        dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
        idcg = sum(1 / math.log2(r + 2) for r in range(min(len(rel), k)))
        first = next((r for r, h in enumerate(hits) if h), None)
        ap = sum(h * sum(hits[: r + 1]) / (r + 1) for r, h in enumerate(hits)) / min(len(rel), k)
        out.append({"recall": sum(hits) / len(rel), "ndcg": dcg / idcg, "hit": float(any(hits)),
                    "mrr": 0.0 if first is None else 1 / (first + 1), "map": ap})
    return out


def test_matches_naive_loop_on_random_data():
    rng = np.random.default_rng(0)
    n_users, n_items, k = 50, 40, 10
    scores = rng.normal(size=(n_users, n_items))
    relevant = [set(rng.choice(n_items, size=rng.integers(0, 6), replace=False).tolist())
                for _ in range(n_users)]
    ranked = top_k(scores, k)
    rows = np.array([u for u, rel in enumerate(relevant) for _ in rel])
    items = np.array([i for rel in relevant for i in rel])
    fast = ranking_metrics(ranked, rows, items, ks=(k,))
    for u, ref in enumerate(_naive(ranked.tolist(), relevant, k)):
        for name in ("recall", "ndcg", "hit", "mrr", "map"):
            if ref is None:
                assert np.isnan(fast[f"{name}@{k}"][u])
            else:
                assert fast[f"{name}@{k}"][u] == pytest.approx(ref[name]), (u, name)


def test_top_k_excludes_seen_and_restricts_candidates():
    scores = np.array([[0.9, 0.8, 0.7, 0.6], [0.1, 0.2, 0.3, 0.4]])
    ranked = top_k(scores, 2, exclude_rows=np.array([0, 1]), exclude_items=np.array([0, 3]))
    assert ranked.tolist() == [[1, 2], [2, 1]]
    cand = np.array([True, False, False, True])
    assert top_k(scores, 3, candidates=cand).tolist() == [[0, 3, -1], [3, 0, -1]]
    # ties break by lower index
    assert top_k(np.zeros((1, 5)), 3).tolist() == [[0, 1, 2]]


def test_from_sets_and_errors():
    m = ranking_metrics_from_sets([["a", "b", "c"], ["x"]], [{"b"}, {"y"}], ks=(3,))
    assert m["recall@3"].tolist() == [1.0, 0.0]
    assert m["mrr@3"][0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="within 1"):
        ranking_metrics(RANKED, ROWS, ITEMS, ks=(6,))
    with pytest.raises(ValueError, match="integer"):
        ranking_metrics(RANKED.astype(float), ROWS, ITEMS)
    with pytest.raises(ValueError, match="unknown metrics"):
        ranking_metrics(RANKED, ROWS, ITEMS, metrics=("auc",))
