"""Online-store faults while serving the trained workspace: a corrupted sqlite store, and Redis
stopped and restarted. Answers degrade (200, named as degraded) instead of failing; the stored
tables and feature sources are untouched; once the store is back, answers are undegraded again
and the online store holds every row it held before."""

from __future__ import annotations

import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from fault_helpers import result, source_rows, table_rows

from serving.app import create_app

pytestmark = pytest.mark.integration
API_KEY = "fault-suite-admin-key"


def _user(world) -> str:  # noqa: ANN001
    import polars as pl

    from recsys.data import columns as C

    return pl.read_parquet(world.ws.table("impressions"), columns=[C.USER_ID])[C.USER_ID][0]


def _recommend(c: TestClient, user: str) -> dict:
    r = c.get(f"/v1/users/{user}/recommendations", params={"k": 5})
    assert r.status_code == 200, r.text
    return r.json()


def _wait(c: TestClient, ready: bool, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (c.get("/readyz").status_code == 200) is ready:
            return
        time.sleep(0.2)
    raise AssertionError(f"/readyz never became {'ready' if ready else 'not ready'}: {c.get('/readyz').text}")


def _sqlite_rows(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as con:
        tables = [t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: con.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables}  # noqa: S608


def test_corrupted_online_store_is_rebuilt_from_the_offline_sources(fault_world) -> None:  # noqa: ANN001
    """Garbage over `feast/online.db`; the store is rebuilt from what is stored offline
    (`features apply` + `features materialize`), and one reload brings answers back."""
    from features.jobs import materialize
    from features.store import apply

    res = result("online store (sqlite) overwritten with garbage while serving")
    settings = fault_world.settings(**{"serving.store_check_seconds": 0})
    ws, user = fault_world.ws, _user(fault_world)
    db = ws.feast_dir / "online.db"
    online_before, stored_before = _sqlite_rows(db), {**table_rows(ws), **source_rows(ws)}
    with TestClient(create_app(settings)) as c:
        _wait(c, ready=True)
        assert _recommend(c, user)["degraded"] is False
        db.write_bytes(b"not a database " * 4096)
        res.trials += 1
        res.killed += 1
        body = _recommend(c, user)
        assert body["degraded"] and len(body["items"]) == 5
        assert c.get("/readyz").status_code == 503

        db.unlink()
        apply(settings)
        materialize(settings, ws)
        assert c.post("/v1/admin/reload", headers={"X-API-Key": API_KEY}).status_code == 200
        _wait(c, ready=True)
        assert all(_recommend(c, user)["degraded"] is False for _ in range(3))
    after = {**table_rows(ws), **source_rows(ws)}
    assert after == stored_before, "the stored tables and sources were not touched"
    online_after = _sqlite_rows(db)
    lost = sum(max(0, n - online_after.get(t, 0)) for t, n in online_before.items())
    res.rows_lost += lost
    assert lost == 0, (online_before, online_after)
    res.survived += 1


class Redis:
    """A real redis-server on 127.0.0.1 that persists every write (append-only file, fsync
    always), stopped and started again on the same port and data folder."""

    def __init__(self, folder: Path):
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server; CI installs it)")
        self.binary, self.folder = binary, folder
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.keys() is not None:
                return
            assert self.proc.poll() is None, f"redis-server exited with {self.proc.returncode}"
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def keys(self) -> int | None:
        """DBSIZE, or None while the server does not answer (or is still loading)."""
        import redis

        try:
            return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).dbsize()
        except redis.exceptions.RedisError:
            return None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


@pytest.fixture
def redis_server(tmp_path: Path):
    server = Redis(tmp_path)
    server.start()
    yield server
    server.stop()


def test_redis_stopped_and_restarted_while_serving(fault_world, redis_server: Redis) -> None:  # noqa: ANN001
    from features.jobs import materialize

    res = result("Redis online store stopped and restarted while serving")
    settings = fault_world.settings(**{"features.online_store": "redis",
                                       "features.redis_url": f"127.0.0.1:{redis_server.port}",
                                       "serving.store_check_seconds": 0.5})
    ws, user = fault_world.ws, _user(fault_world)
    materialize(settings, ws)
    keys = redis_server.keys()
    assert keys
    stored_before = {**table_rows(ws), **source_rows(ws)}
    with TestClient(create_app(settings)) as c:
        _wait(c, ready=True)
        assert _recommend(c, user)["degraded"] is False
        redis_server.stop()
        res.trials += 1
        res.killed += 1
        body = _recommend(c, user)
        assert body["degraded"] and len(body["items"]) == 5
        _wait(c, ready=False)
        redis_server.start()
        _wait(c, ready=True)  # the periodic check reopens the store: no reload, no restart
        assert all(_recommend(c, user)["degraded"] is False for _ in range(3))
    assert {**table_rows(ws), **source_rows(ws)} == stored_before
    lost = max(0, keys - (redis_server.keys() or 0))
    res.rows_lost += lost
    assert lost == 0
    res.survived += 1
