"""Versions of the contract tables: no write loses what was stored before it.

Every write of a contract table (items, users, impressions, item_embeddings) becomes a numbered
version, a complete parquet file in `<home>/data/history/<table>/v<N>.parquet`, and the live
table `<home>/data/<table>.parquet` is then made a hard link of that version (a copy where the
filesystem has no hard links), so the current version costs no extra disk. A manifest beside
the versions (`versions.json`) records each version's rows, bytes, sha256, time and a note, and
which one is live.

Guarantees:
- The live table is replaced by an atomic rename only after its new version is complete, so a
  kill leaves either the old or the new table, never half of one.
- A live table written outside this module (an older workspace, a copied file) is adopted as a
  version before anything replaces it.
- `rollback` points the live table at an earlier version (the current one stays in the list);
  the next write becomes the newest version.
- The last `KEEP_VERSIONS` versions are kept (the live one always); older ones are deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from recsys.io import atomic_path, file_sha256, remove_stale_temps, write_json, write_parquet
from recsys.workspace import Workspace

KEEP_VERSIONS = 5
MANIFEST = "versions.json"
_VERSION_FILE = re.compile(r"^v(\d+)\.parquet$")


@dataclass(frozen=True)
class Version:
    """One stored version of a table."""

    version: int
    rows: int
    bytes: int
    sha256: str
    written_at: str  # ISO 8601, UTC
    note: str
    current: bool = False

    def line(self) -> str:
        mark = "*" if self.current else " "
        return (f"{mark} v{self.version:<4} {self.rows:>12,} rows  {self.bytes / 1e6:>9.2f} MB  "
                f"{self.written_at[:19].replace('T', ' ')} UTC  {self.note}")


def history_dir(ws: Workspace, table: str) -> Path:
    return ws.table_history(table)


def version_path(ws: Workspace, table: str, version: int) -> Path:
    return history_dir(ws, table) / f"v{version}.parquet"


def _read_manifest(ws: Workspace, table: str) -> dict:
    path = history_dir(ws, table) / MANIFEST
    if not path.exists():
        return {"current": None, "versions": []}
    return json.loads(path.read_text())


def _next_number(ws: Workspace, table: str, manifest: dict) -> int:
    """One past every version known to the manifest or lying in the folder (a kill between
    writing a version and recording it leaves an unrecorded file: never overwrite it)."""
    known = [v["version"] for v in manifest["versions"]]
    folder = history_dir(ws, table)
    on_disk = [int(m.group(1)) for p in folder.iterdir() if (m := _VERSION_FILE.match(p.name))]
    return max([0, *known, *on_disk]) + 1


def versions(ws: Workspace, table: str) -> list[Version]:
    """The kept versions of `table`, oldest first; `current` marks the live one."""
    manifest = _read_manifest(ws, table)
    return [Version(**v, current=v["version"] == manifest["current"]) for v in manifest["versions"]
            if version_path(ws, table, v["version"]).exists()]


def live_is_tracked(ws: Workspace, table: str) -> bool:
    """Whether the live table is the version the manifest calls current (or there is none)."""
    live = ws.table(table)
    if not live.exists():
        return True
    manifest = _read_manifest(ws, table)
    entry = next((v for v in manifest["versions"] if v["version"] == manifest["current"]), None)
    if entry is None:
        return False
    stored = version_path(ws, table, entry["version"])
    if stored.exists() and os.path.samefile(live, stored):
        return True
    return live.stat().st_size == entry["bytes"] and file_sha256(live) == entry["sha256"]


def table_sha256(ws: Workspace, table: str) -> str | None:
    """Content hash of the live table (from the manifest when the live file is its version)."""
    live = ws.table(table)
    if not live.exists():
        return None
    manifest = _read_manifest(ws, table)
    entry = next((v for v in manifest["versions"] if v["version"] == manifest["current"]), None)
    if entry is not None:
        stored = version_path(ws, table, entry["version"])
        if stored.exists() and os.path.samefile(live, stored):
            return entry["sha256"]
    return file_sha256(live)


def _record(ws: Workspace, table: str, manifest: dict, number: int, note: str) -> dict:
    path = version_path(ws, table, number)
    entry = {"version": number, "rows": pq.read_metadata(path).num_rows, "bytes": path.stat().st_size,
             "sha256": file_sha256(path), "written_at": datetime.now(UTC).isoformat(), "note": note}
    manifest["versions"] = [v for v in manifest["versions"] if v["version"] != number] + [entry]
    return entry


def _install(ws: Workspace, table: str, number: int) -> None:
    """Make the live table version `number`: hard link (or copy) beside it, renamed into place."""
    source = version_path(ws, table, number)
    with atomic_path(ws.table(table), suffix=".parquet") as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:  # no hard links here (another filesystem, some network mounts)
            shutil.copyfile(source, tmp)


def adopt_live(ws: Workspace, table: str, note: str = "adopted: written before this history") -> int | None:
    """Keep an untracked live table as a version before anything replaces it."""
    if live_is_tracked(ws, table):
        return None
    manifest = _read_manifest(ws, table)
    number = _next_number(ws, table, manifest)
    target = version_path(ws, table, number)
    with atomic_path(target, suffix=".parquet") as tmp:
        tmp.unlink()
        try:
            os.link(ws.table(table), tmp)
        except OSError:
            shutil.copyfile(ws.table(table), tmp)
    _record(ws, table, manifest, number, note)
    manifest["current"] = number
    write_json(manifest, history_dir(ws, table) / MANIFEST)
    return number


def remove_temps(ws: Workspace, table: str, before: float) -> list[Path]:
    """Remove the temporary files a killed write of `table` left (beside the live table, among
    its versions and of its manifest), last modified before `before` (the run's start)."""
    live = ws.table(table)
    return (remove_stale_temps(live.parent, [live.name], before)
            + remove_stale_temps(history_dir(ws, table), ["v*.parquet", MANIFEST], before))


@contextlib.contextmanager
def new_version(ws: Workspace, table: str, note: str = "", keep: int = KEEP_VERSIONS) -> Iterator[Path]:
    """Yield the path the new version is to be written to; when the block succeeds the version
    is recorded and becomes the live table. The previous live table stays a version."""
    adopt_live(ws, table)
    manifest = _read_manifest(ws, table)
    number = _next_number(ws, table, manifest)
    path = version_path(ws, table, number)
    yield path
    if not path.exists():
        raise FileNotFoundError(f"{path}: the block wrote no new version of table '{table}'")
    _install(ws, table, number)
    _record(ws, table, manifest, number, note)
    manifest["current"] = number
    _prune(ws, table, manifest, keep)
    write_json(manifest, history_dir(ws, table) / MANIFEST)


def write_version(ws: Workspace, table: str, df: pl.DataFrame, note: str = "",
                  keep: int = KEEP_VERSIONS) -> Path:
    """Store `df` as the new version and live table of `table`; returns the live table's path."""
    with new_version(ws, table, note, keep) as path:
        write_parquet(df, path)
    return ws.table(table)


def rollback(ws: Workspace, table: str, version: int) -> Version:
    """Make `version` the live table again; the version it replaces stays in the history."""
    adopt_live(ws, table)
    manifest = _read_manifest(ws, table)
    entry = next((v for v in manifest["versions"] if v["version"] == version), None)
    if entry is None or not version_path(ws, table, version).exists():
        kept = ", ".join(f"v{v.version}" for v in versions(ws, table)) or "none"
        raise LookupError(f"table '{table}' has no version {version}; kept versions: {kept} "
                          f"(see `recsys data history {table}`)")
    _install(ws, table, version)
    manifest["current"] = version
    write_json(manifest, history_dir(ws, table) / MANIFEST)
    return Version(**entry, current=True)


def _prune(ws: Workspace, table: str, manifest: dict, keep: int) -> None:
    """Delete versions beyond the newest `keep` (never the live one) and files no entry names."""
    ordered = sorted(manifest["versions"], key=lambda v: v["version"])
    kept = {v["version"] for v in ordered[-max(keep, 1):]} | {manifest["current"]}
    manifest["versions"] = [v for v in ordered if v["version"] in kept]
    for p in history_dir(ws, table).iterdir():
        m = _VERSION_FILE.match(p.name)
        if m and int(m.group(1)) not in kept:
            p.unlink(missing_ok=True)
