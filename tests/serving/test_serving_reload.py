"""Admin reload: API key, atomic swap while requests are in flight."""

from __future__ import annotations

import threading

from fastapi.testclient import TestClient
from serving_helpers import API_KEY, Loader, make_settings, wait_ready

from recsys.workspace import Workspace
from serving.app import create_app


def test_reload_needs_the_api_key(client: TestClient) -> None:
    r = client.post("/v1/admin/reload")
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    r = client.post("/v1/admin/reload", headers={"X-API-Key": "wrong"})
    assert r.status_code == 403 and r.json()["message"] == "wrong API key"
    r = client.post("/v1/admin/reload", headers={"X-API-Key": API_KEY})
    assert r.status_code == 200 and r.json()["versions"]["ranker"] == "ranker/v2"
    assert client.get("/v1/users/u1/recommendations").json()["ranker_version"] == "ranker/v2"


def test_admin_is_off_without_a_key(world: Workspace, loader) -> None:
    with TestClient(create_app(make_settings(world.root, **{"serving.api_key": None}), loader=loader)) as c:
        wait_ready(c)
        r = c.post("/v1/admin/reload", headers={"X-API-Key": "anything"})
        assert r.status_code == 403 and "disabled" in r.json()["message"]


def test_no_request_fails_during_reloads(world: Workspace) -> None:
    loader = Loader(world, delay=0.05)
    with TestClient(create_app(make_settings(world.root), loader=loader)) as c:
        wait_ready(c)
        statuses: list[int] = []
        versions: set[str] = set()
        stop = threading.Event()

        def fire() -> None:
            while not stop.is_set():
                r = c.get("/v1/users/u3/recommendations", params={"k": 5})
                statuses.append(r.status_code)
                if r.status_code == 200:
                    body = r.json()
                    assert len(body["items"]) == 5
                    versions.add(body["ranker_version"])

        threads = [threading.Thread(target=fire) for _ in range(3)]
        for t in threads:
            t.start()
        for _ in range(4):
            assert c.post("/v1/admin/reload", headers={"X-API-Key": API_KEY}).status_code == 200
        stop.set()
        for t in threads:
            t.join()
    assert statuses and set(statuses) == {200}
    assert len(versions) >= 2, versions


def test_poll_reloads_when_a_new_materialization_lands(world: Workspace) -> None:
    import json
    import time

    from features.jobs import MATERIALIZED_FILE

    loader = Loader(world)
    settings = make_settings(world.root, **{"serving.poll_seconds": 0.05})
    with TestClient(create_app(settings, loader=loader)) as c:
        wait_ready(c)
        assert c.get("/readyz").json()["versions"]["ranker"] == "ranker/v1"
        (world.feast_dir / MATERIALIZED_FILE).write_text(json.dumps({"version": "m2"}))
        deadline = time.monotonic() + 30
        while c.get("/readyz").json()["versions"]["ranker"] == "ranker/v1" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.get("/v1/users/u1/recommendations").json()["ranker_version"] == "ranker/v2"
