"""Atomic file writes: a crash or a kill never leaves a half-written table, index or model.

Everything is written to a temporary file in the destination folder and renamed into place
(`os.replace` is atomic on POSIX within one filesystem). A table that several processes write
in parts is a folder of parquet files behind a symbolic link, switched by the same rename
(`atomic_folder`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

log = logging.getLogger(__name__)
# `atomic_path`'s temporary names: "." + the target's name + "." + mkstemp's 8 random characters + suffix
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.(?:parquet|json|tmp)$")
# `atomic_folder`'s folders (and the links it switches in): the same, ending in .parts (.link)
_PARTS_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.(?:parts|link)$")


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


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a new folder beside `path` for a table written as parquet parts (by several
    processes, e.g. Ray workers); once the block succeeds, `path` becomes a relative symbolic
    link to it in one `os.replace`, as `atomic_path` switches a file. Readers open `path` as
    before (polars, pyarrow and duckdb read a folder of parquet files as one table). The folder
    it replaces stays, so a reader that opened it finishes; `remove_stale_temps` removes it later."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".parts", dir=path.parent))
    try:
        yield folder
        link = folder.with_suffix(".link")
        os.symlink(folder.name, link)
        if path.is_dir() and not path.is_symlink():  # a copied workspace made the link a real folder
            os.replace(path, tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".parts", dir=path.parent))
        os.replace(link, path)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def parquet_files(path: str | Path) -> list[Path]:
    """The parquet files of a table: the file itself, or the parts of an `atomic_folder` in name
    order."""
    path = Path(path)
    return sorted(path.glob("*.parquet")) if path.is_dir() else [path]


def remove_stale_temps(folder: str | Path, targets: Iterable[str], before: float) -> list[Path]:
    """Remove the temporary files `atomic_path` made for `targets` (file names, or globs such as
    `v*.parquet`, in `folder`) that a killed run left behind. Only names of `atomic_path`'s pattern
    for those targets, only regular files, and only files last modified before `before` (the
    start of the run that cleans, epoch seconds), so a temp of a run going on meanwhile is never
    touched. Likewise `atomic_folder`'s folders that no link in `folder` points to (a killed
    run's, or those a later write replaced) and its links that were never switched in. Returns
    what was removed."""
    folder = Path(folder)
    targets = list(targets)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    linked = {os.readlink(p) for p in folder.iterdir() if p.is_symlink() and not _PARTS_NAME.match(p.name)}
    for path in folder.iterdir():
        m = _TEMP_NAME.match(path.name) or _PARTS_NAME.match(path.name)
        if m is None or not any(fnmatch.fnmatchcase(m.group("target"), t) for t in targets):
            continue
        try:
            if path.lstat().st_mtime >= before or path.name in linked:
                continue
            if path.suffix == ".parts" and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.is_symlink() if path.suffix == ".link" else (path.is_file() and not path.is_symlink()):
                path.unlink()
            else:
                continue
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
    """Content hash of a file, or of a folder of parquet parts (each part's name and bytes, in
    name order), for dataset lineage."""
    h = hashlib.sha256()
    folder = Path(path).is_dir()
    for part in parquet_files(path):
        if folder:
            h.update(part.name.encode() + b"\0")
        with open(part, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()
