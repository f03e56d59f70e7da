"""Test-wide settings: quiet progress bars, one passive thread, and a fresh workspace per test."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["RECSYS_PROGRESS"] = "0"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

ML100K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k"
SERVING_BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "serving.py"


@pytest.fixture(scope="session")
def serving_bench() -> ModuleType:
    """benchmarks/serving.py as a module: its world builder trains the real models (Feast
    features, two-tower, EASE, LightGBM ranker in MLflow) that the tests on real models serve."""
    spec = importlib.util.spec_from_file_location("bench_serving", SERVING_BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty workspace, also exported as RECSYS_HOME for code that reads the environment."""
    ws = tmp_path / "ws"
    monkeypatch.setenv("RECSYS_HOME", str(ws))
    monkeypatch.delenv("RECSYS_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    return ws


@pytest.fixture(scope="session")
def tracking_store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One MLflow store (settings overrides) for the session: a new sqlite store costs seconds."""
    root = tmp_path_factory.mktemp("mlflow")
    return {
        "tracking.tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
        "tracking.artifact_root": (root / "artifacts").as_uri(),
    }


@pytest.fixture
def ml100k() -> Path:
    if not (ML100K / "u.data").exists():
        pytest.skip(f"MovieLens 100K not found at {ML100K}")
    return ML100K


E2E_CONFIG = Path(__file__).resolve().parent / "e2e_config.toml"


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace that went through the whole demo pipeline (tiny sizes: tests/e2e_config.toml).

    Built once per session and shared by the end-to-end, notebook and UI tests; they must not
    change it. Use `demo_env` to point a test (and its subprocesses) at it.
    """
    from recsys.config import load_settings
    from training.demo import run_demo

    home = tmp_path_factory.mktemp("demo") / "ws"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECSYS_CONFIG", str(E2E_CONFIG))
        mp.setenv("RECSYS_HOME", str(home))
        reports = run_demo(load_settings())
    assert all(not r.skipped for r in reports)
    return home


@pytest.fixture
def demo_env(demo_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Export RECSYS_CONFIG/RECSYS_HOME of the demo workspace for this test and its subprocesses."""
    monkeypatch.setenv("RECSYS_CONFIG", str(E2E_CONFIG))
    monkeypatch.setenv("RECSYS_HOME", str(demo_home))
    return demo_home
