"""Settings of the CLIP encoder, its fine-tuning and the backfill."""

from typing import Literal

from pydantic import Field

from recsys.configbase import ConfigModel


class ClipConfig(ConfigModel):
    model: str = Field("recsys-clip-tiny", description="open_clip model name (e.g. ViT-B-32)")
    pretrained: str | None = Field(
        None, description="hub tag (e.g. laion2b_s34b_b79k) or a local checkpoint file"
    )
    precision: Literal["float32", "bfloat16"] = "float32"
    batch_size: int = 64
    image_weight: float = Field(0.5, ge=0.0, le=1.0, description="weight of the image vector")
    epochs: int = 8
    learning_rate: float = 1e-3
    workers: int = 1
    max_image_pixels: int = 40_000_000
