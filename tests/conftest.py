"""Test-wide settings: quiet progress bars, one passive thread, and a fresh workspace per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["RECSYS_PROGRESS"] = "0"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

ML100K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty workspace, also exported as RECSYS_HOME for code that reads the environment."""
    ws = tmp_path / "ws"
    monkeypatch.setenv("RECSYS_HOME", str(ws))
    monkeypatch.chdir(tmp_path)
    return ws


@pytest.fixture
def ml100k() -> Path:
    if not (ML100K / "u.data").exists():
        pytest.skip(f"MovieLens 100K not found at {ML100K}")
    return ML100K
