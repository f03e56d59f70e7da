"""Backfill and feature jobs on a real Ray cluster (`ray start --head`) give the local results."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from recsys.config import Settings, load_settings
from recsys.data import columns as C
from recsys.data.tables import load_table, save_table
from recsys.distributed.cluster import ray_session
from recsys.embeddings.config import ClipConfig
from recsys.embeddings.encoder import ClipEncoder
from recsys.workspace import Workspace

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def on_cluster(ray_head: str) -> Iterator[str]:
    """This process joined to the cluster for the module (each job reuses the session)."""
    from recsys.distributed.config import RayConfig

    with ray_session(RayConfig(address=ray_head)) as where:
        assert where == ray_head
        yield ray_head


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return ClipEncoder(ClipConfig()).save_checkpoint(tmp_path_factory.mktemp("ckpt") / "clip.pt")


def _settings(home: Path, tracking_store: dict[str, str], ray_head: str, **extra: object) -> Settings:
    return load_settings(**tracking_store, home=str(home), device="cpu", **{"ray.address": ray_head, **extra})


def _vectors(df: pl.DataFrame, column: str) -> np.ndarray:
    return np.array(df[column].to_list(), dtype=np.float32)


def test_backfill_on_ray_matches_local_and_resumes_by_hash(on_cluster, checkpoint, tmp_path, tracking_store,
                                                            monkeypatch, conftest_of) -> None:
    from training.backfill import backfill
    from training.backfill_ray import backfill_on_ray

    monkeypatch.setenv("RECSYS_CONFIG", str(tmp_path / "none.toml"))
    make_catalogue = conftest_of("embeddings").make_catalogue
    opts = {"clip.pretrained": str(checkpoint), "clip.workers": 0, "clip.batch_size": 16,
            "clip.shard_rows": 8, "ray.batch_size": 8, "ray.workers": 1}
    local_s = _settings(tmp_path / "local", tracking_store, on_cluster, **opts)
    ray_s = _settings(tmp_path / "ray", tracking_store, on_cluster, **opts)
    local_ws, ray_ws = Workspace.at(local_s.home), Workspace.at(ray_s.home)
    catalogue = make_catalogue(local_ws, 40, seed=4)
    make_catalogue(ray_ws, 40, seed=4)

    backfill(local_s, local_ws, push_to_feast=False)
    first = backfill_on_ray(ray_s, ray_ws, push_to_feast=False)
    assert first.embedded == catalogue.height and "ray" in first.engine
    a, b = load_table(local_ws, "item_embeddings"), load_table(ray_ws, "item_embeddings")
    same = [C.ITEM_ID, C.IMAGE_SOURCE, C.MODEL_VERSION, C.CONTENT_HASH]
    assert a.select(same).equals(b.select(same))
    for col in (C.TEXT_EMBEDDING, C.EMBEDDING):
        np.testing.assert_allclose(_vectors(a, col), _vectors(b, col), atol=1e-4)
    assert a[C.IMAGE_EMBEDDING].is_null().equals(b[C.IMAGE_EMBEDDING].is_null())

    again = backfill_on_ray(ray_s, ray_ws, push_to_feast=False)  # resumable by content hash
    assert (again.embedded, again.skipped) == (0, catalogue.height)


@pytest.mark.slow
def test_backfill_on_ray_embeds_only_changed_items_after_a_local_run(on_cluster, checkpoint, tmp_path,
                                                                      tracking_store, monkeypatch,
                                                                      conftest_of) -> None:
    from training.backfill import backfill
    from training.backfill_ray import backfill_on_ray

    monkeypatch.setenv("RECSYS_CONFIG", str(tmp_path / "none.toml"))
    settings = _settings(tmp_path / "ws", tracking_store, on_cluster, **{
        "clip.pretrained": str(checkpoint), "clip.workers": 0, "clip.batch_size": 16, "ray.batch_size": 8})
    ws = Workspace.at(settings.home)
    catalogue = conftest_of("embeddings").make_catalogue(ws, 30, seed=5)
    backfill(settings, ws, push_to_feast=False)
    before = load_table(ws, "item_embeddings")
    changed = catalogue.with_columns(pl.when(pl.col(C.ITEM_ID) == "i00003").then(pl.lit("A brand new lamp."))
                                     .otherwise(pl.col(C.DESCRIPTION)).alias(C.DESCRIPTION))
    save_table(ws, "items", changed)
    result = backfill_on_ray(settings, ws, push_to_feast=False)
    assert (result.embedded, result.skipped) == (1, catalogue.height - 1)
    after = load_table(ws, "item_embeddings")
    moved = after.filter(pl.col(C.CONTENT_HASH) != before[C.CONTENT_HASH])
    assert moved[C.ITEM_ID].to_list() == ["i00003"]


def test_feature_build_on_ray_gives_the_local_rows(on_cluster, tmp_path, tracking_store, monkeypatch,
                                                  conftest_of) -> None:
    """Also when the log is read by several cuts (the table holds 6 row groups) into more
    partitions than `partitions_per_worker` per actor (12 of at most 500 events each). The Ray
    sources are folders of parts (one per partition), which Feast's point-in-time join and
    materialize's latest rows read as they read the local build's files."""
    import mlflow
    import pyarrow.parquet as pq

    from features.jobs import build_features, latest_rows
    from features.jobs_ray import build_features_on_ray
    from features.training_set import build_training_set

    monkeypatch.setenv("RECSYS_CONFIG", str(tmp_path / "none.toml"))
    world = conftest_of("features").make_world(n_items=40, n_users=50, n_impressions=6000, days=45, seed=2)
    entity = world["impressions"].select(C.USER_ID, C.ITEM_ID, C.EVENT_TIMESTAMP).gather_every(30)
    end = world["impressions"][C.EVENT_TIMESTAMP].max()
    frames, runs, joined, latest = {}, {}, {}, {}
    for engine, build in (("local", build_features), ("ray", build_features_on_ray)):
        settings = _settings(tmp_path / engine, tracking_store, on_cluster,
                             **{"ray.partitions_per_worker": 3, "ray.partition_events": 500})
        ws = Workspace.at(settings.home)
        for name in ("items", "users", "impressions"):
            save_table(ws, name, world[name])
        log_file = ws.table("impressions")
        pl.read_parquet(log_file).write_parquet(log_file, row_group_size=1000)
        assert pq.ParquetFile(log_file).metadata.num_row_groups == 6
        result = build(settings, ws)
        frames[engine] = {v: pl.read_parquet(p) for v, p in result.paths.items()}
        runs[engine] = mlflow.get_run(result.run_id)
        joined[engine] = build_training_set(settings, entity, ["user_behaviour", "item_behaviour"])
        latest[engine] = {v: latest_rows(ws, v, end) for v in ("user_behaviour", "item_behaviour")}
    for view in ("user_behaviour", "item_behaviour"):
        assert result.paths[view].is_symlink() and len(list(result.paths[view].glob("part-*.parquet"))) == 12
    for view, local in frames["local"].items():
        key = C.USER_ID if view.startswith("user") else C.ITEM_ID
        ray = frames["ray"][view]
        assert local.height > 100
        assert local.sort(key, C.EVENT_TIMESTAMP).equals(ray.sort(key, C.EVENT_TIMESTAMP)), view
    assert runs["ray"].data.params["ray_partitions"] == "12"
    order = [C.USER_ID, C.ITEM_ID, C.EVENT_TIMESTAMP]
    assert joined["local"].drop_nulls().height > 100
    assert joined["local"].sort(order).equals(joined["ray"].sort(order))
    for view, key in (("user_behaviour", C.USER_ID), ("item_behaviour", C.ITEM_ID)):
        assert latest["local"][view].height > 10
        assert latest["local"][view].sort(key).equals(latest["ray"][view].sort(key)), view



def test_feature_build_on_ray_of_an_empty_log_writes_empty_sources(on_cluster, tmp_path, tracking_store,
                                                                   monkeypatch, conftest_of) -> None:
    from features.jobs_ray import build_features_on_ray

    monkeypatch.setenv("RECSYS_CONFIG", str(tmp_path / "none.toml"))
    world = conftest_of("features").make_world(n_items=10, n_users=5, n_impressions=50, days=3, seed=1)
    settings = _settings(tmp_path / "empty", tracking_store, on_cluster)
    ws = Workspace.at(settings.home)
    save_table(ws, "items", world["items"])
    save_table(ws, "impressions", world["impressions"].clear())
    result = build_features_on_ray(settings, ws)
    assert result.rows == {"item_behaviour": 0, "user_behaviour": 0}
    assert pl.read_parquet(result.paths["user_behaviour"]).height == 0

def test_buckets_put_a_key_in_the_same_bucket_in_every_process(on_cluster) -> None:
    """The cut calls of the Ray feature build run in several processes: a user's events must
    meet in one partition, whichever process cut them."""
    import ray

    from features.jobs_ray import buckets

    events = pl.DataFrame({C.USER_ID: [f"u{i % 97}" for i in range(2000)], "row": range(2000)})
    here = buckets(events, C.USER_ID, 6)
    assert sum(b.num_rows for b in here) == events.height
    users = [set(b.column(C.USER_ID).to_pylist()) for b in here]
    assert all(users) and all(not (u & v) for i, u in enumerate(users) for v in users[i + 1:])
    assert all(b.column("row").to_pylist() == sorted(b.column("row").to_pylist()) for b in here)
    there = ray.get(ray.remote(buckets).remote(events, C.USER_ID, 6))  # in a worker process
    assert [b.column(C.USER_ID).to_pylist() for b in there] == [b.column(C.USER_ID).to_pylist() for b in here]


def test_ordered_results_keep_the_order_and_use_every_actor(on_cluster) -> None:
    """Items come back in their order whatever order they finish in; every actor takes some;
    the items are read lazily, at most `depth` per actor ahead."""
    import os
    import time

    from recsys.distributed.tasks import actors, ordered_results

    class Slow:
        def run(self, i: int) -> tuple[int, int]:
            time.sleep(0.02 * (i % 3))  # later items often finish first
            return i, os.getpid()

    pulled: list[int] = []

    def items(n: int):
        for i in range(n):
            pulled.append(i)
            yield i

    with actors(Slow, 2) as pool:
        out = list(ordered_results(pool, lambda a, i: a.run.remote(i), items(12), depth=2))
        assert [i for i, _ in out] == list(range(12))
        assert len({pid for _, pid in out}) == 2
        pulled.clear()
        first = next(ordered_results(pool[:1], lambda a, i: a.run.remote(i), items(6), depth=2))
        assert first[0] == 0 and len(pulled) <= 3  # two in flight, one more once the first finished
