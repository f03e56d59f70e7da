"""Fixtures of the serving tests (helpers in serving_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from serving_helpers import Loader, build_world, make_settings, wait_ready

from recsys.workspace import Workspace
from serving.app import create_app


@pytest.fixture
def world(tmp_path: Path) -> Workspace:
    return build_world(tmp_path / "ws")


@pytest.fixture
def loader(world: Workspace) -> Loader:
    return Loader(world)


@pytest.fixture
def client(world: Workspace, loader: Loader) -> Iterator[TestClient]:
    app = create_app(make_settings(world.root), loader=loader)
    with TestClient(app) as c:
        wait_ready(c)
        yield c
