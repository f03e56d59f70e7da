"""Reading user files, storing validated tables in the workspace, quarantining bad rows."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from recsys.data import columns as C
from recsys.data import history
from recsys.data.contracts import (
    ContractError,
    Validated,
    validate_impressions,
    validate_items,
    validate_users,
)
from recsys.io import remove_stale_temps, write_json, write_parquet
from recsys.workspace import Workspace

log = logging.getLogger(__name__)
TABLES = ("items", "users", "impressions", "item_embeddings")


def read_raw(path: str | Path) -> pl.DataFrame:
    """Read parquet or CSV as found. CSV columns stay text (the contract casts them), and text
    that is not UTF-8 is decoded lossily so validation can point at the offending rows. A folder
    is read as its parquet parts (the server's events folder: `impressions-*.parquet`; its `wal/`
    holds events not yet flushed to a part, which the server writes at its next flush or start)."""
    path = Path(path)
    if not path.exists():
        raise ContractError(str(path), "file not found")
    if path.is_dir():
        return _read_parts(path)
    if path.stat().st_size == 0:
        raise ContractError(str(path), "the file is empty (expected a header and at least one row)")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pl.read_parquet(path)
        if suffix in (".csv", ".tsv", ".txt"):
            sep = "\t" if suffix == ".tsv" else ","
            return pl.read_csv(path, separator=sep, infer_schema=False, encoding="utf8-lossy")
    except pl.exceptions.PolarsError as exc:
        raise ContractError(str(path), f"cannot be read as {suffix[1:]}: {exc}") from exc
    raise ContractError(str(path), f"unknown format '{suffix}'; expected .parquet or .csv")


def _read_parts(folder: Path) -> pl.DataFrame:
    parts = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))
    if not parts:
        raise ContractError(str(folder), "a folder without parquet parts (expected files such as "
                            "impressions-*.parquet, as in the server's events folder)")
    try:
        return pl.concat([pl.read_parquet(p) for p in parts], how="diagonal_relaxed")
    except pl.exceptions.PolarsError as exc:
        raise ContractError(str(folder), f"its parquet parts cannot be read together: {exc}") from exc


@dataclass
class ImportReport:
    table: str
    source: str
    rows: int
    kept: int
    quarantined: int
    reasons: dict[str, int]
    output: Path
    quarantine_file: Path | None = None
    notes: list[str] = field(default_factory=list)
    added: int = 0  # rows with a key the stored table did not have
    updated: int = 0  # rows that replaced a stored row with the same key
    stored: int = 0  # rows of the table after the import
    version: int | None = None  # the table's new version (`recsys data history TABLE`)
    replaced: bool = False  # --replace: the table is exactly the file's good rows

    def summary(self) -> str:
        how = "replaced the table" if self.replaced else f"{self.added:,} new, {self.updated:,} updated"
        text = (f"{self.table}: {self.kept:,} of {self.rows:,} rows valid; {how} -> {self.stored:,} rows "
                f"(v{self.version}) at {self.output}")
        if self.quarantined:
            text += f"; {self.quarantined:,} quarantined -> {self.quarantine_file} {self.reasons}"
        return text


class TooManyBadRows(ContractError):
    """More of a file's rows failed validation than `imports.max_bad_share` allows."""


def quarantine(ws: Workspace, validated: Validated) -> Path | None:
    """Write bad rows with their reason to `<workspace>/quarantine/<table>-<timestamp>.parquet`."""
    if not validated.bad.height:
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    path = ws.quarantine_dir / f"{validated.table}-{stamp}.parquet"
    write_parquet(validated.bad.with_columns(pl.lit(validated.source).alias("source")), path)
    log.warning("%s: %d bad rows quarantined -> %s", validated.source, validated.bad.height, path)
    return path


def check_validated(ws: Workspace, validated: Validated, keep_bad: bool,
                    max_bad_share: float | None) -> Path | None:
    """Everything that must hold before a table is stored: no bad row (`keep_bad` off), at
    least one good row, at most `max_bad_share` of the rows bad (None: no limit). Bad rows are
    quarantined first, so a refused import still leaves them for inspection. Returns the
    quarantine file."""
    if not keep_bad:
        validated.raise_if_bad()
    qpath = quarantine(ws, validated)
    bad, total = validated.bad.height, validated.bad.height + validated.good.height
    if validated.good.height == 0:  # never replace a stored table with an empty one
        raise ContractError(
            validated.source,
            f"no row of table '{validated.table}' passed validation (all {bad} "
            f"quarantined -> {qpath}); the stored {validated.table} table was left as it was",
        )
    if max_bad_share is not None and bad > max_bad_share * total:
        reason, count = next(iter(validated.reasons.items()))
        raise TooManyBadRows(
            validated.source,
            f"{bad:,} of {total:,} rows ({bad / total:.1%}) of table '{validated.table}' failed "
            f"validation, more than imports.max_bad_share ({max_bad_share:.1%}); nothing was stored and "
            f"the stored {validated.table} table is unchanged. Most common: {reason} ({count:,} rows); "
            f"bad rows -> {qpath}. Fix the file, or pass --allow-partial to store the "
            f"{validated.good.height:,} good rows.",
            validated.bad.filter(pl.col(C.REASON) == reason),
        )
    return qpath


def store_validated(ws: Workspace, validated: Validated, keep_bad: bool, replace: bool = False,
                    max_bad_share: float | None = None, qpath: Path | None = None,
                    checked: bool = False) -> ImportReport:
    """Store the good rows: upserted by key into the stored table (`replace`: as the whole
    table). Bad rows are quarantined, or the import fails (see `check_validated`; `checked`
    says the caller has run it already and `qpath` is its quarantine file). The previous table
    stays in the history either way."""
    if not checked:
        qpath = check_validated(ws, validated, keep_bad, max_bad_share)
    table, good = validated.table, validated.good
    if replace or not ws.table(table).exists():
        merged, added, updated = good, good.height, 0
    else:
        merged, added, updated = upsert(load_table(ws, table), good, table)
    how = "replace" if replace else "upsert"
    out = history.write_version(ws, table, portable_images(ws, merged),
                                note=f"import ({how}) {Path(validated.source).name}")
    for note in validated.notes:
        log.warning("%s: %s", validated.source, note)
    return ImportReport(
        table=table, source=validated.source,
        rows=good.height + validated.bad.height, kept=good.height,
        quarantined=validated.bad.height, reasons=validated.reasons, output=out,
        quarantine_file=qpath, notes=validated.notes, added=added, updated=updated, stored=merged.height,
        version=next((v.version for v in history.versions(ws, table) if v.current), None), replaced=replace,
    )


def upsert_keys(table: str) -> list[list[str]]:
    """The natural key(s) of a table (see `upsert`)."""
    if table == "impressions":
        return [[C.REQUEST_ID, C.POSITION], [C.USER_ID, C.ITEM_ID, C.EVENT_TIMESTAMP]]
    return [[{"items": C.ITEM_ID, "item_embeddings": C.ITEM_ID, "users": C.USER_ID}[table]]]


def upsert(stored: pl.DataFrame, new: pl.DataFrame, table: str) -> tuple[pl.DataFrame, int, int]:
    """`stored` with the rows of `new` added, a stored row with the key of a new row replaced
    as a whole (columns only the stored table has become null there), every other stored row
    untouched. Returns (merged, added, updated).

    Keys: items and item_embeddings `item_id`, users `user_id`. Impressions are an append log
    whose rows are keyed by their slot, `(request_id, position)`, and click-only rows (no
    position) by `(user_id, item_id, event_timestamp)`; re-importing a log therefore adds only
    the events it did not have, and a corrected row replaces its earlier self. Within `new`
    the first row of a key wins (validation has set later duplicates aside already); the
    merged log is sorted by event time.
    """
    keys = upsert_keys(table)
    if table == "impressions":
        logged = pl.col(C.POSITION).is_not_null()
        parts = [(stored.filter(logged), new.filter(logged), keys[0]),
                 (stored.filter(~logged), new.filter(~logged), keys[1])]
    else:
        parts = [(stored, new, keys[0])]
    frames, updated, added = [], 0, 0
    for old, fresh, key in parts:
        fresh = fresh.unique(subset=key, keep="first", maintain_order=True)
        kept = old.join(fresh.select(key), on=key, how="anti", nulls_equal=True)
        updated += old.height - kept.height
        added += fresh.height - (old.height - kept.height)
        frames += [kept, fresh]
    merged = pl.concat([f for f in frames if f.width], how="diagonal_relaxed")
    if table == "impressions":
        merged = merged.sort(C.EVENT_TIMESTAMP, maintain_order=True)
    return merged, added, updated


def validate_file(table: str, path: str | Path, ws: Workspace | None = None) -> Validated:
    """Read and validate one user file against its contract."""
    path = Path(path)
    df = read_raw(path)
    if table == "items":
        return validate_items(df, str(path), base_dir=path.parent)
    if table == "users":
        return validate_users(df, str(path))
    if table == "impressions":
        known = None
        if ws is not None and ws.table("items").exists():
            known = load_table(ws, "items", columns=[C.ITEM_ID])[C.ITEM_ID]
        return validate_impressions(df, str(path), known_items=known)
    raise ValueError(f"unknown table '{table}'; expected items, users or impressions")


def remove_import_temps(ws: Workspace, tables: list[str], before: float) -> list[Path]:
    """Remove what a killed import of `tables` left half-written: temporary files of the live
    tables, their versions and manifests, their quarantine files and the image-roots record,
    last modified before `before` (the start of this run, epoch seconds). The stored tables
    themselves are whole either way (every write is a rename)."""
    removed: list[Path] = []
    for table in tables:
        removed += history.remove_temps(ws, table, before)
        removed += remove_stale_temps(ws.quarantine_dir, [f"{table}-*.parquet"], before)
    removed += remove_stale_temps(ws.data_dir, [IMAGE_ROOTS_FILE], before)
    return removed


def import_file(ws: Workspace, table: str, path: str | Path, quarantine_bad: bool = True,
                replace: bool = False, max_bad_share: float | None = None) -> ImportReport:
    """Validate a user's table and store it in the workspace (`recsys import <table> PATH`):
    upserted by key (`replace`: as the whole table), the previous table kept as a version.
    Temporary files a killed import left are removed first."""
    remove_import_temps(ws, [table], time.time())
    validated = validate_file(table, path, ws)
    report = store_validated(ws, validated, keep_bad=quarantine_bad, replace=replace,
                             max_bad_share=max_bad_share)
    if table == "items":
        remember_image_root(ws, Path(path).parent)
    return report


IMAGE_ROOTS_FILE = "image_roots.json"  # in the workspace's data folder


def image_roots(ws: Workspace) -> list[Path]:
    """Folders items files were imported from: their images may be served (`/ui/images`)."""
    path = ws.data_dir / IMAGE_ROOTS_FILE
    if not path.exists():
        return []
    return [Path(p) if Path(p).is_absolute() else ws.root / p for p in json.loads(path.read_text())]


def remember_image_root(ws: Workspace, folder: str | Path) -> None:
    """Record the folder an items file came from (relative to the workspace when inside it).
    Relative image paths were kept inside it by validation (`validate_items`)."""
    folder = Path(folder).expanduser().resolve()
    entry = str(folder.relative_to(ws.root)) if folder.is_relative_to(ws.root) else str(folder)
    path = ws.data_dir / IMAGE_ROOTS_FILE
    known = json.loads(path.read_text()) if path.exists() else []
    if entry not in known:
        write_json([*known, entry], path)


def save_table(ws: Workspace, name: str, df: pl.DataFrame, note: str = "") -> Path:
    """Write a contract table as its new version; the previous one stays in its history."""
    return history.write_version(ws, name, portable_images(ws, df), note=note or f"{name} written")


def portable_images(ws: Workspace, df: pl.DataFrame) -> pl.DataFrame:
    """Image paths inside the workspace stored relative to its root (`Workspace.portable`), so
    the table stays right when the workspace moves; `load_table` resolves them again."""
    if C.IMAGE_URI not in df.columns or df.schema[C.IMAGE_URI] == pl.Null:  # no column, or all null
        return df
    uri = pl.col(C.IMAGE_URI).cast(pl.String)
    for root in dict.fromkeys((ws.root.as_posix(), ws.root.resolve().as_posix())):
        prefix = root.rstrip("/") + "/"
        inside = uri.str.starts_with(prefix) & ~uri.str.contains("/../", literal=True)
        uri = pl.when(inside).then(uri.str.slice(len(prefix))).otherwise(uri)
    return df.with_columns(uri.alias(C.IMAGE_URI))


def resolved_images(ws: Workspace, df: pl.DataFrame) -> pl.DataFrame:
    """Relative image paths of a stored table as absolute paths of the workspace where it is
    now (URLs and absolute paths outside it unchanged)."""
    if C.IMAGE_URI not in df.columns or df.schema[C.IMAGE_URI] == pl.Null:
        return df
    uri = pl.col(C.IMAGE_URI).cast(pl.String)
    relative = ~uri.str.starts_with("/") & ~uri.str.contains("://", literal=True)
    root = ws.root.as_posix().rstrip("/") + "/"
    return df.with_columns(pl.when(relative).then(pl.lit(root) + uri).otherwise(uri).alias(C.IMAGE_URI))


def load_table(ws: Workspace, name: str, columns: list[str] | None = None) -> pl.DataFrame:
    """Load a stored table, or say which command creates it. Image paths come back absolute,
    under the workspace where it is now (they are stored relative to it)."""
    path = ws.table(name)
    if not path.exists():
        hint = {
            "item_embeddings": "run `recsys backfill`",
        }.get(name, "run `recsys generate` or `recsys import ...`")
        raise FileNotFoundError(f"{path} does not exist: {hint} first")
    return resolved_images(ws, pl.read_parquet(path, columns=columns))
