"""Settings of the offline A/B evaluation (`recsys evaluate ab`)."""

from typing import Literal

from pydantic import Field

from recsys.configbase import ConfigModel


class EvaluationConfig(ConfigModel):
    k: int = Field(10, ge=1, description="length of the evaluated top-K lists")
    bootstrap: int = Field(1000, ge=50, description="bootstrap replicates (users resampled)")
    alpha: float = Field(0.05, gt=0, lt=1, description="1 - confidence level of every interval")
    primary_metric: str = Field(
        "ndcg@10", description="metric the verdict is decided on, e.g. ndcg@10, ctr:dr"
    )
    min_lift: float = Field(0.0, description="relative lift of the primary metric needed to ship")
    guardrails: list[str] = Field(
        default_factory=lambda: ["coverage@10"],
        description="metrics that must not drop beyond guardrail_tolerance",
    )
    guardrail_tolerance: float = Field(0.05, ge=0, description="largest relative drop a guardrail may show")
    clip: float = Field(10.0, gt=0, description="weight cap of clipped IPS")
    offline_primary: str = Field(
        "auto", description="off-policy estimator the verdict rests on: 'auto' picks the first of "
        "sndr, dr, snips, pbm_snips, pbm_dr, mips, pi_slate, pbm_ips, ips whose support holds "
        "(offline_min_ess, offline_max_support_deficiency), else the verdict falls back to "
        "primary_metric; 'none' always uses primary_metric; or an estimator name. A primary_metric "
        "of 'ctr:<name>' wins"
    )
    offline_min_ess: float = Field(
        1000.0, ge=1, description="least effective sample size (each arm) for an off-policy primary"
    )
    offline_max_support_deficiency: float = Field(
        0.05, ge=0, le=1, description="largest share of the target's (item, slot) pairs (items, for "
        "the item-level pbm_* estimators) never logged, for an off-policy primary"
    )
    holdout_days: float = Field(
        0.0, ge=0, description="the last N days of the log are the offline A/B window: retrieval and "
        "ranker training never see them (0: train on everything; evaluate ab then uses the window the "
        "compared rankers were trained without, and refuses when there is none)"
    )
    target_exploration: Literal["serving", "none"] = Field(
        "serving", description="off-policy targets as the server runs them: 'serving' evaluates a "
        "ranker that the server would explore with (serving.exploration = softmax) as that stochastic "
        "policy (Plackett-Luce at serving.temperature over its top candidates); 'none' evaluates its "
        "deterministic top k. Ranking metrics always use the top k"
    )
    max_users: int | None = Field(None, ge=1, description="evaluate a seeded sample of this many users")
    cold_item_clicks: int = Field(5, ge=0, description="items with fewer training clicks are 'cold'")
