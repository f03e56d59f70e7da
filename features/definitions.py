"""The Feast objects: entities `user` and `item`, and the three feature views.

Definitions are built by a function because their sources live in the workspace, whose
location is configuration (`build_definitions(ws.feature_sources_dir)`); `features/repo.py`
calls it at module level for the `feast` CLI. `feast` is imported inside the functions (it
takes ~5 s), so importing this module is cheap.

Feature views (one parquet source each under `<home>/feast/sources/`):

- `item_content` (entity item): the CLIP vectors of the item_embeddings table (`embedding`
  fused and L2-normalised, `image_embedding` (null for items without an image),
  `text_embedding`) as Array(Float32), `image_source`, `model_version`.
- `item_behaviour` (entity item): impressions, clicks and CTR over 1/7/30 days, and
  `popularity_rank` (1 = most clicks over the last 7 days).
- `user_behaviour` (entity user): impressions, clicks and CTR over 1/7/30 days; per-category
  click shares over 30 days as two parallel arrays (`click_categories_30d`: categories sorted
  by share, descending; `click_category_shares_30d`: their shares, summing to 1);
  `last_clicked_items` (most recent first, at most `features.last_clicked`);
  `days_since_last_click` (null when the user never clicked).

CTR carries a Bayesian prior: (clicks + a) / (impressions + b), with a =
`features.ctr_prior_clicks` and b = `features.ctr_prior_impressions` (default 1/20: a prior
mean of 5% worth 20 impressions), so an item shown twice is not ranked by a 0% or 100% CTR.

Behaviour rows are snapshots stamped at midnight UTC, written on the days a value changes (see
`features/jobs.py`), that count events strictly before their timestamp, so Feast's
point-in-time join never leaks.

`user_behaviour` also has a push source (`USER_PUSH_SOURCE`, a `PushSource` over the same
parquet batch source): the server's stream (`serving/stream.py`) pushes each updated user's row
into the online store through it, computed by the same code as the daily job
(`features.jobs.latest_user_rows`), so batch and stream share one definition of each feature.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from recsys.data import columns as C

ITEM_CONTENT = "item_content"
ITEM_BEHAVIOUR = "item_behaviour"
USER_BEHAVIOUR = "user_behaviour"
VIEWS = (ITEM_CONTENT, ITEM_BEHAVIOUR, USER_BEHAVIOUR)
WINDOWS = (1, 7, 30)
VECTOR_FEATURES = (C.EMBEDDING, C.IMAGE_EMBEDDING, C.TEXT_EMBEDDING)

# Feature name -> Feast type name, per view; the polars jobs write exactly these columns.
SCHEMAS: dict[str, dict[str, str]] = {
    ITEM_CONTENT: {
        C.EMBEDDING: "Array(Float32)",
        C.IMAGE_EMBEDDING: "Array(Float32)",
        C.TEXT_EMBEDDING: "Array(Float32)",
        C.IMAGE_SOURCE: "String",
        C.MODEL_VERSION: "String",
    },
    ITEM_BEHAVIOUR: {
        **{f"{kind}_{d}d": "Int64" for d in WINDOWS for kind in ("impressions", "clicks")},
        **{f"ctr_{d}d": "Float64" for d in WINDOWS},
        "popularity_rank": "Int64",
    },
    USER_BEHAVIOUR: {
        **{f"{kind}_{d}d": "Int64" for d in WINDOWS for kind in ("impressions", "clicks")},
        **{f"ctr_{d}d": "Float64" for d in WINDOWS},
        "click_categories_30d": "Array(String)",
        "click_category_shares_30d": "Array(Float64)",
        "last_clicked_items": "Array(String)",
        "days_since_last_click": "Float64",
    },
}
# Views the server updates from accepted events (Feast push), by the name of their push source.
PUSH_SOURCES = {USER_BEHAVIOUR: f"{USER_BEHAVIOUR}_push"}
USER_PUSH_SOURCE = PUSH_SOURCES[USER_BEHAVIOUR]
ENTITY_OF_VIEW = {ITEM_CONTENT: "item", ITEM_BEHAVIOUR: "item", USER_BEHAVIOUR: "user"}
JOIN_KEYS = {"user": C.USER_ID, "item": C.ITEM_ID}


TIMESTAMP = pl.Datetime("us", "UTC")  # the event_timestamp of every source table


def _polars_dtype(feast_type: str) -> pl.DataType:
    simple = {"Int64": pl.Int64(), "Float64": pl.Float64(), "Float32": pl.Float32(), "String": pl.String()}
    if feast_type.startswith("Array("):
        return pl.List(simple[feast_type[6:-1]])
    return simple[feast_type]


def source_schema(view: str) -> dict[str, pl.DataType]:
    """Columns and polars types of a view's offline source table."""
    key = JOIN_KEYS[ENTITY_OF_VIEW[view]]
    features = {f: _polars_dtype(t) for f, t in SCHEMAS[view].items()}
    return {key: pl.String(), C.EVENT_TIMESTAMP: TIMESTAMP, **features}


def source_path(sources_dir: str | Path, view: str) -> Path:
    """The parquet file behind a feature view (built on Ray: a link to a folder of parts)."""
    return Path(sources_dir) / f"{view}.parquet"


@dataclass(frozen=True)
class Definitions:
    """Everything `feast apply` registers."""

    user: Any
    item: Any
    views: dict[str, Any]

    @property
    def objects(self) -> list[Any]:
        return [self.user, self.item, *self.views.values()]


def _feast_type(name: str) -> Any:
    from feast import types

    if name.startswith("Array(") and name.endswith(")"):
        return types.Array(getattr(types, name[6:-1]))
    return getattr(types, name)


def build_definitions(sources_dir: str | Path) -> Definitions:
    """Entities and feature views over the parquet sources in `sources_dir`."""
    from datetime import timedelta

    from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType

    entities = {
        "user": Entity(
            name="user",
            join_keys=[C.USER_ID],
            value_type=ValueType.STRING,
            description="A shopper (user_id from the users table)",
        ),
        "item": Entity(
            name="item",
            join_keys=[C.ITEM_ID],
            value_type=ValueType.STRING,
            description="A catalogue item (item_id from the items table)",
        ),
    }
    descriptions = {
        ITEM_CONTENT: "CLIP vectors of the item's image and text (fused, image, text) and provenance",
        ITEM_BEHAVIOUR: "Snapshots of impressions, clicks and prior-smoothed CTR; popularity rank",
        USER_BEHAVIOUR: "Snapshots of a user's clicks, CTR, category shares and recent clicks",
    }
    views = {}
    for view, schema in SCHEMAS.items():
        source = FileSource(
            name=f"{view}_source", path=str(source_path(sources_dir, view)), timestamp_field=C.EVENT_TIMESTAMP
        )
        if view in PUSH_SOURCES:  # batch rows materialized, stream rows pushed: one view for both
            source = PushSource(name=PUSH_SOURCES[view], batch_source=source)
        views[view] = FeatureView(
            name=view,
            entities=[entities[ENTITY_OF_VIEW[view]]],
            ttl=timedelta(0),  # no expiry: a snapshot stays valid until the next one
            schema=[Field(name=f, dtype=_feast_type(t)) for f, t in schema.items()],
            source=source,
            online=True,
            description=descriptions[view],
        )
    return Definitions(user=entities["user"], item=entities["item"], views=views)
