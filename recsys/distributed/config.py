"""Settings of the Ray engine (`recsys ... --engine ray`)."""

from pydantic import Field

from recsys.configbase import ConfigModel


class RayConfig(ConfigModel):
    address: str = Field(
        "", description="Ray cluster address (ray://host:10001 or host:6379); empty: $RAY_ADDRESS if set, "
        "else start a local instance on 127.0.0.1 capped at num_cpus and object_store_mb")
    num_cpus: int = Field(2, ge=1, description="CPUs of the local instance (ignored on a cluster)")
    object_store_mb: int = Field(
        512, ge=80, description="object store of the local instance, MiB (ignored on a cluster)")
    workers: int = Field(
        0, ge=0, description="actors per job (one encoder or Recommender each); 0: one per CPU Ray reports")
    batch_size: int = Field(64, ge=1, description="items per encoder call of the backfill's actors")
    partitions_per_worker: int = Field(
        4, ge=1, description="user (and item) partitions per actor (recommend, features): smaller parts "
        "balance better; each actor has its next part shipped while it computes one")
    partition_events: int = Field(
        1_000_000, ge=1, description="the feature build's events per partition at most (more partitions than "
        "partitions_per_worker per actor when the log needs them): an actor's memory follows its partition, "
        "and the job's work does not depend on the number of workers")
