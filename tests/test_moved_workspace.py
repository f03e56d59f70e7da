"""A trained workspace moved to another folder works there and never touches the old one.

The demo workspace is copied, opened once where the copy lies (so its MLflow store and Feast
registry point there), and the folder is renamed. From the new place the real commands run:
`recsys features build` (an MLflow run with artifacts, a Feast apply), `recsys recommend`
(the models are downloaded from the re-pointed MLflow artifacts: the model cache is removed
first) and `recsys serve` answering HTTP requests, images included. The old folder must not
come back, and the shared demo workspace must be byte-for-byte as it was.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import polars as pl
import pytest

from recsys.config import load_settings
from recsys.data import columns as C

pytestmark = pytest.mark.integration
E2E_CONFIG = Path(__file__).resolve().parent / "e2e_config.toml"
RECSYS = str(Path(sys.executable).parent / "recsys")
URI_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
               ("model_versions", "source"), ("model_versions", "storage_location"))


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "RECSYS_HOME": str(home), "RECSYS_CONFIG": str(E2E_CONFIG)}


def _recsys(home: Path, *args: str) -> str:
    done = subprocess.run([RECSYS, *args], env=_env(home), cwd=home.parent,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _artifact_uris(home: Path) -> list[str]:
    with sqlite3.connect(home / "mlflow" / "mlflow.db") as con:
        return [v for table, column in URI_COLUMNS
                for (v,) in con.execute(f"SELECT {column} FROM {table}") if v]  # noqa: S608


def test_moved_workspace_works_and_leaves_the_old_folder_alone(demo_home: Path, tmp_path: Path) -> None:
    from features.store import feature_store
    from recsys import tracking

    demo_before = _snapshot(demo_home)
    old_parent = tmp_path / "before"
    old = old_parent / "ws"
    shutil.copytree(demo_home, old)
    settings = load_settings(home=str(old))
    assert tracking.list_models(settings)  # opened where it lies: the store now points at `old`
    feature_store(settings)
    assert all(uri.startswith(old.as_uri()) for uri in _artifact_uris(old) if uri.startswith("file:"))

    new = tmp_path / "after" / "ws"
    old_parent.rename(new.parent)
    shutil.rmtree(new / "models")  # models must come from the moved workspace's MLflow artifacts

    _recsys(new, "features", "build")
    recs = new.parent / "recs.parquet"
    _recsys(new, "recommend", "--all", "--k", "5", "--out", str(recs))
    assert pl.read_parquet(recs).height > 0
    assert list((new / "models").iterdir()), "models downloaded into the moved workspace"

    items = pl.read_parquet(new / "data" / "items.parquet")
    stored = items[C.IMAGE_URI].drop_nulls().to_list()
    assert stored and not any(Path(u).is_absolute() for u in stored)  # relative to the workspace
    with_image = items.filter(pl.col(C.IMAGE_URI).is_not_null())[C.ITEM_ID][0]
    user = pl.read_parquet(new / "data" / "impressions.parquet", columns=[C.USER_ID])[C.USER_ID][0]
    port = _free_port()
    server = subprocess.Popen([RECSYS, "serve", "--port", str(port)],
                              env=_env(new), cwd=new.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        ready = None
        for _ in range(240):
            assert server.poll() is None, server.communicate()[0].decode()[-3000:]
            try:
                ready = httpx.get(f"{url}/readyz", timeout=5)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        assert ready is not None and ready.status_code == 200, ready and ready.text
        body = httpx.get(f"{url}/v1/users/{user}/recommendations", params={"k": 5}, timeout=30).json()
        assert body["fallback"] is None and not body["degraded"] and len(body["items"]) == 5
        image = httpx.get(f"{url}/ui/images/{with_image}", timeout=30)
        assert image.status_code == 200 and image.content
    finally:
        server.terminate()
        server.communicate(timeout=60)

    assert not old_parent.exists(), "something recreated the old folder"
    assert _snapshot(demo_home) == demo_before, "the workspace copied from was changed"
    uris = [u for u in _artifact_uris(new) if u.startswith("file:")]
    assert uris and all(u.startswith(new.as_uri() + "/") for u in uris)
    runs = list((new / "mlflow" / "artifacts" / "features").iterdir())
    assert len(runs) > len(list((demo_home / "mlflow" / "artifacts" / "features").iterdir()))
