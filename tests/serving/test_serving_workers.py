"""`start_server(workers=2)`: two uvicorn processes on one SO_REUSEPORT port, supervised by a
parent that forwards SIGTERM (graceful: each worker writes its queued events)."""

from __future__ import annotations

import os
import signal
import sys
import time

import httpx
import pytest
from serving_helpers import build_world, make_settings

from serving.events import read_events
from serving.process import start_server

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT: Linux")]


def test_two_workers_both_serve_and_flush_on_sigterm(tmp_path) -> None:
    ws = build_world(tmp_path / "ws")
    # flush after 30 s: only the graceful shutdown can write the events in time
    settings = make_settings(ws.root, **{"serving.event_flush_seconds": 30.0})
    server = start_server(settings, workers=2, wait=120)
    try:
        pids: set[int] = set()
        deadline = time.monotonic() + 60
        while len(pids) < 2 and time.monotonic() < deadline:  # each call: a new connection
            pids.add(httpx.get(server.url + "/healthz").json()["pid"])
        assert len(pids) == 2, f"only pids {pids} answered"
        assert server.process.pid not in pids  # the parent only supervises
        for i in range(20):  # events accepted by whichever worker a new connection reaches
            body = {"events": [{"request_id": f"r{i}", "user_id": "u1", "item_id": "i000", "position": 0,
                                "clicked": True, "propensity": 1.0, "policy": "test"}]}
            assert httpx.post(server.url + "/v1/events", json=body).status_code == 202
    finally:
        code = server.stop(60)
    assert code == 0
    events = read_events(ws.events_dir)
    assert events.height == 20
    writers = {p.name.split("-")[2] for p in ws.events_dir.glob("impressions-*.parquet")}
    assert writers <= {str(p) for p in pids} and len(writers) == 2  # both workers wrote theirs


def test_a_dead_worker_is_reported_and_the_other_keeps_serving(tmp_path) -> None:
    ws = build_world(tmp_path / "ws")
    log = tmp_path / "server.log"
    server = start_server(make_settings(ws.root), workers=2, wait=120, log_path=log)
    try:
        pids = {httpx.get(server.url + "/healthz").json()["pid"] for _ in range(40)}
        assert len(pids) == 2
        victim = pids.pop()
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while f"worker pid {victim} exited" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert f"worker pid {victim} exited with code -9; 1 of 2 still serving" in log.read_text()
        assert {httpx.get(server.url + "/healthz").json()["pid"] for _ in range(10)} == pids
    finally:
        code = server.stop(60)
    assert code == 1  # a worker failed: the supervisor says so in its exit code
