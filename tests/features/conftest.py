"""Fixtures for the feature store tests: a small hand-made world in the data contracts, a
workspace settings object, and a real redis-server on 127.0.0.1 with a random port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys.config import load_settings
from recsys.data.tables import save_table
from recsys.workspace import Workspace

START = datetime(2024, 3, 1, tzinfo=UTC)
TS = pl.Datetime("us", "UTC")


def make_world(
    n_items: int = 30,
    n_users: int = 12,
    n_impressions: int = 1500,
    days: int = 10,
    seed: int = 0,
    dim: int = 8,
) -> dict[str, pl.DataFrame]:
    """Items, users, impressions and item_embeddings frames in the contracts (small, seeded)."""
    rng = np.random.default_rng(seed)
    cats = ["shoes", "hats", "bags", "toys"]
    items = pl.DataFrame(
        {
            "item_id": [f"i{i:03d}" for i in range(n_items)],
            "title": [f"item {i}" for i in range(n_items)],
            "description": [f"a nice {cats[i % 4]}" for i in range(n_items)],
            "category": [cats[i % 4] for i in range(n_items)],
            "price": rng.uniform(5, 50, n_items),
            "image_uri": [None] * n_items,
            "image_source": ["none"] * n_items,
            "created_at": [START - timedelta(days=30)] * n_items,
        },
        schema_overrides={"created_at": TS, "image_uri": pl.String},
    )
    users = pl.DataFrame(
        {
            "user_id": [f"u{u:02d}" for u in range(n_users)],
            "created_at": [START - timedelta(days=30)] * n_users,
        },
        schema_overrides={"created_at": TS},
    )
    secs = np.sort(rng.integers(0, days * 86400, n_impressions))
    impressions = pl.DataFrame(
        {
            "request_id": [f"r{i // 5}" for i in range(n_impressions)],
            "user_id": [f"u{u:02d}" for u in rng.integers(0, n_users, n_impressions)],
            "item_id": [f"i{i:03d}" for i in rng.integers(0, n_items, n_impressions)],
            "position": (np.arange(n_impressions) % 5).astype(np.int32),
            "event_timestamp": [START + timedelta(seconds=int(s)) for s in secs],
            "clicked": rng.random(n_impressions) < 0.2,
            "propensity": np.full(n_impressions, 0.2),
            "policy": ["random"] * n_impressions,
        },
        schema_overrides={"event_timestamp": TS},
    )
    vec = rng.normal(size=(n_items, dim)).astype(np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    item_embeddings = pl.DataFrame(
        {
            "item_id": items["item_id"],
            "image_embedding": [None] * n_items,
            "text_embedding": [v.tolist() for v in vec],
            "embedding": [v.tolist() for v in vec],
            "image_source": ["none"] * n_items,
            "model_version": ["clip/v1"] * n_items,
            "content_hash": [f"h{i}" for i in range(n_items)],
            "event_timestamp": [START + timedelta(days=days + 5)] * n_items,
        },
        schema_overrides={
            "event_timestamp": TS,
            "image_embedding": pl.List(pl.Float32),
            "text_embedding": pl.List(pl.Float32),
            "embedding": pl.List(pl.Float32),
        },
    )
    return {"items": items, "users": users, "impressions": impressions, "item_embeddings": item_embeddings}


@pytest.fixture(scope="session")
def world_factory():
    """`make_world(...)`: build a small world with other sizes."""
    return make_world


@pytest.fixture(scope="session")
def start() -> datetime:
    """Midnight of the first simulated day."""
    return START


@pytest.fixture
def world() -> dict[str, pl.DataFrame]:
    return make_world()


@pytest.fixture
def settings(home: Path):
    return load_settings(home=str(home))


@pytest.fixture
def ws(settings) -> Workspace:
    return Workspace.at(settings.home)


@pytest.fixture
def stored_world(ws: Workspace, world: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    for name, df in world.items():
        save_table(ws, name, df)
    return world


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, binary: str):
        self.binary = binary
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.proc.returncode}") from None
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start within 10 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def redis_server():
    """A real redis-server on 127.0.0.1 with a random free port, no persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; CI installs it)")
    server = RedisServer(binary)
    server.start()
    yield server
    server.stop()
