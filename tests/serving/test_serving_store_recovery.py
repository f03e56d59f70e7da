"""A corrupted online store is reported and recovered: garbage in `feast/online.db` degrades the
answers and makes /readyz not ready, one line per interval is logged (not a traceback per request),
and once the file is restored one reload brings undegraded answers back (a real sqlite store)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from serving_helpers import API_KEY, VectorRecommender, build_world, make_settings, wait_ready

from features.jobs import build_features, materialize
from serving.app import create_app
from serving.state import ServingState, load_state

pytestmark = pytest.mark.integration  # Feast, and the recommender module (torch, LightGBM)


def test_a_corrupted_store_degrades_and_one_reload_after_restoring_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from recsys.recommender import Recommender

    ws = build_world(tmp_path / "ws")
    settings = make_settings(ws.root, **{"serving.store_check_seconds": 0})  # only the reload reopens
    _build_features(ws, settings)
    db = ws.feast_dir / "online.db"
    good = db.read_bytes()
    # the real loader (catalogue, online store opened on every load) with a small recommender
    monkeypatch.setattr(Recommender, "load", classmethod(lambda cls, s, ranker_uri: VectorRecommender(ws)))

    def recommend(c: TestClient) -> dict:
        r = c.get("/v1/users/u1/recommendations", params={"k": 5})
        assert r.status_code == 200, r.text
        return r.json()

    with TestClient(create_app(settings, loader=load_state)) as c:
        wait_ready(c, timeout=120)
        assert c.get("/readyz").status_code == 200, c.get("/readyz").text
        state: ServingState = c.app.state.service.state
        assert state.features is not None and recommend(c)["degraded"] is False

        db.write_bytes(b"this is not a sqlite database " * 200)  # in place: the open connection reads it
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="serving"):
            bodies = [recommend(c) for _ in range(20)]
        assert all(b["degraded"] and b["fallback"] == "popular" and len(b["items"]) == 5 for b in bodies)
        failing = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(failing) == 1 and "online feature store failing" in failing[0].getMessage()
        assert failing[0].exc_info is None, "one line, not a traceback"
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert any(r.startswith("feature store") for r in ready.json()["reasons"])
        assert str(ws.root) not in ready.text and "online.db" not in ready.text

        tmp = db.with_name(".online.db.restore")
        tmp.write_bytes(good)
        os.replace(tmp, db)  # restored as a new file: the old connection still reads the garbage
        assert recommend(c)["degraded"] is True

        r = c.post("/v1/admin/reload", headers={"X-API-Key": API_KEY})
        assert r.status_code == 200 and r.json()["ready"] is True, r.text
        assert c.get("/readyz").status_code == 200
        assert all(recommend(c)["degraded"] is False for _ in range(3))
        assert c.app.state.service.state.features is not state.features  # a new client


def test_the_periodic_check_reopens_a_replaced_store(tmp_path: Path) -> None:
    """With `serving.store_check_seconds`, a failing store is reopened without a reload."""
    ws = build_world(tmp_path / "ws")
    settings = make_settings(ws.root, **{"serving.store_check_seconds": 0.2})
    _build_features(ws, settings)
    db = ws.feast_dir / "online.db"
    good = db.read_bytes()
    loader = _features_only(ws)
    with TestClient(create_app(settings, loader=loader)) as c:
        wait_ready(c, timeout=120)
        first = c.app.state.service.state.features
        db.write_bytes(b"garbage " * 500)
        _wait(lambda: c.get("/readyz").status_code == 503)
        tmp = db.with_name(".online.db.restore")
        tmp.write_bytes(good)
        os.replace(tmp, db)
        _wait(lambda: c.get("/readyz").status_code == 200)
        assert c.app.state.service.state.features is not first
        body = c.get("/v1/users/u1/recommendations", params={"k": 5}).json()
        assert body["degraded"] is False


def _build_features(ws, settings) -> None:
    """Behaviour features built and materialized into the sqlite online store (the serving world's
    item vectors are not in the item_embeddings contract: set aside meanwhile)."""
    vectors = ws.table("item_embeddings")
    aside = vectors.with_name("aside.parquet")
    os.replace(vectors, aside)
    try:
        build_features(settings, ws)
        materialize(settings, ws, track=False)
    finally:
        os.replace(aside, vectors)


def _features_only(ws):
    from serving.state import load_catalogue, open_features

    def loader(settings, previous=None) -> ServingState:
        features, problem = open_features(settings)
        rec = VectorRecommender(ws)
        problems = (problem,) if problem else ()
        return ServingState(load_catalogue(ws), rec, features, dict(rec.versions), problems)

    return loader


def _wait(condition, timeout: float = 20.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
