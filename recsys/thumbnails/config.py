"""Settings of the text-conditioned diffusion model that draws missing item images."""

from typing import Literal

from pydantic import Field

from recsys.configbase import ConfigModel


class ThumbnailConfig(ConfigModel):
    backend: Literal["embedded", "pipeline"] = Field(
        "embedded", description="embedded: small UNet trained here; pipeline: diffusers text2img"
    )
    pipeline: str | None = Field(None, description="local folder or hub id of a diffusers pipeline")
    resolution: int = 32
    output_size: int = 128
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 2e-4
    steps: int = 25
    guidance_scale: float = 3.0
    cond_dropout: float = 0.1
    precision: Literal["float32", "bfloat16"] = "float32"
