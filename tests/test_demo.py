"""The end-to-end pipeline: every stage runs for real on a tiny world; a rerun reuses it all."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from recsys import tracking
from recsys.config import load_settings
from recsys.data import columns as C
from recsys.data.tables import load_table
from recsys.workspace import Workspace
from training.demo import run_demo


def test_demo_fills_every_store_and_registry(demo_env: Path) -> None:
    settings = load_settings()
    ws = Workspace.at(demo_env)
    items = load_table(ws, "items")
    emb = load_table(ws, "item_embeddings")
    assert set(emb[C.ITEM_ID]) == set(items[C.ITEM_ID])  # one vector per item
    assert (items[C.IMAGE_SOURCE] == "none").sum() == 0  # thumbnails filled every gap
    assert (emb[C.IMAGE_SOURCE] == "generated").sum() > 0
    registered = {(m["name"], a) for m in tracking.list_models(settings) for a in m["aliases"]}
    for name in ("clip", "thumbnails", "retrieval", "ranker"):
        assert (name, "champion") in registered
    assert list(ws.reports_dir.glob("**/*.html")), "the A/B report was written"


def test_rerun_reuses_up_to_date_stages(demo_env: Path) -> None:
    reports = run_demo(load_settings())
    assert [r.skipped for r in reports] == [True] * len(reports)


def test_changed_settings_rerun_that_stage_and_after(demo_env: Path, tmp_path: Path) -> None:
    # a copy of the workspace, so the shared one stays as it was
    import shutil

    home = tmp_path / "copy"
    shutil.copytree(demo_env, home)
    settings = load_settings(home=str(home), **{"evaluation.bootstrap": 60})
    reports = run_demo(settings)
    skipped = {r.name: r.skipped for r in reports}
    assert skipped["train ranker"] and not skipped["evaluate ab"]
    assert pl.read_parquet(Workspace.at(home).table("items")).height > 0


def test_commands_print_no_library_output_without_verbose(
    demo_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One line per stage: no MLflow bars, library INFO lines or DeprecationWarnings unless -v."""
    import shutil
    import subprocess
    import sys

    home = tmp_path / "copy"  # training registers a version: keep the shared workspace as it was
    shutil.copytree(demo_env, home)
    monkeypatch.setenv("RECSYS_HOME", str(home))
    for name in ("MLFLOW_LOGGING_LEVEL", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "PYTHONWARNINGS"):
        monkeypatch.delenv(name, raising=False)
    code = "import sys; from recsys.cli import main; sys.argv = ['recsys', *sys.argv[1:]]; main()"

    def recsys(*args: str) -> str:
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    quiet = recsys("train", "ranker")
    assert "✓ train ranker:" in quiet
    for noise in ("Downloading artifacts", "INFO", "DEBUG", "DeprecationWarning", "FutureWarning",
                  "site-packages", "epoch "):
        assert noise not in quiet, f"{noise!r} in the output of `recsys train ranker`:\n{quiet}"
    assert "registered ranker version" in recsys("-v", "train", "ranker")  # our INFO lines, with -v
