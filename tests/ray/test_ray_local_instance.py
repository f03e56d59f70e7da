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
    world["items"] = world["items"].with_columns(pl.col("image_uri").cast(pl.String))  # all null
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


@pytest.mark.slow
def test_recommend_cli_on_ray_prints_one_line_and_no_ray_noise(trained, tmp_path, tracking_store) -> None:
    """`recsys recommend --all --engine ray` in a fresh process: a local instance, the local
    path's parquet, and on the console only our line (no Ray logs, dashboard or C++ lines)."""
    import subprocess
    import sys
    from pathlib import Path

    from training.recommend import recommend_batch

    settings, ws = trained
    local = recommend_batch(settings, ws, None, 5, None, tmp_path / "local.parquet")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RECSYS_"))}
    env.update({"RECSYS_CONFIG": str(tmp_path / "none.toml"), "RECSYS_PROGRESS": "0", "COLUMNS": "400",
                "RECSYS_TRACKING__TRACKING_URI": tracking_store["tracking.tracking_uri"],
                "RECSYS_TRACKING__ARTIFACT_ROOT": tracking_store["tracking.artifact_root"],
                "RECSYS_RETRIEVAL__CANDIDATES": str(settings.retrieval.candidates)})
    recsys = Path(sys.executable).parent / "recsys"
    out = tmp_path / "ray.parquet"
    proc = subprocess.run([str(recsys), "--home", str(settings.home), "recommend", "--all", "--k", "5",
                           "--engine", "ray", "--out", str(out)], env=env, capture_output=True, text=True,
                          timeout=600)
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-3000:]
    assert pl.read_parquet(out).equals(pl.read_parquet(local.out))
    lines = [line for line in console.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("✓ recommend"), console[-3000:]
