"""Online feature reads for serving: one user per request, all items from an in-process cache.

Feast's online read costs its Python/protobuf work per row (500 items with a 512-d vector took
~48 ms here), so item features (which change only when a materialization lands) are read once
into a polars frame and served from memory; the cache is keyed by the materialization version
that `features.jobs.materialize` stamps, and re-read when it changes. A user's features are
one Feast online read per request (~0.1-0.2 ms).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
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
    ):
        """`item_cache="offline"` fills the item cache from the offline sources (each item's
        latest row up to what the last materialization loaded: the same values, tested) in
        milliseconds instead of one online read per item (~1.5 ms an item here), for large
        catalogues; the cache still follows the materialization version."""
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
        self._lock = threading.Lock()
        self._items: pl.DataFrame | None = None
        self._version: str | None = None

    # -- health: a cheap read, and a fresh client
    def probe(self) -> None:
        """One user read of an id that is never stored (what serving's readiness checks): raises
        `FeatureStoreUnavailable` when the store cannot be read, `FeatureStoreError` before apply."""
        self.user(PROBE_USER)

    def reopened(self) -> OnlineFeatures:
        """A new client over the same store: a new `FeatureStore`, so a new sqlite connection (a
        replaced `feast/online.db` is read again) or a new Redis connection pool. This client
        stays usable for requests still holding it; its connection closes when it is collected."""
        return OnlineFeatures(self.settings, self._item_views_arg, self.item_cache_source)

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
        refs = self.user_refs if tuple(views) == (USER_BEHAVIOUR,) else feature_refs(views)
        out = self._read(refs, [{C.USER_ID: user_id}])
        return {k: v[0] for k, v in out.items() if k != C.USER_ID}

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

        from features.jobs import materialization_info

        ends = materialization_info(self.ws).get("ends", {})
        frame = pl.DataFrame({C.ITEM_ID: self._item_ids()}, schema={C.ITEM_ID: pl.String})
        for view in self.item_views:
            features = [ref.split(":")[1] for ref in self.item_refs if ref.startswith(f"{view}:")]
            names = [pl.col(f).alias(f"{view}__{f}") for f in features]
            path = source_path(self.ws.feature_sources_dir, view)
            if view not in ends or not path.exists():  # not in the online store either
                frame = frame.with_columns(pl.lit(None).alias(f"{view}__{f}") for f in features)
                continue
            latest = (
                pl.scan_parquet(path)
                .filter(pl.col(C.EVENT_TIMESTAMP) <= datetime.fromisoformat(ends[view]))
                .sort(C.EVENT_TIMESTAMP)
                .group_by(C.ITEM_ID)
                .agg(pl.all().last())
                .select(C.ITEM_ID, *names)
                .collect()
            )
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
            if type(exc).__name__ in ("FeatureViewNotFoundException", "EntityNotFoundException"):
                raise FeatureStoreError(
                    f"{exc} (registry {self.ws.feast_dir / 'registry.db'}): run `recsys features build` first"
                ) from exc
            wrapped = wrap_store_error(exc, self.store_name)
            if wrapped is exc:
                raise
            raise wrapped from exc
