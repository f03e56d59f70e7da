"""Settings of the offline A/B evaluation."""

from pydantic import Field

from recsys.configbase import ConfigModel


class EvaluationConfig(ConfigModel):
    k: int = 10
    bootstrap: int = 1000
    alpha: float = 0.05
    primary_metric: str = "ndcg@10"
    min_lift: float = Field(0.0, description="relative lift of the primary metric needed to ship")
    guardrails: list[str] = Field(default_factory=lambda: ["coverage@10"])
    clip: float = 10.0
