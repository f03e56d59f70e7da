"""Ray fixtures: a real cluster (`ray start --head` on 127.0.0.1, two CPUs) for the session, and
the small worlds of the other test packages (loaded by path: conftest modules are not importable
by name)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from recsys.distributed.cluster import CLUSTER_SWITCH, LOOPBACK

TESTS = Path(__file__).resolve().parents[1]
# With an explicit address Ray sends the cluster's token only in token mode (its local
# instances turn that mode on by themselves; a driver joining `ray start` must ask for it).
os.environ.setdefault("RAY_AUTH_MODE", "token")


def load_conftest(package: str) -> ModuleType:
    """Another test package's conftest module (its world builders)."""
    spec = importlib.util.spec_from_file_location(f"{package}_world", TESTS / package / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`ray start --head --num-cpus 2` on 127.0.0.1 (no dashboard); yields its address, then stops
    the processes it started (SIGTERM to its process group; a graceful `ray start` drains for
    up to 30 s)."""
    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent))
    if ray_cli is None:
        pytest.skip("the ray CLI is not installed beside this Python")
    port = _free_port()
    log = tmp_path_factory.mktemp("ray-head") / "ray-start.log"
    env = {**os.environ, CLUSTER_SWITCH: "0", "RAY_AUTH_MODE": "token"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [ray_cli, "start", "--head", "--block", "--num-cpus", "2", "--port", str(port),
             "--node-ip-address", LOOPBACK, "--include-dashboard=false", "--disable-usage-stats",
             "--object-store-memory", str(256 << 20)], env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)  # its own process group: the cluster's processes, and only them
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection((LOOPBACK, port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ray start failed: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        yield f"{LOOPBACK}:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the raylet and GCS stop at once; `ray start` would drain
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def conftest_of():
    """`load_conftest` as a fixture (test modules cannot import a conftest by name)."""
    return load_conftest
