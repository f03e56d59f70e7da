"""Batch recommendations on a local Ray instance (`ray.init` capped at the configured CPUs, on
127.0.0.1 only) give the local path's parquet."""

from __future__ import annotations

import os

import polars as pl
import psutil
import pytest

from recsys.config import load_settings
from recsys.data.tables import save_table
from recsys.distributed.cluster import LOOPBACK, ray_session
from recsys.distributed.config import RayConfig
from recsys.workspace import Workspace

pytestmark = pytest.mark.integration


def _listening_addresses() -> set[str]:
    """The addresses this process and its children (the Ray instance) listen on."""
    me = psutil.Process()
    pids = {me.pid, *(p.pid for p in me.children(recursive=True))}
    return {c.laddr.ip for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tracking_store, conftest_of):
    from training.ranker import train_ranker

    world = conftest_of("ranking").make_world(n_items=60, n_users=50, seed=5)
    home = tmp_path_factory.mktemp("ray-rec") / "ws"
    settings = load_settings(**tracking_store, home=str(home), **{
        "ranker.rounds": 10, "ranker.candidates": 8, "retrieval.candidates": 25, "ray.num_cpus": 2,
        "ray.partitions_per_worker": 3})
    ws = Workspace.at(settings.home)
    for name in ("items", "item_embeddings", "impressions"):
        save_table(ws, name, world[name])
    train_ranker(settings, ws, None, promote=True, retrieval_uri="clip-profile")
    return settings, ws


def test_recommend_on_a_local_instance_matches_the_local_path(trained, tmp_path, monkeypatch) -> None:
    from recsys.rules import Rules
    from training.recommend import recommend_batch
    from training.recommend_ray import partitions, recommend_on_ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    settings, ws = trained
    rules = Rules.build(None, None, None, None, None, 2, 0.0)  # at most 2 per category
    local = recommend_batch(settings, ws, None, 6, None, tmp_path / "local.parquet", rules=rules)
    with ray_session(RayConfig(num_cpus=2)) as where:
        assert where == "local"
        import ray

        assert ray.cluster_resources()["CPU"] == 2
        assert _listening_addresses() <= {LOOPBACK, "::ffff:127.0.0.1"}, _listening_addresses()
        on_ray = recommend_on_ray(settings, ws, None, 6, None, tmp_path / "ray.parquet", rules=rules)
    for field in ("users", "rows", "fallback_users", "versions"):
        assert getattr(on_ray, field) == getattr(local, field), field
    a, b = pl.read_parquet(local.out), pl.read_parquet(on_ray.out)
    assert a.height == local.users * 6 and a.equals(b)  # same users, items, ranks, scores, reasons, order
    assert [len(p) for p in partitions([str(i) for i in range(10)], 4)] == [3, 3, 2, 2]
    assert partitions(["a"], 4) == [["a"]]
    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") is None  # the loopback switch is restored
