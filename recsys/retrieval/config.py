"""Settings of the two-tower retrieval model and its ANN index."""

from typing import Literal

from pydantic import Field

from recsys.configbase import ConfigModel


class RetrievalConfig(ConfigModel):
    dim: int = Field(64, ge=2, description="size of user and item vectors")
    hidden: int = Field(128, ge=2, description="hidden width of each tower's MLP")
    clip_dim: int = Field(128, ge=0, description="PCA size of the CLIP inputs (0: keep them whole)")
    price_buckets: int = Field(8, ge=1)
    user_buckets: int = Field(100_003, ge=1, description="hash buckets of the user-id embedding")
    history: int = Field(20, ge=1, description="recent clicks pooled by the user tower")
    epochs: int = Field(20, ge=1, description="maximum epochs (early stopping usually ends sooner)")
    batch_size: int = Field(1024, ge=2)
    learning_rate: float = 3e-3
    temperature: float = 0.05
    item_id_dropout: float = Field(0.3, ge=0.0, le=1.0)
    uniform_negatives: int = Field(0, ge=0, description="uniform negatives mixed with the in-batch ones")
    precision: Literal["float32", "bfloat16"] = Field(
        "bfloat16", description="forward pass under bf16 autocast (4x faster matmuls on AVX512-BF16)")
    patience: int = Field(2, ge=1, description="epochs without a better validation Recall@eval_k")
    eval_k: int = Field(50, ge=1)
    split: Literal["auto", "temporal", "random"] = Field(
        "auto", description="temporal (global time cut) or random (RecBole per-user 80/10/10); "
        "auto: random for a click-only log, temporal for a log of impressions")
    cold_item_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="share of items whose train/validation clicks are held out, "
        "to measure cold-start items (the registered model then lacks those clicks: an evaluation setting)")
    user_features: bool = Field(True, description="use Feast user_behaviour features (temporal split)")
    index: Literal["auto", "exact", "hnsw", "ivf"] = "auto"
    exact_below: int = Field(50_000, description="catalogues smaller than this use exact search")
    candidates: int = 300
    ease: bool = Field(True, description="fit and register EASE (closed-form item-item) beside the two-tower")
    ease_lambdas: tuple[float, ...] = Field(
        (50.0, 100.0, 200.0, 400.0, 800.0, 1600.0), description="EASE λ grid, chosen on the validation part")
    ease_max_items: int = Field(
        10_000, ge=2, description="EASE keeps the most-clicked items up to this (fit memory ~8 n² bytes)")
    ease_candidates: int = Field(100, ge=0, description="EASE candidates added to the two-tower's")
