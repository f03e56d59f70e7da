"""Settings of the LightGBM lambdarank ranker."""

from pydantic import Field

from recsys.configbase import ConfigModel


class RankerConfig(ConfigModel):
    num_leaves: int = 31
    learning_rate: float = 0.05
    rounds: int = 300
    early_stopping: int = 30
    min_data_in_leaf: int = 20
    feature_fraction: float = 0.9
    candidates: int = Field(50, description="two-tower hard negatives added per request")
