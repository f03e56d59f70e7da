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


# ---------------------------------------------------------------------------------------------
# the off-policy primary: chosen from support diagnostics, then the verdict rests on it


def _offline(name: str, ess_c: float, ess_t: float, lift=(0.5, 0.3, 0.7)):
    from recsys.evaluation.ab import OfflineEstimate
    from recsys.evaluation.bootstrap import Interval

    d = _d(f"ctr:{name}", *lift)
    return OfflineEstimate(name, Interval(1.0, 0.9, 1.1), Interval(1.5, 1.3, 1.7), d, ess_c, ess_t)


def _support(pair_share: float):
    from recsys.evaluation.ope import SupportReport

    rep = SupportReport(item_share=0.0, pair_share=pair_share, target_slots=100)
    return {"control": rep, "treatment": rep}


AUTO = CFG.model_copy(update={"offline_min_ess": 1000.0, "offline_max_support_deficiency": 0.05})


def test_primary_is_the_first_preferred_estimator_with_enough_support() -> None:
    from recsys.evaluation.ab import choose_primary

    offline = [
        _offline("ips", 9, 14),
        _offline("dm", float("nan"), float("nan")),
        _offline("dr", 9, 14),
        _offline("sndr", 9, 14),
        _offline("mips", 2500, 1800),
    ]
    choice = choose_primary(offline, _support(0.0), AUTO)
    # sndr and dr are preferred but rest on 9 / 14 impressions; mips is the first with >= 1000
    assert choice.estimator == "mips" and choice.metric == "ctr:mips"
    assert choice.ess == {"control": 2500, "treatment": 1800}
    assert "sndr: ESS 9 / 14 < 1,000" in choice.reason and "dr: ESS" in choice.reason
    # with enough support everywhere, the preference order decides (not the results)
    rich = [_offline(n, 5000, 5000, (0.0, -0.1, 0.1) if n == "sndr" else (0.5, 0.3, 0.7))
            for n in ("ips", "snips", "dr", "sndr")]
    assert choose_primary(rich, _support(0.0), AUTO).estimator == "sndr"


def test_support_deficiency_rules_out_item_level_estimators_but_not_mips() -> None:
    from recsys.evaluation.ab import choose_primary

    offline = [_offline("sndr", 5000, 5000), _offline("mips", 3000, 3000)]
    choice = choose_primary(offline, _support(0.2), AUTO)
    assert choice.estimator == "mips"
    assert "support deficiency 20.0% > 5.0%" in choice.reason


def test_too_little_support_names_the_problem_and_reports_the_best_ess() -> None:
    from recsys.evaluation.ab import choose_primary

    offline = [_offline("ips", 9, 14), _offline("dr", 9, 14), _offline("snips", 30, 12)]
    choice = choose_primary(offline, _support(0.0), AUTO)
    assert choice.estimator is None and choice.metric is None
    assert choice.reason.startswith("too little support for an off-policy verdict")
    # the best-supported candidate is snips (its smaller arm, 12, beats the others' 9)
    assert choice.ess == {"control": 30, "treatment": 12}
    assert choose_primary(None, {}, AUTO).estimator is None


def test_primary_modes() -> None:
    from recsys.evaluation.ab import choose_primary

    offline = [_offline("sndr", 5000, 5000), _offline("dr", 5000, 5000)]
    assert choose_primary(offline, _support(0.0), AUTO.model_copy(update={"offline_primary": "none"})
                          ).estimator is None
    assert choose_primary(offline, _support(0.0), AUTO.model_copy(update={"offline_primary": "dr"})
                          ).estimator == "dr"
    missing = choose_primary(offline, _support(0.0), AUTO.model_copy(update={"offline_primary": "mips"}))
    assert missing.estimator is None and "'mips' was not computed" in missing.reason


def test_verdict_rests_on_the_chosen_estimator_and_falls_back_to_ranking() -> None:
    from recsys.evaluation.ab import PrimaryChoice, decide_ab

    deltas = {
        "ndcg@10": _d("ndcg@10", -0.05, -0.08, -0.02),  # ranking says worse
        "ctr:sndr": _d("ctr:sndr", 0.3, 0.2, 0.4),  # off-policy CTR says better
        "coverage@10": _d("coverage@10", 0.0, -0.01, 0.01),
    }
    chosen = decide_ab(deltas, AUTO, PrimaryChoice("sndr", "sndr: ESS ok"))
    assert chosen.decision == "ship" and chosen.primary == "ctr:sndr" and "ctr:sndr" in chosen.reason
    assert chosen.checks[0] == "off-policy primary: sndr: ESS ok"
    fallback = decide_ab(deltas, AUTO, PrimaryChoice(None, "too little support: dr: ESS 9 / 14 < 1,000"))
    assert fallback.decision == "don't ship" and fallback.primary == "ndcg@10"
    assert "too little support" in fallback.checks[0] and "verdict on ndcg@10" in fallback.checks[0]
    # a primary_metric naming an off-policy CTR is the user's choice and is kept
    user = decide_ab(deltas | {"ctr:dr": _d("ctr:dr", -0.3, -0.4, -0.2)},
                     AUTO.model_copy(update={"primary_metric": "ctr:dr"}),
                     PrimaryChoice("sndr", "sndr: ESS ok"))
    assert user.primary == "ctr:dr" and user.decision == "don't ship"


def test_summary_names_the_primary_and_its_ess_and_keeps_the_contract() -> None:
    from recsys.evaluation.ab import ABResult, PrimaryChoice, Verdict
    from recsys.evaluation.report import render_markdown, summary_dict

    offline = [_offline("dm", float("nan"), float("nan")), _offline("sndr", 4321, 1234)]
    result = ABResult(
        control="popular", treatment="ranker", k=10, window="w", n_users=100,
        ranking={"all": [_d("ndcg@10", 0.1, 0.05, 0.2)]}, verdict=Verdict("ship", "r", "ctr:sndr"),
        offline=offline, support=_support(0.0), truth_ctr={"control": 0.05, "treatment": 0.08},
        primary=PrimaryChoice("sndr", "sndr: ESS ok", {"control": 4321.0, "treatment": 1234.0}),
    )
    summary = summary_dict(result)
    assert summary["offline_primary"] == "sndr"
    assert summary["ess"] == {"control": 4321.0, "treatment": 1234.0}
    assert summary["truth_ctr"] == {"control": 0.05, "treatment": 0.08}
    assert {"lift", "lift_low", "lift_high"} <= set(summary["offline"][1]["delta"])
    md = render_markdown(result)
    assert "| sndr | yes |" in md and "| dm |  |" in md and "| n/a | n/a |" in md
    assert "4,321 | 1,234 |" in md
    bare = summary_dict(ABResult(control="a", treatment="b", k=10, window="w", n_users=1, ranking={},
                                 verdict=Verdict("inconclusive", "r", "ndcg@10")))
    assert bare["offline_primary"] is None and bare["ess"] is None
