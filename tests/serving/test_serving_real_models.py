"""The app over real trained models: a small embedded world, Feast features, two-tower, ranker."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import polars as pl
import pytest
from fastapi.testclient import TestClient
from serving_helpers import API_KEY, wait_ready

from recsys.data import columns as C
from serving.app import create_app

pytestmark = pytest.mark.slow
BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "serving.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_serving", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_real_models_serve_ranked_recommendations(tmp_path: Path) -> None:
    bench = _bench()
    home = tmp_path / "ws"
    bench.build_world(home, items=800, users=600, impressions=30_000)
    settings = bench.bench_settings(home, 800, 600, 30_000).model_copy(deep=True)
    settings.serving.api_key = API_KEY
    user = pl.read_parquet(home / "data" / "impressions.parquet", columns=[C.USER_ID])[C.USER_ID][0]
    with TestClient(create_app(settings)) as c:
        wait_ready(c, timeout=300)
        ready = c.get("/readyz")
        assert ready.status_code == 200, ready.json()
        body = c.get(f"/v1/users/{user}/recommendations", params={"k": 10}).json()
        assert body["fallback"] is None and not body["degraded"] and len(body["items"]) == 10
        assert body["ranker_version"] == "ranker/v1" and body["retrieval_version"] == "retrieval/v1"
        assert {"user_features", "features", "retrieval", "ranking"} <= set(body["timings_ms"])
        cold = c.get("/v1/users/never-seen/recommendations", params={"k": 5}).json()
        assert cold["fallback"] == "popular" and len(cold["items"]) == 5
        assert c.post("/v1/admin/reload", headers={"X-API-Key": API_KEY}).status_code == 200
        assert c.get(f"/v1/users/{user}/recommendations").json()["ranker_version"] == "ranker/v1"
