"""Data contracts: the schema of each table and one validation function per table.

A validation splits a frame into good rows (cast to the contract's types) and bad rows, each
with a `reason`. Structural problems (an empty file, a missing required column) raise a
`ContractError` at once; row problems are quarantined or, with quarantine off, raise an error
that names the file, the column, the rule and up to five offending rows.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from recsys.data import columns as C

REPLACEMENT_CHAR = "\ufffd"  # what a lossy UTF-8 decode leaves in place of bad bytes


class ContractError(ValueError):
    """A table breaks its contract. The message says where, what rule, and shows examples."""

    def __init__(self, source: str, message: str, examples: pl.DataFrame | None = None):
        self.source = source
        text = f"{source}: {message}"
        if examples is not None and examples.height:
            with pl.Config(tbl_rows=5, tbl_cols=12, fmt_str_lengths=40):
                text += f"\nfirst offending rows:\n{examples.head(5)}"
        super().__init__(text)


@dataclass(frozen=True)
class Column:
    name: str
    dtype: pl.DataType
    required: bool = True
    nullable: bool = True


TIMESTAMP = pl.Datetime("us", "UTC")

ITEMS = (
    Column(C.ITEM_ID, pl.String(), nullable=False),
    Column(C.TITLE, pl.String()),
    Column(C.DESCRIPTION, pl.String()),
    Column(C.CATEGORY, pl.String()),
    Column(C.PRICE, pl.Float64(), required=False),
    Column(C.IMAGE_URI, pl.String(), required=False),
    Column(C.IMAGE_SOURCE, pl.String(), required=False),
    Column(C.CREATED_AT, TIMESTAMP, required=False),
    Column(C.AVAILABLE, pl.Boolean(), required=False),  # in stock; missing or empty: true
)
USERS = (
    Column(C.USER_ID, pl.String(), nullable=False),
    Column(C.CREATED_AT, TIMESTAMP, required=False),
)
IMPRESSIONS = (
    Column(C.REQUEST_ID, pl.String(), nullable=False),
    Column(C.USER_ID, pl.String(), nullable=False),
    Column(C.ITEM_ID, pl.String(), nullable=False),
    Column(C.POSITION, pl.Int32()),
    Column(C.EVENT_TIMESTAMP, TIMESTAMP, nullable=False),
    Column(C.CLICKED, pl.Boolean(), nullable=False),
    Column(C.PROPENSITY, pl.Float64(), required=False),
    Column(C.SLOT_PROPENSITIES, pl.List(pl.Float32()), required=False),
    Column(C.POLICY, pl.String(), required=False),
)
CLICK_ONLY_REQUIRED = (C.USER_ID, C.ITEM_ID, C.EVENT_TIMESTAMP)
CONTRACTS: dict[str, tuple[Column, ...]] = {"items": ITEMS, "users": USERS, "impressions": IMPRESSIONS}


@dataclass
class Validated:
    """Result of validating one table."""

    table: str
    source: str
    good: pl.DataFrame
    bad: pl.DataFrame  # the offending rows as read (strings), plus `reason`
    notes: list[str] = field(default_factory=list)

    @property
    def reasons(self) -> dict[str, int]:
        if not self.bad.height:
            return {}
        counts = self.bad.group_by(C.REASON).len().sort("len", descending=True)
        return dict(zip(counts[C.REASON].to_list(), counts["len"].to_list(), strict=True))

    def raise_if_bad(self) -> None:
        if self.bad.height:
            reason, count = next(iter(self.reasons.items()))
            examples = self.bad.filter(pl.col(C.REASON) == reason)
            raise ContractError(
                self.source,
                f"{self.bad.height} of {self.bad.height + self.good.height} rows of table "
                f"'{self.table}' break the contract; most common: {reason} ({count} rows). "
                "Fix them, or import with --quarantine to set them aside.",
                examples,
            )


def _check_not_empty(df: pl.DataFrame, source: str) -> None:
    if df.width == 0 or df.height == 0:
        raise ContractError(source, "the file is empty (expected a header and at least one row)")


def _check_columns(df: pl.DataFrame, contract: Sequence[Column], table: str, source: str) -> None:
    missing = [c.name for c in contract if c.required and c.name not in df.columns]
    if missing:
        raise ContractError(
            source,
            f"table '{table}' is missing required column(s) {missing}; "
            f"expected {[c.name for c in contract if c.required]}, found {df.columns}",
        )


def _type_name(dtype: pl.DataType) -> str:
    return "timestamp" if isinstance(dtype, pl.Datetime) else str(dtype).lower()


def _cast_expr(col: Column, src: pl.DataType) -> pl.Expr:
    e = pl.col(col.name)
    if isinstance(col.dtype, pl.Datetime):
        if src == pl.String:
            return parse_timestamps(e)
        if src.is_integer():  # unix seconds
            return pl.from_epoch(e, time_unit="s").dt.replace_time_zone("UTC")
        if isinstance(src, pl.Datetime):
            e = e.dt.cast_time_unit("us")
            return e.dt.replace_time_zone("UTC") if src.time_zone is None else e.dt.convert_time_zone("UTC")
        if isinstance(src, pl.Date):
            return e.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    if col.dtype == pl.Boolean and src == pl.String:
        low = e.str.strip_chars().str.to_lowercase()
        return (
            pl.when(low.is_in(["true", "1", "t", "yes"])).then(True)
            .when(low.is_in(["false", "0", "f", "no"])).then(False)
            .otherwise(None)
        )
    if col.dtype == pl.Boolean and src.is_numeric():
        return pl.when(e == 1).then(True).when(e == 0).then(False).otherwise(None)
    if col.dtype.is_integer() and src == pl.String:
        # "3" and "3.0" (a CSV written from a float column) are both the integer 3; "3.5" is not
        f = e.str.strip_chars().cast(pl.Float64, strict=False)
        return pl.when(f == f.floor()).then(f).otherwise(None).cast(col.dtype, strict=False)
    if col.dtype.is_numeric() and src == pl.String:
        e = e.str.strip_chars()
    return e.cast(col.dtype, strict=False)


_AWARE_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z")
_NAIVE_FORMATS = (
    "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d",
)


def parse_timestamps(e: pl.Expr) -> pl.Expr:
    """Text to UTC timestamps, row by row: ISO 8601 with or without offset (naive = UTC), a date,
    or unix seconds. (polars' own inference fixes one format from the first value and would turn
    every row written differently into a null, i.e. lose good rows.)"""
    e = e.str.strip_chars()
    aware = [e.str.to_datetime(f, time_unit="us", strict=False).dt.convert_time_zone("UTC")
             for f in _AWARE_FORMATS]
    naive = [e.str.to_datetime(f, time_unit="us", strict=False).dt.replace_time_zone("UTC")
             for f in _NAIVE_FORMATS]
    epoch = pl.from_epoch(e.str.to_integer(strict=False), time_unit="s").dt.replace_time_zone("UTC")
    return pl.coalesce([*aware, *naive, epoch])


def _conform(
    df: pl.DataFrame, contract: Sequence[Column], table: str, source: str
) -> tuple[pl.DataFrame, pl.Series]:
    """Cast to contract types. Returns the cast frame and a per-row reason (null where fine)."""
    df = df.with_row_index("__row")
    for col in contract:
        if col.name not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=col.dtype).alias(col.name))
    reasons: list[pl.Expr] = []
    casts: list[pl.Expr] = []
    for col in contract:
        src = df.schema[col.name]
        cast = _cast_expr(col, src).alias(col.name)
        casts.append(cast)
        raw = pl.col(col.name)
        raw_present = raw.is_not_null()
        if src == pl.String:
            raw_present = raw_present & (raw.str.strip_chars() != "")
            reasons.append(
                pl.when(raw.str.contains(REPLACEMENT_CHAR, literal=True)).then(
                    pl.lit(f"column '{col.name}': text is not valid UTF-8")
                )
            )
        reasons.append(
            pl.when(raw_present & cast.is_null()).then(
                pl.lit(f"column '{col.name}': expected {_type_name(col.dtype)}, value does not parse")
            )
        )
        if not col.nullable:
            reasons.append(
                pl.when(~raw_present).then(pl.lit(f"column '{col.name}': null or empty, not allowed"))
            )
    reason = df.select(pl.coalesce(reasons).alias(C.REASON)).to_series() if reasons else None
    cast_df = df.select([pl.col("__row"), *casts])
    # empty strings in optional text columns mean "none"
    text_cols = [c.name for c in contract if c.dtype == pl.String and c.nullable]
    cast_df = cast_df.with_columns(
        [
            pl.when(pl.col(n).str.strip_chars() == "").then(None).otherwise(pl.col(n)).alias(n)
            for n in text_cols
        ]
    )
    return cast_df, reason


def _split(
    table: str, source: str, raw: pl.DataFrame, cast: pl.DataFrame, reason: pl.Series,
    contract: Sequence[Column], notes: list[str] | None = None,
) -> Validated:
    bad_mask = reason.is_not_null()
    names = [c.name for c in contract]
    good = cast.filter(~bad_mask).select(names)
    raw_str = raw.with_row_index("__row").select(
        [pl.col("__row"), *[_as_text(pl.col(c), raw.schema[c]) for c in raw.columns]]
    )
    bad = (
        raw_str.filter(bad_mask)
        .with_columns(reason.filter(bad_mask).alias(C.REASON))
        .rename({"__row": "row"})
    )
    return Validated(table, source, good, bad, notes or [])


def _as_text(e: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A column as text for the quarantine table (a list as its values joined by ';')."""
    if isinstance(dtype, pl.List | pl.Array):
        return e.cast(pl.List(pl.String)).list.join(";")
    return e.cast(pl.String)


def _add_reason(reason: pl.Series, mask: pl.Series, text: str) -> pl.Series:
    """Set `text` as the reason where `mask` is true and no earlier reason was found."""
    return pl.select(
        pl.when(reason.is_null() & mask).then(pl.lit(text)).otherwise(reason).alias(C.REASON)
    ).to_series()


def _later_duplicate(ids: pl.Series) -> pl.Series:
    """True on every repeat of an id after its first row (the first row is not lost)."""
    return (ids.is_duplicated() & ~ids.is_first_distinct() & ids.is_not_null()).fill_null(False)


def _stays_under(base_dir: Path, relative: Path) -> bool:
    """Whether `base_dir / relative` stays inside `base_dir` once `..` parts are resolved
    (lexically: a symbolic link inside the folder is the folder owner's choice)."""
    base = os.path.normpath(os.path.abspath(base_dir))
    target = os.path.normpath(os.path.join(base, relative))
    return target == base or target.startswith(base.rstrip(os.sep) + os.sep)


def validate_items(df: pl.DataFrame, source: str, base_dir: Path | None = None) -> Validated:
    """Validate an items table. Relative image paths resolve against `base_dir`; one that leads
    outside it (`../../etc/passwd`) makes its row bad.

    An image path that does not exist is not a reason to lose the item: the row is kept without
    an image (`image_source = none`) and the fact is listed in `notes`.
    """
    _check_not_empty(df, source)
    _check_columns(df, ITEMS, "items", source)
    cast, reason = _conform(df, ITEMS, "items", source)
    reason = _add_reason(reason, _later_duplicate(cast[C.ITEM_ID]),
                         f"column '{C.ITEM_ID}': duplicate id (the first row with it is kept)")
    reason = _add_reason(reason, (cast[C.PRICE] < 0).fill_null(False),
                         f"column '{C.PRICE}': negative price")
    bad_source = ~cast[C.IMAGE_SOURCE].is_in(list(C.IMAGE_SOURCES)) & cast[C.IMAGE_SOURCE].is_not_null()
    reason = _add_reason(reason, bad_source,
                         f"column '{C.IMAGE_SOURCE}': expected one of {list(C.IMAGE_SOURCES)}")
    notes: list[str] = []
    uris = cast[C.IMAGE_URI].to_list()
    resolved, missing, escaping = [], [], [False] * len(uris)
    for i, uri in enumerate(uris):
        if uri is None or "://" in uri:
            resolved.append(uri)
            continue
        path = Path(uri)
        if not path.is_absolute() and base_dir is not None:
            if not _stays_under(base_dir, path):
                escaping[i] = True
                resolved.append(None)
                continue
            path = base_dir / path
        if path.exists():
            resolved.append(str(path.resolve()))
        else:
            resolved.append(None)
            missing.append(i)
    cast = cast.with_columns(pl.Series(C.IMAGE_URI, resolved, dtype=pl.String))
    reason = _add_reason(reason, pl.Series(escaping, dtype=pl.Boolean),
                         f"column '{C.IMAGE_URI}': relative path leads outside the file's folder")
    if missing:
        examples = [(cast[C.ITEM_ID][i], uris[i]) for i in missing[:5]]
        notes.append(
            f"{source}: {len(missing)} image path(s) in column '{C.IMAGE_URI}' do not exist; those "
            f"items are kept without an image (image_source 'none'); e.g. (item_id, path) {examples}"
        )
    src = (
        pl.when(pl.col(C.IMAGE_SOURCE).is_not_null()).then(pl.col(C.IMAGE_SOURCE))
        .when(pl.col(C.IMAGE_URI).is_not_null()).then(pl.lit("original"))
        .otherwise(pl.lit("none"))
    )
    cast = cast.with_columns(src.alias(C.IMAGE_SOURCE))
    cast = cast.with_columns(
        pl.when(pl.col(C.IMAGE_URI).is_null()).then(pl.lit("none")).otherwise(pl.col(C.IMAGE_SOURCE))
        .alias(C.IMAGE_SOURCE),
        pl.col(C.AVAILABLE).fill_null(True),
    )
    return _split("items", source, df, cast, reason, ITEMS, notes)


def validate_users(df: pl.DataFrame, source: str) -> Validated:
    _check_not_empty(df, source)
    _check_columns(df, USERS, "users", source)
    extra = [c for c in df.columns if c not in {col.name for col in USERS}]
    cast, reason = _conform(df, USERS, "users", source)
    reason = _add_reason(reason, _later_duplicate(cast[C.USER_ID]),
                         f"column '{C.USER_ID}': duplicate id (the first row with it is kept)")
    result = _split("users", source, df, cast, reason, USERS)
    if extra:  # optional attributes travel along as text
        attrs = df.with_row_index("__row").filter(reason.is_null()).select(
            [pl.col(c).cast(pl.String) for c in extra]
        )
        result.good = pl.concat([result.good, attrs], how="horizontal")
    return result


def is_click_only(df: pl.DataFrame) -> bool:
    """A click-only log has user, item and timestamp but no request/position/clicked columns."""
    return all(c in df.columns for c in CLICK_ONLY_REQUIRED) and not any(
        c in df.columns for c in (C.REQUEST_ID, C.CLICKED)
    )


def validate_impressions(
    df: pl.DataFrame, source: str, known_items: pl.Series | None = None
) -> Validated:
    """Validate a click log (impressions contract, or click-only: every row is a click).

    Click-only rows get `request_id = user_id:day` (the query group for ranking), no position,
    `clicked = true`, no propensity and `policy = "unknown"`.
    """
    _check_not_empty(df, source)
    notes: list[str] = []
    click_only = is_click_only(df)
    if click_only:
        notes.append("click-only log: every row is a click; query groups are user-days")
    else:
        try:
            _check_columns(df, IMPRESSIONS, "impressions", source)
        except ContractError as exc:
            raise ContractError(
                source, f"{str(exc).removeprefix(f'{source}: ')} (or, for a click-only log, give "
                f"exactly the columns {list(CLICK_ONLY_REQUIRED)})"
            ) from None
    cast, reason = _conform(df, IMPRESSIONS if not click_only else _CLICK_ONLY, "impressions", source)
    if click_only:
        cast = cast.with_columns(
            (pl.col(C.USER_ID) + ":" + pl.col(C.EVENT_TIMESTAMP).dt.strftime("%Y-%m-%d")).alias(C.REQUEST_ID),
            pl.lit(None, dtype=pl.Int32).alias(C.POSITION),
            pl.lit(True).alias(C.CLICKED),
            pl.lit(None, dtype=pl.Float64).alias(C.PROPENSITY),
            (
                pl.Series(C.POLICY, df[C.POLICY].cast(pl.String))
                if C.POLICY in df.columns else pl.lit("unknown")
            ).alias(C.POLICY),
        )
        key = [C.USER_ID, C.ITEM_ID, C.EVENT_TIMESTAMP]
    else:
        key = [C.REQUEST_ID, C.POSITION] if cast[C.POSITION].null_count() == 0 else [C.REQUEST_ID, C.ITEM_ID]
    dup = cast.select(pl.struct(key).is_duplicated() & ~pl.struct(key).is_first_distinct()).to_series()
    reason = _add_reason(reason, dup, f"duplicate impression key {key}")
    p = cast[C.PROPENSITY]
    reason = _add_reason(reason, ((p <= 0) | (p > 1)).fill_null(False),
                         f"column '{C.PROPENSITY}': must be in (0, 1]")
    reason = _add_reason(reason, (cast[C.POSITION] < 0).fill_null(False),
                         f"column '{C.POSITION}': must be >= 0")
    slots = cast[C.SLOT_PROPENSITIES]
    outside = (slots.list.eval((pl.element() < 0) | (pl.element() > 1)).list.any()
               | (slots.list.len() <= cast[C.POSITION])).fill_null(False)
    reason = _add_reason(reason, outside, f"column '{C.SLOT_PROPENSITIES}': values in [0, 1], one per "
                         "slot up to at least the row's position")
    if known_items is not None:
        unknown = ~cast[C.ITEM_ID].is_in(known_items.implode()) & cast[C.ITEM_ID].is_not_null()
        reason = _add_reason(reason, unknown, f"column '{C.ITEM_ID}': item not in the catalogue")
    cast = cast.with_columns(pl.col(C.POLICY).fill_null("unknown"))
    return _split("impressions", source, df, cast, reason, IMPRESSIONS, notes)


_CLICK_ONLY = tuple(
    Column(
        c.name, c.dtype, required=c.name in CLICK_ONLY_REQUIRED, nullable=c.name not in CLICK_ONLY_REQUIRED
    )
    for c in IMPRESSIONS
    if c.name not in (C.REQUEST_ID, C.POSITION, C.CLICKED, C.PROPENSITY, C.POLICY)
)
