"""The verdict rule and the segment comparison."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.evaluation.ab import RankingData, Segment, compare_rankings, decide
from recsys.evaluation.bootstrap import Delta
from recsys.evaluation.config import EvaluationConfig


def _d(metric: str, lift: float, lo: float, hi: float) -> Delta:
    return Delta(metric, 1.0, 1.0 + lift, lift, lo, hi, lift, lo, hi, 0.01, 100)


CFG = EvaluationConfig(
    primary_metric="ndcg@10", min_lift=0.02, guardrails=["coverage@10"], guardrail_tolerance=0.05
)


@pytest.mark.parametrize(
    ("primary", "guard", "decision"),
    [
        ((0.05, 0.03, 0.07), (0.0, -0.01, 0.01), "ship"),
        ((0.05, 0.03, 0.07), (-0.2, -0.3, -0.1), "don't ship"),  # guardrail broken
        ((0.05, 0.03, 0.07), (-0.05, -0.12, 0.02), "inconclusive"),  # guardrail not confirmed
        ((-0.05, -0.08, -0.02), (0.0, -0.01, 0.01), "don't ship"),  # significantly worse
        ((0.005, 0.001, 0.015), (0.0, -0.01, 0.01), "don't ship"),  # confidently below min lift
        ((0.03, -0.01, 0.07), (0.0, -0.01, 0.01), "inconclusive"),
    ],
)
def test_verdict_rule(primary, guard, decision) -> None:
    v = decide({"ndcg@10": _d("ndcg@10", *primary), "coverage@10": _d("coverage@10", *guard)}, CFG)
    assert v.decision == decision, v.reason
    assert "ndcg@10" in v.reason


def test_missing_primary_is_inconclusive_and_says_so() -> None:
    v = decide(
        {"recall@10": _d("recall@10", 0.1, 0.05, 0.2)}, CFG.model_copy(update={"primary_metric": "ctr:dr"})
    )
    assert v.decision == "inconclusive" and "ctr:dr" in v.reason and "recall@10" in v.reason


def test_compare_rankings_by_segment() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items = 400, 30
    truth_items = rng.integers(0, 10, n_users)  # every user likes one of the first 10 items
    good = np.stack([truth_items, *(np.full(n_users, 20 + j) for j in range(4))], axis=1)
    bad = np.tile(np.arange(20, 25), (n_users, 1))
    data = RankingData(np.arange(n_users), truth_items, n_users, n_items, click_counts=np.ones(n_items))
    segs = [
        Segment("all"),
        Segment("half", users=np.arange(n_users) < 200),
        Segment("items 0-4", items=np.arange(n_items) < 5),
    ]
    out = compare_rankings(bad, good, data, segs, k=5, n_boot=100)
    overall = {d.metric: d for d in out["all"]}
    assert overall["hit@5"].control == 0 and overall["hit@5"].treatment == 1
    assert overall["ndcg@5"].significant
    assert overall["coverage@5"].treatment == pytest.approx(14 / 30)
    assert {d.metric: d for d in out["half"]}["hit@5"].n == 200
    seg = {d.metric: d for d in out["items 0-4"]}
    assert seg["recall@5"].n == int((truth_items < 5).sum())
    assert "exposure@5" in seg and seg["coverage@5"].treatment == pytest.approx(1.0)



def test_figures_accept_a_point_estimate_outside_its_interval() -> None:
    """Percentile intervals of a ratio can exclude the point estimate; the plot must not fail."""
    from recsys.evaluation.ab import ABResult, Verdict
    from recsys.evaluation.bootstrap import Delta
    from recsys.evaluation.report import figures

    delta = Delta(metric="ndcg@10", control=0.1, treatment=0.12, delta=0.02, low=0.01, high=0.03,
                  lift=0.2, lift_low=0.25, lift_high=0.4, p_value=0.01, n=100)
    result = ABResult(control="popular", treatment="ranker", k=10, window="w", n_users=100,
                      ranking={"all": [delta]}, verdict=Verdict("ship", "r", "ndcg@10"))
    pngs = figures(result)
    assert pngs["metric_lifts"].startswith(b"\x89PNG")
