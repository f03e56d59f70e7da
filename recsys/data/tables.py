"""Reading user files, storing validated tables in the workspace, quarantining bad rows."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from recsys.data import columns as C
from recsys.data.contracts import (
    ContractError,
    Validated,
    validate_impressions,
    validate_items,
    validate_users,
)
from recsys.io import write_parquet
from recsys.workspace import Workspace

log = logging.getLogger(__name__)
TABLES = ("items", "users", "impressions", "item_embeddings")


def read_raw(path: str | Path) -> pl.DataFrame:
    """Read parquet or CSV as found. CSV columns stay text (the contract casts them), and text
    that is not UTF-8 is decoded lossily so validation can point at the offending rows."""
    path = Path(path)
    if not path.exists():
        raise ContractError(str(path), "file not found")
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

    def summary(self) -> str:
        text = f"{self.table}: {self.kept:,} of {self.rows:,} rows kept -> {self.output}"
        if self.quarantined:
            text += f"; {self.quarantined:,} quarantined -> {self.quarantine_file} {self.reasons}"
        return text


def quarantine(ws: Workspace, validated: Validated) -> Path | None:
    """Write bad rows with their reason to `<workspace>/quarantine/<table>-<timestamp>.parquet`."""
    if not validated.bad.height:
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    path = ws.quarantine_dir / f"{validated.table}-{stamp}.parquet"
    write_parquet(validated.bad.with_columns(pl.lit(validated.source).alias("source")), path)
    log.warning("%s: %d bad rows quarantined -> %s", validated.source, validated.bad.height, path)
    return path


def store_validated(ws: Workspace, validated: Validated, keep_bad: bool) -> ImportReport:
    """Store the good rows; bad rows are quarantined (or raise when `keep_bad` is off)."""
    if not keep_bad:
        validated.raise_if_bad()
    qpath = quarantine(ws, validated)
    if validated.good.height == 0:  # never replace a stored table with an empty one
        raise ContractError(
            validated.source,
            f"no row of table '{validated.table}' passed validation (all {validated.bad.height} "
            f"quarantined -> {qpath}); the stored {validated.table} table was left as it was",
        )
    out = save_table(ws, validated.table, validated.good)
    for note in validated.notes:
        log.warning("%s: %s", validated.source, note)
    return ImportReport(
        table=validated.table, source=validated.source,
        rows=validated.good.height + validated.bad.height, kept=validated.good.height,
        quarantined=validated.bad.height, reasons=validated.reasons, output=out,
        quarantine_file=qpath, notes=validated.notes,
    )


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


def import_file(ws: Workspace, table: str, path: str | Path, quarantine_bad: bool = True) -> ImportReport:
    """Validate a user's table and store it in the workspace (`recsys import <table> PATH`)."""
    report = store_validated(ws, validate_file(table, path, ws), keep_bad=quarantine_bad)
    forget_world_truth(ws)
    return report


def forget_world_truth(ws: Workspace) -> None:
    """Imported data is not the embedded world: drop the simulator's truth so nothing evaluates
    the new tables against it."""
    from recsys.data.truth import ARRAYS_FILE, META_FILE

    for name in (META_FILE, ARRAYS_FILE):
        (ws.truth_dir / name).unlink(missing_ok=True)


def save_table(ws: Workspace, name: str, df: pl.DataFrame) -> Path:
    return write_parquet(df, ws.table(name))


def load_table(ws: Workspace, name: str, columns: list[str] | None = None) -> pl.DataFrame:
    """Load a stored table, or say which command creates it."""
    path = ws.table(name)
    if not path.exists():
        hint = {
            "item_embeddings": "run `recsys backfill`",
        }.get(name, "run `recsys generate` or `recsys import ...`")
        raise FileNotFoundError(f"{path} does not exist: {hint} first")
    return pl.read_parquet(path, columns=columns)
