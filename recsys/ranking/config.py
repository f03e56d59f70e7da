"""Settings of the LightGBM lambdarank ranker."""

from typing import Literal

from pydantic import Field

from recsys.configbase import ConfigModel


class RankerConfig(ConfigModel):
    num_leaves: int = 15
    learning_rate: float = 0.02
    rounds: int = 500
    early_stopping: int = 50
    min_data_in_leaf: int = 100
    feature_fraction: float = 0.9
    bagging_fraction: float = Field(1.0, gt=0, le=1)
    lambda_l2: float = 0.0
    max_bin: int = 255
    candidates: int = Field(50, description="two-tower hard negatives added per request")
    max_rows: int = Field(
        5_000_000, ge=1000, description="training rows (candidates of all query groups) at most: beyond "
        "it query groups are sampled (seeded) to fit; each row costs about 0.6 KB at the peak")
    validation_fraction: float = Field(
        0.2, gt=0, lt=1, description="latest share of query groups (by time) held out for early stopping"
    )
    debias: Literal["ips", "none"] = Field(
        "ips", description="position de-biasing: inverse examination-propensity weights on clicks, or none"
    )
    ips_clip: float = Field(10.0, ge=1, description="largest inverse-propensity weight")
    history: int = Field(20, ge=1, description="recent clicks that form a user's CLIP/category/price profile")
    popularity_days: float = Field(
        7.0, gt=0, description="window (days before the last event) for the popularity fallback"
    )
    base_scales: tuple[float, ...] = Field(
        (3.0,), description="a ranker trained by stacking starts every score at EASE's score times "
        "one of these (chosen on the early-stopping groups): the trees learn a correction to EASE")
    model_alias: str = Field("champion", description="ranker alias that serving and batch load")
    compile: bool = Field(
        True, description="where serving and batch load the ranker, compile its trees to machine code "
        "(lleaves/LLVM, cached under the workspace's models/compiled); used only where it reproduces "
        "LightGBM's scores on probe rows, else LightGBM predicts")
    exclude_seen: Literal["all", "recent", "none"] = Field(
        "all", description="items never recommended to a user: every item they clicked in the known log "
        "(all), their last `history` clicks (recent, for shops where repeat purchases matter), or none")
