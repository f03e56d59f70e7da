"""Online feature reads for serving: one user per request, all items from an in-process cache.

Feast's online read costs its Python/protobuf work per row (500 items with a 512-d vector took
~48 ms here), so item features (which change only when a materialization lands) are read once
into a polars frame and served from memory; the cache is keyed by the materialization version
that `features.jobs.materialize` stamps, and re-read when it changes.

A user's features are one read of the online store per request, made directly (`UserRowReader`):
`get_online_features` spends most of its ~0.3-0.5 ms a call on work that is the same for every
call (registry lookups, request validation, building and converting a response protobuf), so the
reader resolves the view once (its table or hash fields, the features' value types) and then
costs one sqlite `SELECT` or one Redis `HMGET` plus decoding. Keys are serialized and values
decoded by Feast's own helpers (`serialize_entity_key`, `_mmh3`, `feast_value_type_to_python_type`),
so the values are Feast's (tests/features/test_online_direct.py compares both stores).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import polars as pl

from features.definitions import (
    ITEM_BEHAVIOUR,
    ITEM_CONTENT,
    SCHEMAS,
    USER_BEHAVIOUR,
    source_path,
    source_schema,
)
from features.store import FeatureStoreError, describe_online_store, wrap_store_error
from recsys.config import Settings
from recsys.data import columns as C
from recsys.workspace import Workspace

log = logging.getLogger(__name__)
ITEM_VIEWS = (ITEM_BEHAVIOUR, ITEM_CONTENT)
_BATCH = 1000
PROBE_USER = "__readiness_probe__"


def feature_refs(views: Sequence[str]) -> list[str]:
    """`view:feature` refs for whole views or single features; unknown names raise clearly."""
    refs = []
    for entry in views:
        view, _, feature = entry.partition(":")
        if view not in SCHEMAS:
            raise FeatureStoreError(f"no feature view '{view}'; known views: {', '.join(SCHEMAS)}")
        if feature and feature not in SCHEMAS[view]:
            raise FeatureStoreError(
                f"feature view '{view}' has no feature '{feature}'; its features: {', '.join(SCHEMAS[view])}"
            )
        refs += [f"{view}:{feature}"] if feature else [f"{view}:{f}" for f in SCHEMAS[view]]
    return refs


def check_key(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise FeatureStoreError(
            f"entity key '{name}' must be a string (Feast type STRING), got {type(value).__name__} {value!r}"
        )
    return value


class OnlineFeatures:
    """Reads the online store of one workspace; safe to share between threads."""

    def __init__(
        self,
        settings: Settings,
        item_views: Sequence[str] = ITEM_VIEWS,
        item_cache: Literal["online", "offline"] = "online",
        direct: bool = True,
    ):
        """`direct=False` reads users through Feast's `get_online_features` (the reference the
        direct reads are tested against). `item_cache="offline"` fills the item cache from the
        offline sources (each item's latest row up to what the last materialization loaded: the
        same values, tested) in milliseconds instead of one online read per item (~1.5 ms an item
        here), for large catalogues; the cache still follows the materialization version."""
        from features.store import feature_store

        self.settings = settings
        self.ws = Workspace.at(settings.home)
        self.store_name = describe_online_store(settings, self.ws)
        self._item_views_arg = tuple(item_views)
        self._file = self._file_identity()  # before opening: a file replaced meanwhile reads as replaced
        self.store = feature_store(settings)
        self.item_refs = feature_refs(item_views)
        self.item_views = list(dict.fromkeys(ref.split(":")[0] for ref in self.item_refs))
        self.item_cache_source = item_cache
        self.user_refs = feature_refs([USER_BEHAVIOUR])
        self.direct = direct
        self._lock = threading.Lock()
        self._items: pl.DataFrame | None = None
        self._version: str | None = None
        self._user_reader: UserRowReader | None = None  # resolved at the first direct read

    # -- health: a cheap read, and a fresh client
    def probe(self) -> None:
        """One user read of an id that is never stored (what serving's readiness checks): raises
        `FeatureStoreUnavailable` when the store cannot be read, `FeatureStoreError` before apply."""
        self.user(PROBE_USER)

    def reopened(self) -> OnlineFeatures:
        """A new client over the same store: a new `FeatureStore`, so a new sqlite connection (a
        replaced `feast/online.db` is read again) or a new Redis connection pool. This client
        stays usable for requests still holding it; its connection closes when it is collected."""
        return OnlineFeatures(self.settings, self._item_views_arg, self.item_cache_source, self.direct)

    def replaced(self) -> bool:
        """Whether the sqlite file was replaced (another inode) since this client opened it; an
        open connection keeps reading the old file. Always False for Redis."""
        return self._file != self._file_identity()

    def _file_identity(self) -> tuple[int, int] | None:
        if self.settings.features.online_store == "redis":
            return None
        try:
            st = (self.ws.feast_dir / "online.db").stat()
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    # -- user features, one read per request
    def user(self, user_id: str, views: Sequence[str] = (USER_BEHAVIOUR,)) -> dict[str, Any]:
        """Features of one user as {'user_behaviour__clicks_7d': ...}; values are None for an
        unknown user. Raises `FeatureStoreUnavailable` when the store is down."""
        check_key(C.USER_ID, user_id)
        default = tuple(views) == (USER_BEHAVIOUR,)
        if default and self.direct:
            reader = self._user_reader or self._resolve_user_reader()
            if reader is not None:
                try:
                    return reader.read(user_id)
                except Exception as exc:
                    raise self._store_error(exc) from exc
        refs = self.user_refs if default else feature_refs(views)
        out = self._read(refs, [{C.USER_ID: user_id}])
        return {k: v[0] for k, v in out.items() if k != C.USER_ID}

    def _resolve_user_reader(self) -> UserRowReader | None:
        """The direct reader of `user_behaviour` (None: this store or view is read through Feast);
        raises what a Feast read raises when the registry has no such view (not applied yet)."""
        with self._lock:
            if self._user_reader is None:
                try:
                    self._user_reader = UserRowReader.open(self.store, USER_BEHAVIOUR,
                                                           [r.split(":")[1] for r in self.user_refs])
                except Exception as exc:
                    raise self._store_error(exc) from exc
                if self._user_reader is None:
                    self.direct = False  # e.g. a view whose entity is not one string key
        return self._user_reader

    # -- item features, from memory
    @property
    def version(self) -> str | None:
        """The materialization version the item cache holds."""
        return self._version

    def items(self, item_ids: Sequence[str]) -> pl.DataFrame:
        """Features of the given items, in the given order (unknown items: null features)."""
        cache = self.item_cache()
        ids = pl.DataFrame(
            {C.ITEM_ID: [check_key(C.ITEM_ID, i) for i in item_ids]}, schema={C.ITEM_ID: pl.String}
        )
        return ids.join(cache, on=C.ITEM_ID, how="left", maintain_order="left")

    def item_cache(self) -> pl.DataFrame:
        """All items' online features; re-read when a new materialization has landed."""
        from features.jobs import materialization_version

        current = materialization_version(self.ws)
        if self._items is not None and current == self._version:
            return self._items
        with self._lock:
            if self._items is None or current != self._version:
                self._items = self._read_all_items()
                self._version = current
                log.info("item feature cache: %d items (materialization %s)", self._items.height, current)
        return self._items

    def _item_ids(self) -> list[str]:
        ids = []
        for view in ITEM_VIEWS:
            path = source_path(self.ws.feature_sources_dir, view)
            if path.exists():
                ids.append(pl.scan_parquet(path).select(C.ITEM_ID).unique().collect())
        if not ids:
            return []
        return pl.concat(ids).unique().sort(C.ITEM_ID)[C.ITEM_ID].to_list()

    def _read_all_items(self) -> pl.DataFrame:
        frame = (
            self._read_items_offline() if self.item_cache_source == "offline" else self._read_items_online()
        )
        casts = {}
        for ref in self.item_refs:  # Feast hands back float64 lists: keep the sources' float32
            view, feature = ref.split(":")
            name = f"{view}__{feature}"
            if name in frame.columns:
                casts[name] = source_schema(view)[feature]
        return frame.with_columns(pl.col(c).cast(t) for c, t in casts.items())

    def _read_items_offline(self) -> pl.DataFrame:
        from datetime import datetime

        from features.jobs import latest_rows, materialization_info

        ends = materialization_info(self.ws).get("ends", {})
        frame = pl.DataFrame({C.ITEM_ID: self._item_ids()}, schema={C.ITEM_ID: pl.String})
        for view in self.item_views:
            features = [ref.split(":")[1] for ref in self.item_refs if ref.startswith(f"{view}:")]
            names = [pl.col(f).alias(f"{view}__{f}") for f in features]
            path = source_path(self.ws.feature_sources_dir, view)
            if view not in ends or not path.exists():  # not in the online store either
                frame = frame.with_columns(pl.lit(None).alias(f"{view}__{f}") for f in features)
                continue
            # what the materialization loaded: each item's latest row up to its end
            latest = latest_rows(self.ws, view, datetime.fromisoformat(ends[view])).select(C.ITEM_ID, *names)
            frame = frame.join(latest, on=C.ITEM_ID, how="left")
        return frame

    def _read_items_online(self) -> pl.DataFrame:
        ids = self._item_ids()
        parts = []
        for i in range(0, len(ids), _BATCH):
            rows = [{C.ITEM_ID: x} for x in ids[i : i + _BATCH]]
            parts.append(pl.DataFrame(self._read(self.item_refs, rows)))
        if not parts:
            return pl.DataFrame(schema={C.ITEM_ID: pl.String})
        return pl.concat(parts, how="diagonal_relaxed")

    def _read(self, refs: list[str], rows: list[dict[str, str]]) -> dict[str, list[Any]]:
        try:
            resp = self.store.get_online_features(features=refs, entity_rows=rows, full_feature_names=True)
            return resp.to_dict()
        except Exception as exc:
            raise self._store_error(exc) from exc

    def _store_error(self, exc: Exception) -> Exception:
        """What a failed read raises: `FeatureStoreError` before `features build` applied the
        registry, `FeatureStoreUnavailable` when the store cannot be reached, else `exc` itself."""
        if type(exc).__name__ in ("FeatureViewNotFoundException", "EntityNotFoundException"):
            return FeatureStoreError(
                f"{exc} (registry {self.ws.feast_dir / 'registry.db'}): run `recsys features build` first")
        return wrap_store_error(exc, self.store_name)


class UserRowReader:
    """One entity's row of one feature view, read straight from the online store: what Feast's
    `online_read` of the sqlite or Redis store does for one key, with everything that does not
    depend on the key (table name, hash fields, value types) worked out once.

    sqlite: Feast stores a row per (serialized entity key, feature name) in table
    `<project>_<view>`; the reader has its own read-only connection to the same file (a file
    replaced meanwhile is still read through the old inode until the client is reopened, as with
    Feast's connection). Redis: a hash per `serialize_entity_key(key) + project` with a field per
    `_mmh3("<view>:<feature>")`, read with one `HMGET` over Feast's own client (its connection pool,
    time-outs and retry policy). Values are `ValueProto`s decoded by Feast's
    `feast_value_type_to_python_type` with the view's declared types, as `OnlineResponse.to_dict`
    does; a feature without a value (unknown key) is None."""

    def __init__(self, view: str, names: list[str], types: dict[str, Any],
                 key_of: Any, fetch: Any, kind: str):
        from feast.protos.feast.types.Value_pb2 import Value as ValueProto
        from feast.type_map import feast_value_type_to_python_type

        self.kind = kind  # "sqlite" or "redis"
        self.columns = [(f"{view}__{n}", n, types[n]) for n in names]  # output name, feature, type
        self._key_of = key_of  # entity id -> serialized key
        self._fetch = fetch  # serialized key -> {feature name: value bytes}
        self._parse = ValueProto.FromString
        self._decode = feast_value_type_to_python_type

    @classmethod
    def open(cls, store: Any, view: str, features: Sequence[str]) -> UserRowReader | None:
        """The reader of `features` of `view` in `store` (a `feast.FeatureStore`), or None when the
        view or store is not one this reader knows (then callers read through Feast)."""
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.infra.online_stores.helpers import _mmh3, compute_table_id, compute_versioned_name
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
        from feast.protos.feast.types.Value_pb2 import Value as ValueProto
        from feast.types import String

        config = store.config
        fv = store.get_feature_view(view)  # FeatureViewNotFoundException before apply
        declared = {f.name: f.dtype for f in fv.features}
        keys = list(fv.entity_columns)
        if any(f not in declared for f in features) or len(keys) != 1 or keys[0].dtype != String:
            return None
        join_key, project = keys[0].name, config.project
        version = config.entity_key_serialization_version
        versioned = bool(getattr(config.registry, "enable_online_feature_view_versioning", False))
        types = {f: declared[f].to_value_type() for f in features}

        def key_of(entity: str) -> bytes:
            proto = EntityKeyProto(join_keys=[join_key], entity_values=[ValueProto(string_val=entity)])
            return serialize_entity_key(proto, entity_key_serialization_version=version)

        kind = type(config.online_store).__name__
        if kind == "SqliteOnlineStoreConfig":
            import sqlite3

            from feast.infra.online_stores.sqlite import SqliteOnlineStore

            path = Path(SqliteOnlineStore._get_db_path(config)).resolve()
            # read-only: a missing file is "store unavailable", not a new empty database
            conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, check_same_thread=False)
            table = compute_table_id(project, fv, versioned).replace('"', '""')
            sql = f'SELECT feature_name, value FROM "{table}" WHERE entity_key = ?'

            def fetch(key: bytes) -> dict[str, bytes]:
                return dict(conn.execute(sql, (key,)).fetchall())

            return cls(view, list(features), types, key_of, fetch, "sqlite")
        plain_redis = (getattr(config.online_store, "redis_type", "redis") == "redis"
                       and getattr(config.online_store, "client", "redis") in ("redis", None))
        if kind == "RedisOnlineStoreConfig" and plain_redis:  # not a cluster, sentinel or GLIDE
            client = store._get_provider().online_store._get_client(config.online_store)
            fv_name = compute_versioned_name(fv, versioned)
            fields = [_mmh3(f"{fv_name}:{f}") for f in features]
            suffix = project.encode("utf-8")
            names = list(features)

            def fetch_redis(key: bytes) -> dict[str, bytes]:
                return {n: v for n, v in zip(names, client.hmget(key + suffix, fields), strict=True) if v}

            return cls(view, names, types, key_of, fetch_redis, "redis")
        return None

    def read(self, entity: str) -> dict[str, Any]:
        """{'<view>__<feature>': value} of one entity (None for features without a value)."""
        found = self._fetch(self._key_of(entity))
        parse, decode = self._parse, self._decode
        return {out: decode(parse(blob), kind) if (blob := found.get(name)) else None
                for out, name, kind in self.columns}
