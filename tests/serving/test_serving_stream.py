"""A posted click reaches the user's recommendations through the stream (Feast push), over HTTP,
with a real trained recommender, real Feast features (sqlite) and the real event writer."""

from __future__ import annotations

import importlib.util
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from fastapi.testclient import TestClient
from serving_helpers import wait_ready

from recsys.config import Settings, load_settings
from recsys.data import columns as C
from recsys.data.tables import save_table
from recsys.workspace import Workspace
from serving.app import create_app

pytestmark = pytest.mark.integration
VISIBLE_WITHIN = 2.0  # seconds: what issue 17 asks; the benchmark measures ~50 ms here
_spec = importlib.util.spec_from_file_location("ranking_world",
                                               Path(__file__).parents[1] / "ranking" / "conftest.py")
_world = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_world)


SMALL = {"ranker.rounds": 30, "ranker.candidates": 8, "retrieval.candidates": 25,
         "serving.event_flush_seconds": 0.2, "serving.store_check_seconds": 0}


def trained_workspace(home: Path, **overrides: Any) -> Settings:
    """A small world with its behaviour features built and materialized, and a ranker (over
    CLIP-profile retrieval) promoted to champion."""
    from features.jobs import build_features, materialize
    from training.ranker import train_ranker

    world = _world.make_world(seed=3)
    settings = load_settings(home=str(home), **{**SMALL, **overrides})
    ws = Workspace.at(settings.home)
    save_table(ws, "items", world["items"].with_columns(pl.col(C.IMAGE_URI).cast(pl.String)))  # contract: str
    save_table(ws, "impressions", world["impressions"])
    build_features(settings, ws)
    materialize(settings, ws, track=False)
    save_table(ws, "item_embeddings", world["item_embeddings"])
    train_ranker(settings, ws, None, promote=True, retrieval_uri="clip-profile")
    return settings


_redis_spec = importlib.util.spec_from_file_location("feature_fixtures",
                                                     Path(__file__).parents[1] / "features" / "conftest.py")
_redis = importlib.util.module_from_spec(_redis_spec)
_redis_spec.loader.exec_module(_redis)
USERS = {"sqlite": ("u1", "u2", "u5"), "redis": ("u3", "u4", "u6")}  # one workspace: other users


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tracking_store) -> Settings:
    return trained_workspace(tmp_path_factory.mktemp("stream") / "ws", **tracking_store)


@pytest.fixture(params=["sqlite", "redis"])
def served(request: pytest.FixtureRequest, trained: Settings) -> Iterator[tuple[Settings, TestClient]]:
    """The app over the trained workspace, its online store sqlite or a real redis-server
    (started here, the batch features materialized into it)."""
    from features.jobs import materialize

    settings, redis = trained, None
    if request.param == "redis":
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        redis = _redis.RedisServer(binary)
        redis.start()
        settings = trained.model_copy(update={"features": trained.features.model_copy(
            update={"online_store": "redis", "redis_url": redis.url})})
        materialize(settings, track=False)
    try:
        with TestClient(create_app(settings)) as client:
            wait_ready(client, timeout=300)
            assert client.app.state.stream is not None and client.app.state.stream.wait_ready(120)
            yield settings, client
    finally:
        if redis is not None:
            redis.stop()


def recommended(client: TestClient, user: str) -> dict:
    body = client.get(f"/v1/users/{user}/recommendations", params={"k": 10}).json()
    assert body["fallback"] is None and not body["degraded"], body
    return body


def click(client: TestClient, user: str, item: str) -> None:
    r = client.post("/v1/events", json={"events": [{"request_id": uuid.uuid4().hex, "user_id": user,
                                                   "item_id": item, "position": 0, "clicked": True}]})
    assert r.status_code == 202 and r.json()["accepted"] == 1, r.text


def test_a_posted_click_leaves_the_users_recommendations(served) -> None:
    from features.online import OnlineFeatures

    settings, client = served
    for user in USERS[settings.features.online_store]:
        top = recommended(client, user)["items"][0]["item_id"]
        click(client, user, top)
        deadline = time.monotonic() + VISIBLE_WITHIN
        while top in [i["item_id"] for i in recommended(client, user)["items"]]:
            if time.monotonic() > deadline:
                pytest.fail(f"{top}, clicked by {user}, still recommended {VISIBLE_WITHIN} s after the 202 "
                            f"(stream: {client.app.state.stream.stats})")
            time.sleep(0.01)
        # the click heads the user's history: the user vector and the ranker's profile follow it
        features = OnlineFeatures(settings).user(user)
        assert features["user_behaviour__last_clicked_items"][0] == top
        assert features["user_behaviour__clicks_1d"] >= 1
    assert client.app.state.stream.stats.failures == 0
    lines = [line for line in client.get("/metrics").text.splitlines() if line.startswith("recsys_stream_")]
    metrics = {name: float(value) for name, value in (line.split(" ") for line in lines)}
    assert metrics["recsys_stream_rows_pushed_total"] >= 3 and metrics["recsys_stream_up"] == 1.0
    assert metrics["recsys_stream_push_failures_total"] == 0


def test_the_stream_is_off_by_setting(trained: Settings, tmp_path: Path) -> None:
    settings = trained
    off = settings.model_copy(update={"features": settings.features.model_copy(update={"stream": False})})
    from serving.stream import start_user_feature_stream, stream_enabled

    assert stream_enabled(settings) and not stream_enabled(off)
    assert start_user_feature_stream(off) is None
    bare = load_settings(home=str(tmp_path / "empty"))
    assert not stream_enabled(bare)  # no feature registry yet: nothing online to update


@pytest.mark.slow
def test_clicks_become_training_data_and_the_server_picks_up_the_new_ranker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """serve -> clicks -> `recsys import impressions <events folder>` -> `recsys train ranker
    --promote` -> the server polls the champion alias, reloads, and its answers name the new
    version. `--force`: the new ranker need not beat the old one on validation for this test."""
    from typer.testing import CliRunner

    from recsys.cli import app as cli
    from recsys.data.tables import load_table
    from serving.events import read_events

    home = tmp_path / "ws"
    monkeypatch.setenv("RECSYS_HOME", str(home))  # the CLI's workspace
    monkeypatch.delenv("RECSYS_CONFIG", raising=False)
    for key, value in {**SMALL, "serving.poll_seconds": 0.5}.items():
        monkeypatch.setenv("RECSYS_" + key.upper().replace(".", "__"), str(value))
    settings = trained_workspace(home)
    ws = Workspace.at(settings.home)
    logged = load_table(ws, "impressions").height
    with TestClient(create_app(settings)) as client:
        wait_ready(client, timeout=300)
        assert recommended(client, "u1")["ranker_version"] == "ranker/v1"
        events = []
        for n, user in enumerate(f"u{u}" for u in range(12)):
            slate = recommended(client, user)["items"][:5]
            request = uuid.uuid4().hex
            events += [{"request_id": request, "user_id": user, "item_id": item["item_id"], "position": p,
                        "clicked": p == n % 5, "propensity": item["propensity"], "policy": "ranker/v1"}
                       for p, item in enumerate(slate)]
        assert client.post("/v1/events", json={"events": events}).json() == {"accepted": len(events)}
        deadline = time.monotonic() + 30
        while read_events(ws.events_dir).height < len(events):  # the parquet flush (0.2 s)
            assert time.monotonic() < deadline, "events never reached the events folder"
            time.sleep(0.05)

        runner = CliRunner()
        imported = runner.invoke(cli, ["import", "impressions", str(ws.events_dir)])
        assert imported.exit_code == 0, imported.output
        assert load_table(ws, "impressions").height == logged + len(events)
        trained = runner.invoke(cli, ["train", "ranker", "--promote", "--force",
                                      "--retrieval", "clip-profile"])
        assert trained.exit_code == 0, trained.output

        deadline = time.monotonic() + 120
        while (body := recommended(client, "u1"))["ranker_version"] != "ranker/v2":
            assert time.monotonic() < deadline, f"the server still answers with {body['ranker_version']}"
            time.sleep(0.2)
        assert body["policy"].startswith("ranker/v2")
    assert load_table(ws, "impressions").filter(pl.col(C.POLICY) == "ranker/v1").height == len(events)


@pytest.mark.parametrize("durability", ["fsync", "memory"])
def test_the_event_writer_hands_each_accepted_event_over_once(tmp_path: Path, durability: str) -> None:
    """`on_durable` (the stream's intake) gets every accepted event once, after its receipt is
    durable; duplicates never; its failure does not touch the events."""
    from datetime import UTC, datetime

    from serving.events import COLUMNS, EventWriter, read_events

    got: list[dict] = []
    receipts = []

    def on_durable(rows: list[dict]) -> None:
        if all(r.durable.done() for r in receipts):  # on disk before anyone hears of them
            got.extend(rows)
        raise RuntimeError("a bug downstream")

    def row(n: int) -> dict:
        return {**dict.fromkeys(COLUMNS), C.REQUEST_ID: "r", C.POSITION: n, C.USER_ID: "u1",
                C.ITEM_ID: f"i{n}", C.EVENT_TIMESTAMP: datetime.now(UTC), C.CLICKED: True}

    writer = EventWriter(tmp_path / "events", flush_seconds=0.05, durability=durability,
                         on_durable=on_durable)
    try:
        receipts.append(writer.append([row(0), row(1)]))
        receipts[-1].durable.result(10)
        receipts.append(writer.append([row(1), row(2)]))  # row 1 again: a duplicate
        receipts[-1].durable.result(10)
        deadline = time.monotonic() + 10
        while len(got) < 3:
            assert time.monotonic() < deadline, got
            time.sleep(0.01)
    finally:
        writer.close()
    assert sorted(r[C.POSITION] for r in got) == [0, 1, 2]
    assert read_events(tmp_path / "events").height == 3
