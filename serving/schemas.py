"""Request and response bodies of the HTTP API (pydantic; unknown fields are rejected)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ID_PATTERN = r"^[A-Za-z0-9_.:@-]+$"
ID_MAX = 64
MAX_K = 100
MAX_EXCLUDE = 500
MAX_CATEGORIES = 100
MAX_EVENTS = 1000
EARLIEST_EVENT = datetime(2000, 1, 1, tzinfo=UTC)
MAX_FUTURE = timedelta(days=1)

Id = Annotated[str, Field(min_length=1, max_length=ID_MAX, pattern=ID_PATTERN,
                          description="letters, digits and _ . : @ - (at most 64)")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Category = Annotated[str, Field(min_length=1, max_length=ID_MAX)]


def _comma_list(value: object) -> object:
    """"a,b" and ["a,b", "c"] (repeated query parameters) -> ["a", "b", "c"]; blanks dropped."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list | tuple):
        return [p.strip() for v in value for p in (v.split(",") if isinstance(v, str) else [v])
                if not isinstance(p, str) or p.strip()]
    return value


class RuleParams(BaseModel):
    """The shop's request-time rules (`recsys.rules.Rules`); lists are JSON arrays or comma lists.
    They apply before the cut to k: k items come back whenever k eligible items exist."""

    categories: list[Category] = Field(default_factory=list, max_length=MAX_CATEGORIES,
                                       description="only these categories (comma list; empty: any)")
    exclude_categories: list[Category] = Field(default_factory=list, max_length=MAX_CATEGORIES,
                                               description="never these categories (comma list)")
    min_price: float | None = Field(None, ge=0, allow_inf_nan=False,
                                    description="lowest price (items without a price are left out)")
    max_price: float | None = Field(None, ge=0, allow_inf_nan=False,
                                    description="highest price (items without a price are left out)")
    exclude: list[Id] = Field(default_factory=list, max_length=MAX_EXCLUDE,
                              description="item ids never to return, e.g. already in the basket (comma list)")
    max_per_category: int | None = Field(None, ge=1, le=MAX_K, description="at most this many per category")
    diversity: float = Field(0.0, ge=0, le=1, allow_inf_nan=False,
                             description="0 (ranker's order) .. 1 (most diverse): MMR over item vectors")

    @field_validator("categories", "exclude_categories", "exclude", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        return _comma_list(value)

    @model_validator(mode="after")
    def _price_range(self) -> RuleParams:
        if self.min_price is not None and self.max_price is not None and self.min_price > self.max_price:
            raise ValueError(f"min_price {self.min_price} is above max_price {self.max_price}")
        return self


class RecommendationQuery(RuleParams):
    """Query parameters of GET /v1/users/{id}/recommendations (unknown parameters are ignored)."""

    k: int = Field(10, ge=1, le=MAX_K, description="number of items, 1..100")
    category: Category | None = Field(None, description="only this category (with `categories`: both)")


class RecommendationRequest(RuleParams, Strict):
    user_id: Id
    k: int = Field(10, ge=1, le=MAX_K)
    category: Category | None = Field(None, description="only this category (with `categories`: both)")
    timestamp: datetime | None = Field(None, description="context time (default: now, UTC)")


class RecommendedItem(BaseModel):
    item_id: str
    rank: int = Field(description="1-based position in the response")
    score: float
    propensity: float = Field(description="probability that this policy showed this item at this rank")
    slot_propensities: list[float] | None = Field(
        None, description="probability that this policy showed this item at each rank 1..k of this "
        "response; echo it in POST /v1/events for item-level off-policy estimates")
    title: str | None = None
    category: str | None = None
    image_source: str | None = None
    reason: str | None = Field(None, description="why it is here, in a few words")


class Recommendations(BaseModel):
    request_id: str
    user_id: str
    items: list[RecommendedItem]
    ranker_version: str | None
    retrieval_version: str | None
    policy: str = Field(description="echo it in POST /v1/events so the log records the logging policy")
    fallback: Literal["popular"] | None = None
    degraded: bool = False
    timings_ms: dict[str, float] = Field(default_factory=dict)


class SimilarItems(BaseModel):
    item_id: str
    items: list[RecommendedItem]
    retrieval_version: str | None


class Event(Strict):
    """One impression (clicked or not) in the impressions contract."""

    request_id: Id
    user_id: Id
    item_id: Id
    position: int | None = Field(None, ge=0, le=10_000, description="0-based slot in the slate")
    clicked: bool = False
    propensity: float | None = Field(None, gt=0, le=1)
    slot_propensities: list[Annotated[float, Field(ge=0, le=1)]] | None = Field(
        None, max_length=1000, description="the response's slot_propensities of this item")
    policy: str | None = Field(None, max_length=200)
    event_timestamp: datetime | None = Field(
        None, description="default: the time it was received; naive times are UTC; from 2000-01-01 to a day "
        "after the server's clock")

    @field_validator("event_timestamp")
    @classmethod
    def _plausible_time(cls, ts: datetime | None) -> datetime | None:
        if ts is None:
            return None
        aware = ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
        if aware < EARLIEST_EVENT:
            raise ValueError(f"{ts.isoformat()} is before {EARLIEST_EVENT:%Y-%m-%d}")
        if aware > datetime.now(UTC) + MAX_FUTURE:
            raise ValueError(f"{ts.isoformat()} is more than a day after the server's clock")
        return ts


class EventBatch(Strict):
    events: list[Event] = Field(min_length=1, max_length=MAX_EVENTS)


class EventsAccepted(BaseModel):
    accepted: int = Field(description="events recorded (on disk before this answer)")
    duplicates: int = Field(0, description="events dropped: their (request_id, position) was recorded "
                            "before; omitted when 0")


class AvailabilityChange(Strict):
    item_ids: list[Id] = Field(min_length=1, max_length=10_000)
    available: bool


class AvailabilityChanged(BaseModel):
    matched: int = Field(description="item ids found in the catalogue")
    changed: int = Field(description="items whose availability this call flipped")
    unknown: list[str] = Field(description="item ids not in the catalogue (at most 20 shown)")


class Error(BaseModel):
    error: str
    message: str
