"""The daily-grid behaviour job as it was before issue 21, kept as a test oracle.

It lays every entity on a dense grid of one snapshot per day from its first event to the last
snapshot, so its output grows with the calendar; `features.jobs` now writes snapshots only on
the days a value changes (plus refresh days), and `test_sparse_snapshots.py` checks that an
as-of read of the new tables gives this job's values.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl

from features.definitions import ITEM_BEHAVIOUR, USER_BEHAVIOUR, WINDOWS
from features.jobs import DAY, TIMESTAMP, TS, BehaviourParams, _last_stamp, normalize_events, source_schema
from recsys.data import columns as C


def _windowed_counts(
    events: pl.DataFrame, key: str, last_stamp: datetime, params: BehaviourParams
) -> pl.DataFrame:
    """One row per (key, snapshot) with impressions/clicks/CTR over each window.

    Counts per (key, day) are laid on a dense daily grid; a window sum is a difference of
    cumulative sums, so each snapshot costs O(1) whatever the window.
    """
    last_day = int((last_stamp - DAY).timestamp() // 86_400)  # days since the epoch
    daily = (
        events.lazy()
        .filter(pl.col(TS) < last_stamp)
        .group_by(key, pl.col(TS).dt.epoch("d").cast(pl.Int32).alias("day"))
        .agg(impressions=pl.len().cast(pl.Int64), clicks=pl.col(C.CLICKED).sum().cast(pl.Int64))
        .sort(key, "day")
    )
    # the dense grid: every day from a key's first event day to the last day, laid out in key
    # order; each daily row lands at offset(key) + day - first(key), so no join is needed
    per_key = (
        daily.group_by(key, maintain_order=True)
        .agg(pl.col("day"), pl.col("impressions"), pl.col("clicks"), first=pl.col("day").first())
        .with_columns(length=pl.lit(last_day + 1, dtype=pl.Int64) - pl.col("first"))
        .with_columns(offset=pl.col("length").cum_sum() - pl.col("length"))
        .collect()
    )
    total = int(per_key["length"].sum() or 0)
    sparse = per_key.select(
        (pl.col("day") - pl.col("first") + pl.col("offset")).alias("pos"), "impressions", "clicks"
    ).explode("pos", "impressions", "clicks")
    pos = sparse["pos"].to_numpy()
    frame = per_key.select(
        pl.col(key).repeat_by("length").explode(),
        pl.int_ranges(pl.col("first"), pl.col("first") + pl.col("length")).explode().alias("day"),
        pl.col("offset").repeat_by("length").explode().alias("start"),
    ).with_row_index("row")
    counts = {}
    for kind in ("impressions", "clicks"):
        dense = np.zeros(total, dtype=np.int64)
        dense[pos] = sparse[kind].to_numpy()
        counts[f"cum_{kind}"] = np.cumsum(dense)
    frame = frame.with_columns(pl.Series(k, v) for k, v in counts.items())
    # window sum over d days = cum(t) - cum(t - d), or cum(t) - cum(before the key's first row)
    a, b = params.prior_clicks, params.prior_impressions
    cols = []
    row, start = pl.col("row").cast(pl.Int64), pl.col("start").cast(pl.Int64)
    for d in WINDOWS:
        for kind in ("impressions", "clicks"):
            cum = pl.col(f"cum_{kind}")
            before_key = cum.shift(1).gather(start).fill_null(0)
            window = pl.when(row - d >= start).then(cum - cum.shift(d)).otherwise(cum - before_key)
            cols.append(window.alias(f"{kind}_{d}d"))
    frame = frame.with_columns(cols).with_columns(
        [
            ((pl.col(f"clicks_{d}d") + a) / (pl.col(f"impressions_{d}d") + b)).alias(f"ctr_{d}d")
            for d in WINDOWS
        ]
    )
    stamp = (pl.col("day").cast(pl.Int64) * 86_400_000_000).cast(TIMESTAMP)
    return frame.with_columns(stamp.alias("day"), (stamp + pl.duration(days=1)).alias(TS)).drop(
        "row", "start", "cum_impressions", "cum_clicks"
    )


def item_behaviour(
    impressions: pl.DataFrame, params: BehaviourParams = BehaviourParams(), until: datetime | None = None
) -> pl.DataFrame:
    """Daily item snapshots: impressions, clicks, CTR over 1/7/30 days and popularity rank.

    `popularity_rank` ranks the items of one snapshot by clicks over 7 days (1 = most; ties
    share the best rank).
    """
    events = normalize_events(impressions)
    last = _last_stamp(events, until)
    if last is None:
        return pl.DataFrame(schema=source_schema(ITEM_BEHAVIOUR))
    frame = _windowed_counts(events, C.ITEM_ID, last, params).with_columns(
        pl.col("clicks_7d").rank("min", descending=True).over(TS).cast(pl.Int64).alias("popularity_rank")
    )
    return frame.select(list(source_schema(ITEM_BEHAVIOUR))).sort(TS, C.ITEM_ID)


def user_behaviour(
    impressions: pl.DataFrame,
    items: pl.DataFrame | None = None,
    params: BehaviourParams = BehaviourParams(),
    until: datetime | None = None,
) -> pl.DataFrame:
    """Daily user snapshots: windowed clicks/CTR, 30-day category click shares, last clicks.

    `items` (item_id, category) gives the categories; without it the shares are empty.
    """
    events = normalize_events(impressions)
    last = _last_stamp(events, until)
    if last is None:
        return pl.DataFrame(schema=source_schema(USER_BEHAVIOUR))
    key = C.USER_ID
    frame = _windowed_counts(events, key, last, params)

    clicks = (
        events.filter(pl.col(C.CLICKED) & (pl.col(TS) < last))
        .sort(key, TS, C.ITEM_ID)
        .with_columns(
            pl.col(TS).dt.truncate("1d").alias("day"), pl.int_range(pl.len()).over(key).alias("rank")
        )
    )
    # last N clicked items and the last click time as of the end of each click day, carried
    # forward to the following snapshots with an as-of join
    n = params.last_clicked
    per_user = clicks.group_by(key, maintain_order=True).agg(all_items=pl.col(C.ITEM_ID))
    per_day = (
        clicks.group_by(key, "day")
        .agg(upto=pl.col("rank").max(), last_click=pl.col(TS).max())
        .join(per_user, on=key)
        .with_columns(
            pl.col("all_items")
            .list.slice(
                pl.max_horizontal(pl.col("upto") - n + 1, pl.lit(0)),
                pl.min_horizontal(pl.col("upto") + 1, pl.lit(n)),
            )
            .list.reverse()
            .alias("last_clicked_items")
        )
        .select(key, "day", "last_click", "last_clicked_items")
        .sort("day")
    )
    frame = frame.sort("day").join_asof(
        per_day, on="day", by=key, strategy="backward", check_sortedness=False
    )
    frame = frame.with_columns(
        pl.col("last_clicked_items").fill_null(pl.lit([], dtype=pl.List(pl.String))),
        ((pl.col(TS) - pl.col("last_click")).dt.total_microseconds() / 86_400e6).alias(
            "days_since_last_click"
        ),
    )

    # category shares over the 30 days before each snapshot
    if items is not None and C.CATEGORY in items.columns and clicks.height:
        cat_daily = (
            clicks.join(items.select(pl.col(C.ITEM_ID).cast(pl.String), C.CATEGORY), on=C.ITEM_ID, how="left")
            .with_columns(pl.col(C.CATEGORY).fill_null("unknown"))
            .group_by(key, pl.col("day").alias("click_day"), C.CATEGORY)
            .agg(n=pl.len())
        )
        shares = (
            frame.lazy()
            .select(key, "day")
            .join(cat_daily.lazy(), on=key)
            .filter(
                (pl.col("click_day") <= pl.col("day"))
                & (pl.col("click_day") > pl.col("day") - timedelta(days=30))
            )
            .group_by(key, "day", C.CATEGORY)
            .agg(n=pl.col("n").sum())
            .with_columns(share=pl.col("n") / pl.col("n").sum().over(key, "day"))
            .sort(key, "day", "n", C.CATEGORY, descending=[False, False, True, False])
            .group_by(key, "day", maintain_order=True)
            .agg(click_categories_30d=pl.col(C.CATEGORY), click_category_shares_30d=pl.col("share"))
            .collect()
        )
        frame = frame.join(shares, on=[key, "day"], how="left")
    else:
        frame = frame.with_columns(
            pl.lit(None, dtype=pl.List(pl.String)).alias("click_categories_30d"),
            pl.lit(None, dtype=pl.List(pl.Float64)).alias("click_category_shares_30d"),
        )
    frame = frame.with_columns(
        pl.col("click_categories_30d").fill_null(pl.lit([], dtype=pl.List(pl.String))),
        pl.col("click_category_shares_30d").fill_null(pl.lit([], dtype=pl.List(pl.Float64))),
    )
    return frame.select([pl.col(c).cast(t) for c, t in source_schema(USER_BEHAVIOUR).items()]).sort(TS, key)
