"""Load shedding in a real uvicorn process: past `serving.max_in_flight` requests held by one
worker, a recommendation request is answered 503 with Retry-After, counted in /metrics."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import pytest
from serving_helpers import build_world, make_settings

from serving.process import start_server

pytestmark = pytest.mark.integration


def _metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_requests_past_the_limit_are_shed_with_retry_after(tmp_path: Path) -> None:
    ws = build_world(tmp_path / "ws")
    server = start_server(make_settings(ws.root, **{"serving.max_in_flight": 1}))
    port = int(server.url.rsplit(":", 1)[1])
    body = json.dumps({"user_id": "u1", "k": 3}).encode()
    head = (f"POST /v1/recommendations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    try:
        deadline = time.monotonic() + 60  # loaded (without models: popularity, degraded)
        while httpx.get(f"{server.url}/readyz").json()["reasons"] == ["loading"]:
            assert time.monotonic() < deadline, "the state never loaded"
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as held:
            held.sendall(head + body[:4])  # the request holds the only slot until its body is complete
            deadline = time.monotonic() + 30
            while _metric(server.url, "recsys_requests_in_flight") < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert _metric(server.url, "recsys_requests_in_flight") == 1
            shed = httpx.get(server.url + "/v1/users/u2/recommendations", params={"k": 3})
            assert shed.status_code == 503 and shed.headers["Retry-After"] == "1"
            assert shed.json()["error"] == "overloaded" and "max_in_flight" in shed.json()["message"]
            assert httpx.get(server.url + "/healthz").status_code == 200  # ops routes are never shed
            assert _metric(server.url, "recsys_requests_shed_total") == 1
            held.sendall(body[4:])
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += held.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        served = httpx.get(server.url + "/v1/users/u2/recommendations", params={"k": 3})
        assert served.status_code == 200 and len(served.json()["items"]) == 3  # the slot is free again
        assert _metric(server.url, "recsys_requests_in_flight") == 0
    finally:
        server.stop()
