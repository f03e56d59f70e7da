"""Atomic file writes: a crash or a kill never leaves a half-written table, index or model.

Everything is written to a temporary file in the destination folder and renamed into place
(`os.replace` is atomic on POSIX within one filesystem).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

log = logging.getLogger(__name__)
# `atomic_path`'s temporary names: "." + the target's name + "." + mkstemp's 8 random characters + suffix
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.(?:parquet|json|tmp)$")


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def remove_stale_temps(folder: str | Path, targets: Iterable[str], before: float) -> list[Path]:
    """Remove the temporary files `atomic_path` made for `targets` (file names, or globs such as
    `v*.parquet`, in `folder`) that a killed run left behind. Only names of `atomic_path`'s pattern
    for those targets, only regular files, and only files last modified before `before` (the
    start of the run that cleans, epoch seconds), so a temp of a run going on meanwhile is never
    touched. Returns what was removed."""
    folder = Path(folder)
    targets = list(targets)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        m = _TEMP_NAME.match(path.name)
        if m is None or not any(fnmatch.fnmatchcase(m.group("target"), t) for t in targets):
            continue
        try:
            if path.is_symlink() or not path.is_file() or path.stat().st_mtime >= before:
                continue
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    if removed:
        log.info("removed %d temporary file(s) a stopped run left in %s", len(removed), folder)
    return removed


def write_parquet(df: pl.DataFrame, path: str | Path) -> Path:
    """Write a polars frame as parquet, atomically."""
    with atomic_path(path, suffix=".parquet") as tmp:
        df.write_parquet(tmp)
    return Path(path)


def write_json(obj: Any, path: str | Path) -> Path:
    """Write JSON atomically (metadata files beside tables, indexes and models)."""
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    return Path(path)


def write_bytes(data: bytes, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Content hash of a file, for dataset lineage."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
