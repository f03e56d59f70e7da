"""All configuration in one pydantic-settings model.

Precedence (lowest first): defaults < `recsys.toml` (in the working directory, or the file named
by `RECSYS_CONFIG`) < environment variables `RECSYS_*` (nested with `__`, e.g.
`RECSYS_CLIP__PRECISION=bfloat16`) < CLI flags (passed as keyword overrides).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from recsys.configbase import ConfigModel
from recsys.data.config import ImportConfig, WorldConfig
from recsys.distributed.config import RayConfig
from recsys.embeddings.config import ClipConfig
from recsys.evaluation.config import EvaluationConfig
from recsys.ranking.config import RankerConfig
from recsys.retrieval.config import RetrievalConfig
from recsys.thumbnails.config import ThumbnailConfig


class FeatureStoreConfig(ConfigModel):
    online_store: Literal["sqlite", "redis"] = "sqlite"
    redis_url: str = Field("127.0.0.1:6379", description="host:port of the Redis online store")
    project: str = "recsys"
    last_clicked: int = Field(20, description="length of a user's last-clicked item list")
    ctr_prior_clicks: float = 1.0
    ctr_prior_impressions: float = 20.0
    stream: bool = Field(True, description="while serving, push each accepted event's user features to "
                         "the online store (Feast push); on once `recsys features build` has run")


class TrackingConfig(ConfigModel):
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default sqlite:///<home>/mlflow/mlflow.db"
    )
    artifact_root: str | None = Field(None, description="default <home>/mlflow/artifacts")


class ServingConfig(ConfigModel):
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    alias: str = "champion"
    api_key: str | None = Field(None, description="key for /v1/admin/*; admin is off when unset")
    exploration: Literal["none", "softmax"] = Field(
        "softmax", description="softmax: Plackett-Luce sampling over the ranker's scores of the top "
        "candidates, each item's exact propensities in the response (what off-policy evaluation of "
        "the next model needs); none: the top k as ranked")
    poll_seconds: float = Field(0.0, description="poll the registry alias every N s (0: off)")
    store_check_seconds: float = Field(
        30.0, ge=0, description="probe the online feature store every N s and reopen it when it fails or "
        "its sqlite file was replaced (0: off); a failing store logs one line per this interval")
    max_body_bytes: int = 65_536
    event_queue: int = 100_000
    event_batch: int = 1000
    event_flush_seconds: float = Field(1.0, gt=0, description="longest wait before writing a partial batch")
    event_durability: Literal["fsync", "write", "memory"] = Field(
        "fsync", description="before 202: fsync the event log (survives a power cut), write it (survives "
        "kill -9), or nothing (memory: lost on kill -9 until the parquet flush)")
    event_dedup_window: int = Field(
        200_000, ge=0, description="recent (request_id, position) pairs kept to drop duplicates (0: off)")
    temperature: float = Field(
        0.05, gt=0, description="softmax exploration temperature over ranker scores (on the embedded "
        "world the top-10 scores span ~0.5: 0.05 costs ~1% of NDCG@10, 0.1 ~4%, 0.25 ~17%; "
        "benchmarks/exploration.py measures it for your ranker); higher explores more")
    max_in_flight: int = Field(
        8, ge=0, description="recommendation requests one worker holds at once; beyond it 503 with "
        "Retry-After at once, so the served keep their latency (0: no limit). A served request waits "
        "up to ~2-3 x this many requests' CPU: about latency budget / (3 x CPU per request)")
    recent_clicks: int = Field(12, ge=0, le=100, description="recent clicks shown on /ui/users/{id}")
    image_roots: list[str] = Field(
        default_factory=list,
        description="folders besides the workspace and import folders whose images /ui/images may serve",
    )


def _config_file() -> Path:
    return Path(os.environ.get("RECSYS_CONFIG", "recsys.toml"))


class Settings(BaseSettings):
    """The effective configuration of one run."""

    model_config = SettingsConfigDict(
        env_prefix="RECSYS_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    home: Path = Field(Path(".recsys"), description="workspace folder for every artifact")
    seed: int = 42
    device: str = Field("auto", description="torch device: auto (CUDA where present), cpu, cuda")
    threads: int = Field(1, ge=1, description="threads per process (torch, LightGBM, OpenMP)")
    memory_gib: float | None = Field(
        None, gt=0, description="peak memory a heavy step may plan for (GiB); a plan above it stops "
        "before the step starts. Unset: 80% of this machine's (or container's) memory")
    world: WorldConfig = WorldConfig()
    imports: ImportConfig = ImportConfig()
    clip: ClipConfig = ClipConfig()
    thumbnails: ThumbnailConfig = ThumbnailConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    ranker: RankerConfig = RankerConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    features: FeatureStoreConfig = FeatureStoreConfig()
    tracking: TrackingConfig = TrackingConfig()
    serving: ServingConfig = ServingConfig()
    ray: RayConfig = RayConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=_config_file())
        return (init_settings, env_settings, toml)


def load_settings(**overrides: Any) -> Settings:
    """Build settings; `overrides` are CLI flags, nested with dots (`"clip.precision"`)."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        parts = key.split(".")
        cursor = nested
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = value
    settings = Settings(**nested)
    if nested:
        # pydantic-settings lets init kwargs replace a whole nested model; merge instead so a
        # flag such as clip.precision keeps the file's and env's other clip settings.
        base = Settings().model_dump()
        settings = Settings(**_deep_merge(base, nested))
    return settings


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


SECRET_WORDS = ("key", "password", "secret", "token")
MASK = "***"


def is_secret(name: str) -> bool:
    """A setting whose value must not be shown: its name contains key, password, secret or token."""
    return any(word in name.lower() for word in SECRET_WORDS)


def masked(values: Any, name: str = "") -> Any:
    """`values` (a settings dump) with secrets as `***`: set values of secret-named settings and
    the password in any `scheme://user:password@host` URL."""
    if isinstance(values, dict):
        return {k: masked(v, k) for k, v in values.items()}
    if isinstance(values, list | tuple):
        return [masked(v, name) for v in values]
    if values is not None and is_secret(name):
        return MASK
    if isinstance(values, str):
        return re.sub(r"(://[^/@:\s]*:)[^/@\s]+@", rf"\1{MASK}@", values)
    return values
