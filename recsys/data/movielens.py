"""MovieLens into the data contracts (`recsys import movielens PATH`).

Two layouts are read:

- **ml-100k**: `u.data` (ratings, tab separated), `u.item` (latin-1, `|` separated, genre flags),
  `u.user`; optionally `items_enriched.csv` (wiki summaries, poster file names) and `posters/`.
- **ml-latest-small**: `ratings.csv`, `movies.csv` (`genres` joined by `|`).

Ratings at or above `min_rating` become click events of a click-only log (every rating by
default): `request_id = user_id:day`, no position, no propensity, policy `movielens`. Items get
`description = title + genres + summary`, `category =` first genre, no price, `image_uri =` the
poster's absolute path (read in place, never copied) and `created_at =` the release date. Users
get `created_at =` their first rating. Everything goes through the contract validation and
quarantine of `recsys.data.tables`.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import polars as pl

from recsys.data import columns as C
from recsys.data.contracts import ContractError, validate_impressions, validate_items, validate_users
from recsys.data.tables import (
    ImportReport,
    check_validated,
    load_table,
    remember_image_root,
    remove_import_temps,
    store_validated,
)
from recsys.workspace import Workspace

POLICY = "movielens"
GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)


def import_movielens(
    path: str | Path, ws: Workspace, min_rating: float = 0.0, quarantine_bad: bool = True,
    replace: bool = False, max_bad_share: float | None = None,
) -> list[ImportReport]:
    """Import a MovieLens folder into `ws`; returns the reports of items, users and impressions.

    All three tables are validated and checked (`check_validated`) before any is stored, so a
    refused import changes none of them. Like every import they are upserted by key unless
    `replace`; the previous tables stay in their history. Temporary files a killed import left
    are removed first."""
    remove_import_temps(ws, ["items", "users", "impressions"], time.time())
    path = Path(path).expanduser().resolve()
    if (path / "u.data").exists():
        items, items_src, users, users_src, ratings, ratings_src = _read_100k(path)
    elif (path / "ratings.csv").exists() and (path / "movies.csv").exists():
        items, items_src, users, users_src, ratings, ratings_src = _read_latest(path)
    else:
        raise ContractError(
            str(path), "not a MovieLens folder: expected u.data + u.item (ml-100k) or ratings.csv + "
            "movies.csv (ml-latest-small)"
        )
    first = ratings.group_by(C.USER_ID).agg(pl.col(C.EVENT_TIMESTAMP).min().alias(C.CREATED_AT))
    users = first if users is None else users.join(first, on=C.USER_ID, how="left")
    clicks = ratings.filter(pl.col("rating") >= min_rating).select(
        C.USER_ID, C.ITEM_ID, C.EVENT_TIMESTAMP, pl.lit(POLICY).alias(C.POLICY)
    )
    if clicks.height == 0:
        raise ContractError(ratings_src, f"no rating is >= min_rating {min_rating}: nothing to import")

    checked_items = validate_items(items, items_src, base_dir=path)
    known = checked_items.good[C.ITEM_ID]
    if not replace and ws.table("items").exists():  # an upsert keeps the stored items
        known = pl.concat([known, load_table(ws, "items", columns=[C.ITEM_ID])[C.ITEM_ID]])
    checked = [checked_items, validate_users(users, users_src),
               validate_impressions(clicks, ratings_src, known_items=known)]
    quarantined = [check_validated(ws, v, quarantine_bad, max_bad_share) for v in checked]
    reports = [store_validated(ws, v, quarantine_bad, replace=replace, qpath=q, checked=True)
               for v, q in zip(checked, quarantined, strict=True)]
    remember_image_root(ws, path)  # the posters are read in place
    return reports


def _describe(title: pl.Expr, genres: pl.Expr, summary: pl.Expr | None) -> pl.Expr:
    """`Title. Genres: A, B. Summary` (genres a list column)."""
    parts = [title + pl.lit("."), pl.lit("Genres: ") + genres.list.join(", ") + pl.lit(".")]
    if summary is not None:
        parts.append(summary.fill_null(""))
    return pl.concat_str(parts, separator=" ").str.replace_all(r"\s+", " ").str.strip_chars()


def _epoch(col: str) -> pl.Expr:
    return pl.from_epoch(pl.col(col).cast(pl.Int64), time_unit="s").dt.replace_time_zone("UTC")


def _read_100k(path: Path):
    ratings_src = str(path / "u.data")
    ratings = pl.read_csv(
        path / "u.data", separator="\t", has_header=False,
        schema={C.USER_ID: pl.String, C.ITEM_ID: pl.String, "rating": pl.Float64, "timestamp": pl.Int64},
    ).with_columns(_epoch("timestamp").alias(C.EVENT_TIMESTAMP))

    genres = GENRES_100K
    if (path / "u.genre").exists():
        lines = (path / "u.genre").read_text("latin-1").splitlines()
        pairs = [line.split("|") for line in lines if "|" in line]
        genres = tuple(name for name, _ in sorted(pairs, key=lambda p: int(p[1])))
    text = (path / "u.item").read_bytes().decode("latin-1")
    raw = pl.read_csv(io.BytesIO(text.encode()), separator="|", has_header=False, infer_schema=False,
                      quote_char=None)
    raw = raw.rename(dict(zip(raw.columns[:5], [C.ITEM_ID, C.TITLE, "release", "video", "url"], strict=True)))
    flags = raw.columns[5:5 + len(genres)]
    genre_list = pl.concat_list(
        [pl.when(pl.col(f) == "1").then(pl.lit(g)) for f, g in zip(flags, genres, strict=True)]
    ).list.drop_nulls()
    items = raw.select(C.ITEM_ID, C.TITLE, "release", genre_list.alias("genres"))
    items_src = str(path / "u.item")

    enriched = path / "items_enriched.csv"
    summary = None
    items = items.with_columns(pl.lit(None, dtype=pl.String).alias(C.IMAGE_URI))
    if enriched.exists():
        extra = pl.read_csv(enriched, infer_schema=False, encoding="utf8-lossy").select(
            pl.col("item_id").alias(C.ITEM_ID), pl.col("wiki_summary").alias("summary"),
            pl.col("poster_file").alias("poster"),
        )
        items = items.join(extra, on=C.ITEM_ID, how="left")
        summary = pl.col("summary")
        items = items.with_columns(
            pl.when(pl.col("poster").str.strip_chars() != "")
            .then(pl.lit(str(path) + "/") + pl.col("poster")).alias(C.IMAGE_URI)
        )
    elif (path / "posters").is_dir():
        have = {p.stem for p in (path / "posters").glob("*.jpg")}
        items = items.with_columns(
            pl.when(pl.col(C.ITEM_ID).is_in(list(have)))
            .then(pl.lit(str(path / "posters") + "/") + pl.col(C.ITEM_ID) + ".jpg").alias(C.IMAGE_URI)
        )
    items = items.select(
        C.ITEM_ID, C.TITLE,
        _describe(pl.col(C.TITLE), pl.col("genres"), summary).alias(C.DESCRIPTION),
        pl.col("genres").list.first().fill_null("unknown").alias(C.CATEGORY),
        C.IMAGE_URI,
        pl.col("release").str.strip_chars().str.to_datetime("%d-%b-%Y", strict=False, time_unit="us")
        .dt.replace_time_zone("UTC").alias(C.CREATED_AT),
    )

    users, users_src = None, ratings_src
    if (path / "u.user").exists():
        users_src = str(path / "u.user")
        users = pl.read_csv(
            path / "u.user", separator="|", has_header=False, infer_schema=False,
            new_columns=[C.USER_ID, "age", "gender", "occupation", "zip_code"], encoding="utf8-lossy",
        )
    return items, items_src, users, users_src, ratings, ratings_src


def _read_latest(path: Path):
    ratings_src = str(path / "ratings.csv")
    ratings = pl.read_csv(path / "ratings.csv", infer_schema=False, encoding="utf8-lossy")
    ratings = ratings.select(
        pl.col("userId").alias(C.USER_ID), pl.col("movieId").alias(C.ITEM_ID),
        pl.col("rating").cast(pl.Float64, strict=False), pl.col("timestamp").cast(pl.Int64, strict=False),
    )
    bad = ratings.filter(pl.col("rating").is_null() | pl.col("timestamp").is_null())
    if bad.height:
        raise ContractError(ratings_src, "columns 'rating'/'timestamp': values do not parse as numbers", bad)
    ratings = ratings.with_columns(_epoch("timestamp").alias(C.EVENT_TIMESTAMP))
    movies = pl.read_csv(path / "movies.csv", infer_schema=False, encoding="utf8-lossy")
    genres = (
        pl.when(pl.col("genres") == "(no genres listed)").then(pl.lit("")).otherwise(pl.col("genres"))
        .str.split("|").list.eval(pl.element().filter(pl.element() != ""))
    )
    year = pl.col("title").str.extract(r"\((\d{4})\)\s*$", 1)
    items = movies.select(
        pl.col("movieId").alias(C.ITEM_ID), pl.col("title").alias(C.TITLE),
        _describe(pl.col("title"), genres, None).alias(C.DESCRIPTION),
        genres.list.first().fill_null("unknown").alias(C.CATEGORY),
        (year + "-01-01").alias(C.CREATED_AT),
    )
    return items, str(path / "movies.csv"), None, ratings_src, ratings, ratings_src
