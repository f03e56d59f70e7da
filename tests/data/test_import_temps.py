"""The temporary files a killed import or generate left are removed when the next one starts
(only that run's tables' files, only those older than the run)."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from recsys.cli import app
from recsys.data import columns as C
from recsys.data.tables import import_file, load_table
from recsys.workspace import Workspace


def _stale(*paths: Path) -> list[Path]:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
        os.utime(p, (time.time() - 60, time.time() - 60))
    return list(paths)


def test_import_removes_the_temps_a_killed_import_left(tmp_path: Path) -> None:
    ws = Workspace.at(tmp_path / "ws")
    users = pl.DataFrame({C.USER_ID: ["u1", "u2"], C.CREATED_AT: [datetime(2024, 1, 1, tzinfo=UTC)] * 2})
    path = tmp_path / "users.parquet"
    users.write_parquet(path)
    import_file(ws, "users", path)
    stale = _stale(ws.data_dir / ".users.parquet.abcd1234.parquet",
                   ws.table_history("users") / ".v2.parquet.abcd1234.parquet",
                   ws.table_history("users") / ".versions.json.abcd1234.json",
                   ws.quarantine_dir / ".users-20240101T000000000000.parquet.abcd1234.parquet")
    other = _stale(ws.data_dir / ".items.parquet.abcd1234.parquet")  # another table's: not this import's
    import_file(ws, "users", path)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in other)
    assert load_table(ws, "users").height == 2


def test_generate_removes_the_temps_a_killed_generate_left(tmp_path: Path) -> None:
    ws = Workspace.at(tmp_path / "ws")
    stale = _stale(ws.data_dir / ".items.parquet.abcd1234.parquet",
                   ws.table_history("impressions") / ".v1.parquet.abcd1234.parquet")
    fresh = ws.data_dir / ".users.parquet.efgh5678.parquet"  # a run going on now: left alone
    fresh.write_bytes(b"")
    os.utime(fresh, (time.time() + 3600, time.time() + 3600))
    args = ["--home", str(ws.root), "generate", "--items", "40", "--users", "20", "--days", "2",
            "--impressions", "200", "--no-images"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in stale) and fresh.exists()
    assert load_table(ws, "items").height == 40
