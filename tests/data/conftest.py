"""Fixtures of the data tests: an empty workspace and one small embedded world per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.data.config import WorldConfig
from recsys.data.world import WorldResult, generate_world
from recsys.workspace import Workspace

SMALL = WorldConfig(items=240, users=300, days=14, impressions=20_000)


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace.at(tmp_path / "ws")


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, WorldResult]:
    """A small world with images, generated once (the tests only read it)."""
    ws = Workspace.at(tmp_path_factory.mktemp("world") / "ws")
    return ws, generate_world(SMALL, 7, ws)
