"""MLflow backbone: runs, dataset lineage, the model registry and its aliases.

Every pipeline records a run in its own experiment (`recsys/<pipeline>`). A model is a folder
of plain files (weights + `meta.json`) logged as run artifacts and registered as a version of
a registered model (`clip`, `thumbnails`, `retrieval`, `ranker`); serving picks a version by
alias (`champion`, `challenger`). Tracking lives in the workspace by default
(`sqlite:///<home>/mlflow/mlflow.db`, artifacts in `<home>/mlflow/artifacts`), never in the
working directory.

MLflow's sqlite store records absolute artifact URIs (experiments, runs, model versions). So
that a moved or copied workspace never writes into, or reads from, the folder it came from,
opening the workspace's own store re-points every URI under an earlier artifact root to the
current one (`repoint_artifacts`; `mlflow/location.json` remembers the root last pointed at).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sqlite3
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys.config import MASK, Settings, is_secret
from recsys.io import file_sha256, write_json
from recsys.workspace import Workspace

log = logging.getLogger(__name__)
ALIASES = ("champion", "challenger")
# the workspace of the run going on (`start_run`): lineage names its files relative to it
_RUN_HOME: contextvars.ContextVar[Workspace | None] = contextvars.ContextVar("recsys_run_home", default=None)


def tracking_uri(settings: Settings) -> str:
    ws = Workspace.at(settings.home)
    return settings.tracking.tracking_uri or f"sqlite:///{ws.mlflow_dir / 'mlflow.db'}"


def artifact_root(settings: Settings) -> str:
    ws = Workspace.at(settings.home)
    return settings.tracking.artifact_root or (ws.mlflow_dir / "artifacts").as_uri()


LOCATION_FILE = "location.json"  # in <home>/mlflow: the artifact root the store's URIs point at
# (table, column) of the sqlite store that hold artifact URIs
_ARTIFACT_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
    ("logged_models", "artifact_location"),
)


def repoint_artifacts(ws: Workspace) -> int:
    """Re-point the workspace's MLflow store at its artifact folder where the workspace is now.

    URIs under an earlier root (the root recorded in `location.json`, or for a store without
    one, the root its `recsys/<pipeline>` experiments were created under) are rewritten to the
    current root in one transaction; the Default experiment, which MLflow places in the working
    directory, is moved under the root too. Idempotent and safe to race: a second process finds
    nothing left to rewrite. Returns the number of rewritten values."""
    db = ws.root / "mlflow" / "mlflow.db"
    current = (ws.root / "mlflow" / "artifacts").as_uri()
    stamp = ws.root / "mlflow" / LOCATION_FILE
    try:
        recorded = json.loads(stamp.read_text()).get("artifact_root")
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        recorded = None
    if recorded == current or not db.exists():
        return 0
    changed = 0
    try:
        con = sqlite3.connect(db, timeout=30, isolation_level=None)
    except sqlite3.Error:
        return 0
    try:
        con.execute("BEGIN IMMEDIATE")
        old_roots = {recorded} if recorded else set()
        for name, location in con.execute("SELECT name, artifact_location FROM experiments"):
            pipeline = name.removeprefix("recsys/")
            if name.startswith("recsys/") and location.endswith(f"/{pipeline}"):
                old_roots.add(location[: -len(pipeline) - 1])
        for old in old_roots - {current, None}:
            for table, column in _ARTIFACT_COLUMNS:
                cur = con.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) "  # noqa: S608 (fixed names)
                    f"WHERE substr({column}, 1, ?) = ?",
                    (current, len(old) + 1, len(old) + 1, old + "/"),
                )
                changed += cur.rowcount
        cur = con.execute(
            "UPDATE experiments SET artifact_location = ? "
            "WHERE experiment_id = 0 AND substr(artifact_location, 1, ?) != ?",
            (f"{current}/0", len(current) + 1, current + "/"),
        )
        changed += cur.rowcount
        con.execute("COMMIT")
    except sqlite3.OperationalError as exc:  # a store MLflow has not created its tables in yet
        with contextlib.suppress(sqlite3.Error):
            con.execute("ROLLBACK")
        log.debug("MLflow store not re-pointed: %s", exc)
        return 0
    finally:
        con.close()
    write_json({"artifact_root": current}, stamp)
    if changed:
        log.info("re-pointed %d MLflow artifact location(s) at %s", changed, current)
    return changed


def setup_tracking(settings: Settings) -> str:
    """Point MLflow at the workspace's store; returns the tracking URI. The workspace's own
    store (no `tracking.tracking_uri` / `tracking.artifact_root` set) is re-pointed first when
    the workspace has moved (`repoint_artifacts`)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    if not settings.tracking.tracking_uri and not settings.tracking.artifact_root:
        repoint_artifacts(Workspace.at(settings.home))
    uri = tracking_uri(settings)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def _experiment_id(settings: Settings, pipeline: str) -> str:
    from mlflow import MlflowClient

    client = MlflowClient()
    name = f"recsys/{pipeline}"
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":  # deleted in the UI: bring it back rather than fail
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=f"{artifact_root(settings)}/{pipeline}")
    except Exception:  # created concurrently by another process
        return client.get_experiment_by_name(name).experiment_id


@contextlib.contextmanager
def start_run(settings: Settings, pipeline: str, run_name: str | None = None) -> Iterator[Any]:
    """Start an MLflow run in experiment `recsys/<pipeline>`; yields the active run."""
    setup_tracking(settings)
    import mlflow

    exp_id = _experiment_id(settings, pipeline)
    token = _RUN_HOME.set(Workspace(Path(settings.home).resolve()))
    try:
        with mlflow.start_run(experiment_id=exp_id, run_name=run_name) as run:
            mlflow.set_tag("recsys.pipeline", pipeline)
            mlflow.set_tag("recsys.home", str(Path(settings.home).resolve()))
            yield run
    finally:
        _RUN_HOME.reset(token)


def flatten(params: Mapping[str, Any] | Any, prefix: str = "") -> dict[str, Any]:
    """Nested params (dicts, pydantic models such as `settings.ranker`) as `a.b.c` keys."""
    if hasattr(params, "model_dump"):
        params = params.model_dump(mode="json")
    out: dict[str, Any] = {}
    for key, value in dict(params).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) or hasattr(value, "model_dump"):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = MASK if value is not None and is_secret(str(key)) else value  # never log a secret
    return out


def log_params(params: Mapping[str, Any] | Any, prefix: str = "") -> dict[str, Any]:
    """Log (nested) params in the active run, e.g. `log_params(settings.ranker, "ranker.")`.

    Values longer than MLflow's limit are cut (with a note in the value) instead of failing."""
    import mlflow

    flat = {
        k: (str(v) if len(str(v)) <= 6000 else str(v)[:5980] + "...(truncated)")
        for k, v in flatten(params, prefix).items()
    }
    mlflow.log_params(flat)
    return flat


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log numeric metrics in the active run; None and non-finite values are skipped."""
    import math

    import mlflow

    clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    mlflow.log_metrics(clean, step=step)


def load_lineage(settings: Settings, run_id: str) -> dict[str, Any]:
    """The `lineage.json` a run recorded (tables, feature views, extra)."""
    setup_tracking(settings)
    import mlflow

    return mlflow.artifacts.load_dict(f"runs:/{run_id}/lineage.json")


def _portable(path: str | Path) -> str:
    """A path as lineage records it: relative to the run's workspace when inside it."""
    ws = _RUN_HOME.get()
    return ws.portable(path) if ws is not None else str(path)


def table_lineage(paths: Mapping[str, str | Path]) -> dict[str, dict[str, Any]]:
    """Content hash, size and row count of each input table: what a model was trained on
    (paths inside the workspace recorded relative to it, so the record outlives a move)."""
    import pyarrow.parquet as pq

    out: dict[str, dict[str, Any]] = {}
    for name, path in paths.items():
        path = Path(path)
        if not path.exists():
            continue
        entry: dict[str, Any] = {"path": _portable(path), "sha256": file_sha256(path),
                                 "bytes": path.stat().st_size}
        if path.suffix == ".parquet":
            entry["rows"] = pq.ParquetFile(path).metadata.num_rows
        out[name] = entry
    return out


def log_lineage(
    tables: Mapping[str, str | Path],
    feature_views: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Record dataset lineage in the active run: params (short hashes), tags and `lineage.json`."""
    import mlflow

    views = {name: {**entry, "path": _portable(entry["path"])}
             if isinstance(entry, Mapping) and "path" in entry else entry
             for name, entry in dict(feature_views or {}).items()}
    lineage = {"tables": table_lineage(tables), "feature_views": views, **dict(extra or {})}
    for name, entry in lineage["tables"].items():
        mlflow.set_tag(f"lineage.{name}.sha256", entry["sha256"][:16])
        if "rows" in entry:
            mlflow.log_param(f"rows.{name}", entry["rows"])
    mlflow.log_dict(lineage, "lineage.json")
    return lineage


@dataclass(frozen=True)
class ModelRef:
    """A registered model version resolved from `models:/name@alias` or `models:/name/3`."""

    name: str
    version: str
    run_id: str | None
    source: str
    aliases: tuple[str, ...]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def tag(self) -> str:
        """Short id used to stamp data derived from the model (e.g. `retrieval/v3`)."""
        return f"{self.name}/v{self.version}"


def log_and_register(
    settings: Settings, model_dir: str | Path, name: str, meta: Mapping[str, Any], alias: str | None = None
) -> ModelRef:
    """Log a model folder as artifacts of the active run and register it as a new version.

    `meta` is written as `meta.json` beside the weights so that a loaded model carries its
    version and lineage with it.
    """
    import mlflow
    from mlflow import MlflowClient

    model_dir = Path(model_dir)
    write_json(dict(meta), model_dir / "meta.json")
    mlflow.log_artifacts(str(model_dir), artifact_path="model")
    run = mlflow.active_run()
    client = MlflowClient()
    with contextlib.suppress(Exception):
        client.create_registered_model(name)
    source = f"{run.info.artifact_uri}/model"
    mv = client.create_model_version(name=name, source=source, run_id=run.info.run_id)
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    log.info("registered %s version %s%s", name, mv.version, f" as @{alias}" if alias else "")
    return ModelRef(name, str(mv.version), run.info.run_id, source, (alias,) if alias else ())


def resolve(settings: Settings, uri: str) -> ModelRef:
    """Resolve `models:/name@alias`, `models:/name/version`, or `name@alias`."""
    setup_tracking(settings)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    body = uri.removeprefix("models:/")
    client = MlflowClient()
    try:
        if "@" in body:
            name, alias = body.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        else:
            name, version = body.rsplit("/", 1)
            mv = client.get_model_version(name, version)
    except (MlflowException, ValueError) as exc:
        raise LookupError(
            f"no registered model version for '{uri}' in {tracking_uri(settings)}: "
            f"train it first (see `recsys models list`)"
        ) from exc
    return ModelRef(name, str(mv.version), mv.run_id, mv.source, tuple(mv.aliases or ()))


def download_model(settings: Settings, uri: str) -> tuple[Path, ModelRef]:
    """Fetch a registered model folder to the workspace cache; returns (folder, ref)."""
    import mlflow

    ref = resolve(settings, uri)
    ws = Workspace.at(settings.home)
    dest = ws.models_dir / ref.name / f"v{ref.version}"
    if not (dest / "meta.json").exists():
        tmp = Path(tempfile.mkdtemp(dir=ws.models_dir, prefix=f".{ref.name}-"))
        local = mlflow.artifacts.download_artifacts(artifact_uri=ref.source, dst_path=str(tmp))
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():  # a concurrent download won; keep theirs
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(local, dest)
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return dest, ref


def set_alias(settings: Settings, name: str, alias: str, version: str | int) -> None:
    setup_tracking(settings)
    from mlflow import MlflowClient

    MlflowClient().set_registered_model_alias(name, alias, str(version))


def list_models(settings: Settings) -> list[dict[str, Any]]:
    """Every registered model version with its aliases and run (for `recsys models list`)."""
    setup_tracking(settings)
    from mlflow import MlflowClient

    client = MlflowClient()
    rows = []
    for rm in client.search_registered_models():
        by_version: dict[str, list[str]] = {}
        for alias, version in (rm.aliases or {}).items():
            by_version.setdefault(str(version), []).append(alias)
        for mv in client.search_model_versions(f"name='{rm.name}'"):
            rows.append(
                {
                    "name": rm.name,
                    "version": int(mv.version),
                    "aliases": sorted(by_version.get(str(mv.version), [])),
                    "run_id": mv.run_id,
                    "created": mv.creation_timestamp,
                }
            )
    return sorted(rows, key=lambda r: (r["name"], r["version"]))
