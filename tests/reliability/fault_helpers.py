"""Running a real `recsys` command and killing it (SIGKILL) after a random delay, and checking
afterwards that nothing stored was lost or half-written.

What "whole" means here: every stored parquet file (contract tables, their kept versions,
feature sources) reads completely; each table's history manifest parses and every version it
lists has the rows and hash it records; a table holds the rows it held before the fault or the
rows of the finished command, never fewer; registered models still resolve and download.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from recsys.data.history import MANIFEST, versions
from recsys.data.tables import TABLES
from recsys.io import _TEMP_NAME, file_sha256
from recsys.workspace import Workspace

RECSYS = str(Path(sys.executable).parent / "recsys")


@dataclass
class FaultResult:
    """One fault's trials, for the table the suite prints (see conftest)."""

    fault: str
    trials: int = 0
    killed: int = 0  # trials where the kill landed before the command finished
    survived: int = 0  # trials after which everything stored was whole and the rerun succeeded
    rows_lost: int = 0
    delays: list[float] = field(default_factory=list)


RESULTS: dict[str, FaultResult] = {}


def result(fault: str) -> FaultResult:
    return RESULTS.setdefault(fault, FaultResult(fault))


def run(env: dict[str, str], *args: str, timeout: float = 900) -> float:
    """Run `recsys ARGS` to the end; fails the test on a non-zero exit. Returns its duration."""
    t0 = time.monotonic()
    done = subprocess.run([RECSYS, *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"recsys {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return time.monotonic() - t0


def run_killed(env: dict[str, str], delay: float, *args: str) -> bool:
    """Start `recsys ARGS` and SIGKILL it (its whole process group, workers included) after
    `delay` seconds. Returns whether the kill landed (False: it had finished already)."""
    p = subprocess.Popen([RECSYS, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    try:
        p.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
        return True


def kill_delays(trials: int, longest: float, seed: int | None = None) -> list[float]:
    """Random kill points over a command's run (`longest`: about how long an unkilled run
    takes), one per stratum so a few trials still cover early, middle and late points; the last
    tenth is left out, as a run that happens to be quicker would finish before it."""
    rng = random.Random(seed)
    return [0.9 * longest * (i + rng.random()) / trials for i in range(trials)]


def parquet_rows(path: Path) -> int:
    """Rows of a parquet file, read completely (a torn file fails here)."""
    return pq.read_table(path).num_rows


def table_rows(ws: Workspace) -> dict[str, int]:
    """Rows of each stored contract table, each read whole."""
    return {t: parquet_rows(ws.table(t)) for t in TABLES if ws.table(t).exists()}


def source_rows(ws: Workspace) -> dict[str, int]:
    """Rows of each feature source, read whole; a killed build's temporary files (".name.*",
    removed by the next run: `stale_temps` checks that) are not sources."""
    return {p.stem: parquet_rows(p) for p in sorted(ws.feature_sources_dir.glob("*.parquet"))
            if not p.name.startswith(".")}


def check_history(ws: Workspace, table: str, before: list[int] | None = None) -> list[int]:
    """Every version the manifest lists reads whole with its recorded rows and hash, and the
    versions kept before the fault are still there. Returns the version numbers."""
    folder = ws.table_history(table)
    if (folder / MANIFEST).exists():
        json.loads((folder / MANIFEST).read_text())  # parses: never half-written
    kept = versions(ws, table)
    for v in kept:
        path = folder / f"v{v.version}.parquet"
        assert parquet_rows(path) == v.rows and file_sha256(path) == v.sha256, f"{table} v{v.version} changed"
    numbers = [v.version for v in kept]
    if before is not None:
        assert set(before) <= set(numbers), f"{table}: versions {set(before) - set(numbers)} lost"
    live = ws.table(table)
    if live.exists():  # the live table is one whole version (a kill may leave it not yet recorded)
        on_disk = {file_sha256(v) for v in folder.glob("v*.parquet")}
        assert file_sha256(live) in on_disk, f"{table}: the live table is none of its versions"
    return numbers


def lost_rows(before: dict[str, int], after: dict[str, int], finished: dict[str, int]) -> int:
    """Rows a fault lost: a table that holds neither what it held before nor what the finished
    command leaves counts the shortfall against the smaller of the two."""
    lost = 0
    for name, rows in before.items():
        now = after.get(name, 0)
        if now not in (rows, finished.get(name, rows)):
            lost += max(0, min(rows, finished.get(name, rows)) - now)
    return lost


def stale_temps(ws: Workspace) -> list[Path]:
    """Temporary files of atomic writes (`.<name>.<random>.<suffix>`) anywhere in the workspace."""
    return [p for p in ws.root.rglob(".*") if p.is_file() and _TEMP_NAME.match(p.name)]
