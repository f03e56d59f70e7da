"""Ray fixtures: a real cluster (`ray start --head` on 127.0.0.1, two CPUs) for the session, and
the small worlds of the other test packages (loaded by path: conftest modules are not importable
by name)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from recsys.distributed.cluster import CLUSTER_SWITCH, start_head, stop_head

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


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`ray start --head --num-cpus 2` on 127.0.0.1 (no dashboard, `start_head`); yields its
    address, then stops the processes it started (`stop_head`)."""
    log = tmp_path_factory.mktemp("ray-head") / "ray-start.log"
    env = {**os.environ, CLUSTER_SWITCH: "0", "RAY_AUTH_MODE": "token"}
    with log.open("wb") as out:
        try:
            proc, address = start_head(env, 256, output=out)
        except FileNotFoundError as exc:
            pytest.skip(str(exc))
        except RuntimeError:
            raise RuntimeError(f"ray start failed: {log.read_text()[-2000:]}") from None
    try:
        yield address
    finally:
        stop_head(proc)


@pytest.fixture(scope="session")
def conftest_of():
    """`load_conftest` as a fixture (test modules cannot import a conftest by name)."""
    return load_conftest
