"""Settings of the two-tower retrieval model and its ANN index."""

from typing import Literal

from pydantic import Field

from recsys.configbase import ConfigModel


class RetrievalConfig(ConfigModel):
    dim: int = 64
    user_buckets: int = 100_003
    history: int = 20
    epochs: int = 10
    batch_size: int = 1024
    learning_rate: float = 3e-3
    temperature: float = 0.05
    item_id_dropout: float = 0.3
    uniform_negatives: int = 0
    patience: int = 2
    eval_k: int = 50
    index: Literal["auto", "exact", "hnsw"] = "auto"
    exact_below: int = Field(200_000, description="catalogues smaller than this use exact search")
    candidates: int = 300
