"""The Feast feature store of a workspace, configured in code from `recsys` settings.

Embedded default: provider `local`, the `duckdb` offline store over the parquet sources
(Feast's default `file`/dask store was 60x slower here and dropped rows), a sqlite online store
at `<home>/feast/online.db`, the registry at `<home>/feast/registry.db`. With
`features.online_store = "redis"` the online store is Redis at `features.redis_url`.
`features/feature_store.yaml` says the same for the `feast` CLI.

A moved or copied workspace uses its own files, never the old folder's: the registry and
online store paths are computed from the workspace on every open, and the registry, which
records each view's source as an absolute path (Feast's duckdb store reads a relative one
against the working directory), is re-pointed at the current sources on open when it was
applied elsewhere (`repoint_registry`; `feast/location.json` records where it points).

`apply` runs `feast apply` only when what it registers changed: `feast/applied.json` records a
fingerprint of the definitions, the Feast version and this workspace's stores (`recsys features
apply` always applies).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import polars as pl

from features.definitions import SCHEMAS, VIEWS, build_definitions, source_path, source_schema
from recsys.config import Settings
from recsys.io import atomic_path, file_sha256, remove_stale_temps, write_json, write_parquet
from recsys.workspace import Workspace

log = logging.getLogger(__name__)
REGISTRY_FILE = "registry.db"
LOCATION_FILE = "location.json"  # in <home>/feast: the sources folder the registry points at
APPLIED_FILE = "applied.json"  # in <home>/feast: the fingerprint of the definitions applied last


class FeatureStoreUnavailable(RuntimeError):
    """The online store cannot be reached (Redis down, sqlite store missing or unreadable).

    Serving catches this to degrade (e.g. popularity fallback) instead of failing the request.
    """


class FeatureStoreError(ValueError):
    """A request names a feature view, feature or entity key that does not exist or fits not."""


def online_store_config(settings: Settings, ws: Workspace) -> dict[str, Any]:
    fs = settings.features
    if fs.online_store == "redis":
        url = fs.redis_url
        if "socket_timeout" not in url:  # a hung server must not hang serving
            url += ",socket_connect_timeout=1,socket_timeout=5"
        return {"type": "redis", "connection_string": url}
    return {"type": "sqlite", "path": str(ws.feast_dir / "online.db")}


def describe_online_store(settings: Settings, ws: Workspace | None = None) -> str:
    """A human name of the online store for errors, summaries and `materialized.json` (the
    sqlite file named relative to the workspace, which may move)."""
    ws = ws or Workspace.at(settings.home)
    cfg = online_store_config(settings, ws)
    if cfg["type"] == "redis":
        return f"redis at {cfg['connection_string'].split(',')[0]}"
    return f"sqlite at {ws.portable(cfg['path'])} in the workspace"


def repo_config(settings: Settings, ws: Workspace | None = None) -> Any:
    """The `RepoConfig` of this workspace (no YAML needed)."""
    from feast.repo_config import RegistryConfig, RepoConfig

    ws = ws or Workspace.at(settings.home)
    return RepoConfig(
        project=settings.features.project,
        provider="local",
        registry=RegistryConfig(path=str(ws.feast_dir / REGISTRY_FILE), cache_ttl_seconds=60),
        offline_store={"type": "duckdb"},
        online_store=online_store_config(settings, ws),
        entity_key_serialization_version=3,
        repo_path=ws.feast_dir,
    )


def feature_store(settings: Settings, repoint: bool = True) -> Any:
    """A `feast.FeatureStore` over this workspace (its registry re-pointed first when the
    workspace has moved, see `repoint_registry`)."""
    import os

    os.environ.setdefault("FEAST_USAGE", "False")
    from feast import FeatureStore

    if repoint:
        repoint_registry(settings)
    store = FeatureStore(config=repo_config(settings))
    if settings.features.online_store == "redis":
        _fail_fast(store)
    return store


def _recorded(path: Path, field: str) -> str | None:
    """`field` of a small JSON record beside the registry; None when missing or unreadable."""
    try:
        return json.loads(path.read_text()).get(field)
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        return None


def _registered_sources(ws: Workspace) -> str | None:
    return _recorded(ws.feast_dir / LOCATION_FILE, "sources")


def _record_sources(ws: Workspace) -> None:
    write_json({"sources": str(ws.feature_sources_dir)}, ws.feast_dir / LOCATION_FILE)


def repoint_registry(settings: Settings) -> int:
    """Point the registry's file sources at this workspace's sources folder when they name
    another one (the registry was applied where the workspace was before a move or copy).

    The registry protobuf is edited directly, neither re-applied nor touching the online
    store, so a broken or unreachable online store does not keep the registry pointing at
    the old folder. The new registry is written beside the live one and renamed onto it, so
    a reader meanwhile sees the old registry or the new one, never a half-written file.
    Returns the number of re-pointed sources."""
    ws = Workspace.at(settings.home)
    registry = ws.feast_dir / REGISTRY_FILE
    current = ws.feature_sources_dir
    if not registry.exists() or _registered_sources(ws) == str(current):
        return 0
    from feast.protos.feast.core.Registry_pb2 import Registry as RegistryProto

    remove_stale_temps(ws.feast_dir, [REGISTRY_FILE, LOCATION_FILE], time.time())  # a killed re-point's
    proto = RegistryProto()
    proto.ParseFromString(registry.read_bytes())
    changed = _repoint_uris(proto, current)
    if changed:
        with atomic_path(registry, suffix=".tmp") as tmp:
            tmp.write_bytes(proto.SerializeToString())
        log.info("feature registry: %d source(s) re-pointed at %s", changed, current)
    _record_sources(ws)
    return changed


def _repoint_uris(message: Any, sources: Path) -> int:
    """Set every file source `uri` of the form `.../feast/sources/<file>` in `message` (a
    protobuf, walked recursively) to `<sources>/<file>`; returns how many changed."""
    changed = 0
    for field, value in message.ListFields():
        if field.type != field.TYPE_MESSAGE:
            if field.name == "uri" and isinstance(value, str):
                old = Path(value)
                ours = old.parent.name == "sources" and (old.parent.parent.name == "feast"
                                                         or not old.is_absolute())
                if ours and old.parent != sources:
                    setattr(message, field.name, str(sources / old.name))
                    changed += 1
            continue
        if hasattr(value, "ListFields"):
            children = [value]
        else:  # a repeated field, or a map (its values)
            children = [c for c in (value.values() if hasattr(value, "values") else value)
                        if hasattr(c, "ListFields")]
        for child in children:
            changed += _repoint_uris(child, sources)
    return changed


def _fail_fast(store: Any) -> None:
    """Retry a refused Redis connection once, at once (redis-py's default backs off for ~5 s,
    which turns a dead store into a 5 s request instead of a quick fallback)."""
    import contextlib

    from redis.backoff import ConstantBackoff
    from redis.retry import Retry

    with contextlib.suppress(Exception):  # Feast internals: keep the default when they change
        client = store._get_provider().online_store._get_client(store.config.online_store)
        client.set_retry(Retry(ConstantBackoff(0.05), 1))


def ensure_sources(ws: Workspace) -> None:
    """Create missing source tables empty (with the right schema) so `feast apply` is complete."""
    for view in VIEWS:
        path = source_path(ws.feature_sources_dir, view)
        if not path.exists():
            write_parquet(pl.DataFrame(schema=source_schema(view)), path)


def apply(settings: Settings, store: Any = None, force: bool = False) -> list[str]:
    """`feast apply`: register the entities and feature views; returns the view names.

    Sources that do not exist yet are created empty with the right schema, so the registry is
    complete even before the first build or backfill (Feast reads none of them here). Skipped,
    unless `force`, when the registry holds what this call would register (`applied_fingerprint`
    recorded by the last apply): importing Feast alone costs ~5 CPU s, half of a feature build's
    work in the driver."""
    ws = Workspace.at(settings.home)
    ensure_sources(ws)
    fingerprint = applied_fingerprint(settings, ws)
    if not force and _applied(settings, ws) == fingerprint:
        log.info("feature registry: definitions unchanged, `feast apply` skipped")
        return list(SCHEMAS)
    store = store or feature_store(settings, repoint=False)
    defs = build_definitions(ws.feature_sources_dir)
    store.apply(defs.objects)
    _record_sources(ws)
    write_json({"fingerprint": fingerprint}, ws.feast_dir / APPLIED_FILE)
    return list(defs.views)


def applied_fingerprint(settings: Settings, ws: Workspace) -> str:
    """A hash of everything `apply` registers, computed without importing Feast: the Feast
    version, the code and schemas of `features.definitions`, the project, the registry, online
    store and sources folder of this workspace."""
    import hashlib
    from importlib.metadata import version

    from features import definitions

    parts = {
        "feast": version("feast"),
        "definitions": file_sha256(definitions.__file__),
        "schemas": SCHEMAS,
        "project": settings.features.project,
        "online_store": online_store_config(settings, ws),
        "registry": str(ws.feast_dir / REGISTRY_FILE),
        "sources": str(ws.feature_sources_dir),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _applied(settings: Settings, ws: Workspace) -> str | None:
    """The fingerprint of the last apply, while its registry (and sqlite online store) exist."""
    online = online_store_config(settings, ws)
    if not (ws.feast_dir / REGISTRY_FILE).exists() or (
            online["type"] == "sqlite" and not Path(online["path"]).exists()):
        return None
    return _recorded(ws.feast_dir / APPLIED_FILE, "fingerprint")


__all__ = [
    "FeatureStoreError",
    "FeatureStoreUnavailable",
    "apply",
    "feature_store",
    "repo_config",
    "source_path",
]


def wrap_store_error(exc: BaseException, store: str) -> BaseException:
    """Turn a store's connection failure into `FeatureStoreUnavailable` naming the store."""
    import sqlite3

    names = {type(e).__name__ for e in (exc, exc.__cause__, exc.__context__) if e is not None}
    connection = {"ConnectionError", "TimeoutError", "ConnectionRefusedError", "BusyLoadingError"}
    # DatabaseError: also a corrupted or replaced sqlite file ("file is not a database")
    if names & connection or isinstance(exc, (OSError, sqlite3.DatabaseError)):
        return FeatureStoreUnavailable(f"online feature store unavailable ({store}): {exc}")
    return exc
