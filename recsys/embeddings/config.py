"""Settings of the CLIP encoder, its fine-tuning and the backfill."""

from typing import Literal

from pydantic import Field

from recsys.configbase import ConfigModel


class ClipConfig(ConfigModel):
    model: str = Field("recsys-clip-tiny", description="open_clip model name (e.g. ViT-B-32)")
    pretrained: str | None = Field(
        None, description="hub tag (e.g. laion2b_s34b_b79k) or a local checkpoint file"
    )
    precision: Literal["float32", "bfloat16"] = Field(
        "float32", description="inference precision; bfloat16 casts the weights (never autocast)"
    )
    batch_size: int = Field(64, ge=1, description="inference batch size (encoder, backfill)")
    image_weight: float = Field(0.5, ge=0.0, le=1.0, description="weight of the image vector")
    # fine-tuning
    epochs: int = Field(24, ge=1)
    patience: int = Field(6, ge=1, description="stop after this many epochs without a better held-out recall")
    learning_rate: float = 2e-3
    train_batch_size: int = Field(128, ge=2, description="contrastive batch (negatives per step)")
    weight_decay: float = 0.1
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="held-out items for Recall@k")
    aug_scale: float = Field(0.7, gt=0.0, le=1.0, description="smallest random-crop area fraction")
    # backfill
    workers: int = Field(1, ge=0, description="DataLoader processes decoding images (0: in-process)")
    shard_rows: int = Field(512, ge=1, description="rows per resumable item_embeddings shard")
    max_image_pixels: int = Field(40_000_000, description="refuse images whose decoded size is larger")
    min_image_side: int = Field(8, ge=1, description="refuse images smaller than this (e.g. 1x1 pixels)")
