"""The app over real trained models, in the default suite: a small embedded world (200 items, 150
users, 5,000 impressions), behaviour features materialized into the Feast online store, the
two-tower, EASE and the LightGBM ranker trained and promoted in MLflow, all loaded by the real
`load_state` (about 20 s to build on 2 cores). The benchmark's world builder makes it, so the
benchmark and this test serve the same kind of world."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import polars as pl
import pytest
from fastapi.testclient import TestClient
from serving_helpers import API_KEY, RECENT_CLICKS, wait_ready

from recsys.config import Settings
from recsys.data import columns as C
from serving.app import create_app
from serving.process import SETTINGS_ENV
from serving.protocols import OnlineFeatureReader, RecommendationModel

pytestmark = pytest.mark.integration  # Feast, MLflow, LightGBM and torch, for real
SIZES = {"items": 200, "users": 150, "impressions": 5_000}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, serving_bench: ModuleType) -> Settings:
    bench = serving_bench
    home = tmp_path_factory.mktemp("real-models") / "ws"
    bench.build_world(home, **SIZES)
    settings = bench.bench_settings(home, *SIZES.values()).model_copy(deep=True)
    settings.serving.api_key = API_KEY
    return settings


def test_real_models_serve_ranked_recommendations(trained: Settings) -> None:
    log = pl.read_parquet(Path(trained.home) / "data" / "impressions.parquet", columns=[C.USER_ID, C.CLICKED])
    user = log.filter(pl.col(C.CLICKED))[C.USER_ID].sort()[0]
    with TestClient(create_app(trained)) as c:
        wait_ready(c, timeout=300)
        ready = c.get("/readyz")
        assert ready.status_code == 200, ready.json()
        state = c.app.state.service.state  # the real parts implement the Protocols the doubles do
        assert isinstance(state.recommender, RecommendationModel)
        assert isinstance(state.features, OnlineFeatureReader) and RECENT_CLICKS in state.features.user(user)
        body = c.get(f"/v1/users/{user}/recommendations", params={"k": 10}).json()
        assert body["fallback"] is None and not body["degraded"] and len(body["items"]) == 10
        assert body["ranker_version"] == "ranker/v1" and body["retrieval_version"] == "retrieval/v1"
        assert {"user_features", "features", "retrieval", "ranking"} <= set(body["timings_ms"])
        assert all(it["reason"] for it in body["items"])
        cold = c.get("/v1/users/never-seen/recommendations", params={"k": 5}).json()
        assert cold["fallback"] == "popular" and len(cold["items"]) == 5
        assert c.post("/v1/admin/reload", headers={"X-API-Key": API_KEY}).status_code == 200
        assert c.get(f"/v1/users/{user}/recommendations").json()["ranker_version"] == "ranker/v1"


def test_the_no_op_baseline_is_in_the_benchmarks_app_only(trained: Settings, serving_bench: ModuleType,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SETTINGS_ENV, trained.model_dump_json())  # as start_server hands it over
    with TestClient(serving_bench.bench_app()) as bench, TestClient(create_app(trained)) as production:
        wait_ready(bench, timeout=300)
        wait_ready(production, timeout=300)
        assert bench.get("/v1/noop").json() == {"ok": True}
        assert production.get("/v1/noop").status_code == 404
        assert bench.get("/readyz").status_code == 200  # otherwise the production app
