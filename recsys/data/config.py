"""Settings of the embedded world (the simulator) and of imports."""

from pydantic import Field

from recsys.configbase import ConfigModel


class WorldConfig(ConfigModel):
    """Size and shape of the simulated shop; sized for a laptop demo by default."""

    items: int = Field(2000, ge=10)
    users: int = Field(5000, ge=10)
    days: int = Field(28, ge=1)
    impressions: int = Field(600_000, ge=100, description="target number of logged impressions")
    slate_size: int = Field(10, ge=1)
    temperature: float = Field(
        1.0, gt=0.0, description="the logging policy's Plackett-Luce (softmax) temperature over its "
        "scores: lower shows its top items more often, higher explores more")
    candidates: int = Field(
        2000, ge=1, description="the logging policy samples each slate from its top N items per "
        "segment and day (items outside never show; the cost of exact propensities grows with N)")
    missing_image_rate: float = Field(0.15, ge=0.0, le=1.0)
    image_size: int = 128
    images: bool = True


class ImportConfig(ConfigModel):
    min_rating: float = Field(0.0, description="ratings >= this become clicks (0: every rating)")
    quarantine: bool = True
    max_bad_share: float = Field(
        0.1, ge=0.0, le=1.0,
        description="an import with a larger share of quarantined rows fails (unless --allow-partial)",
    )
