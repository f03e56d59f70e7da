"""Train/valid/test splits of an interaction log: pure functions over polars frames.

Three protocols, each with the leakage rule its tests check:

- `temporal_split` (global): every train event precedes `valid_start`, every test event is at
  or after `test_start`. The honest protocol for a live system: no future leaks into training,
  and items/users that appear late are cold at test time.
- `leave_last_out` (per user, temporal): each user's latest event is the test, the one before it
  the validation event; the rest is train.
- `random_ratio_split` (per user, random, seeded): the RecBole protocol (default 80/10/10 with
  RecBole's rounding rules), comparable with published MovieLens numbers.

Rows stay whole (all columns are kept); a request's impressions share one timestamp, so a
temporal split never cuts a slate in two.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from recsys.data import columns as C

_ROW = "__row"


@dataclass(frozen=True)
class Split:
    train: pl.DataFrame
    valid: pl.DataFrame
    test: pl.DataFrame
    protocol: str

    def sizes(self) -> dict[str, int]:
        return {"train": self.train.height, "valid": self.valid.height, "test": self.test.height}


def temporal_split(
    df: pl.DataFrame,
    valid_start: datetime | None = None,
    test_start: datetime | None = None,
    valid_frac: float = 0.1,
    test_frac: float = 0.1,
    time_col: str = C.EVENT_TIMESTAMP,
) -> Split:
    """Global temporal split. Cut points default to the time quantiles that leave `valid_frac`
    and `test_frac` of the events after them: train `< valid_start <=` valid `< test_start <=` test."""
    if not (valid_frac >= 0 and test_frac > 0 and valid_frac + test_frac < 1):
        raise ValueError(f"need 0 <= valid_frac, 0 < test_frac, sum < 1 (got {valid_frac}, {test_frac})")
    t = df[time_col]
    if test_start is None:
        test_start = t.quantile(1 - test_frac, interpolation="higher")
    if valid_start is None:
        q = 1 - test_frac - valid_frac
        valid_start = t.quantile(q, interpolation="higher") if valid_frac else test_start
    if valid_start > test_start:
        raise ValueError(f"valid_start {valid_start} is after test_start {test_start}")
    col = pl.col(time_col)
    return Split(
        train=df.filter(col < valid_start),
        valid=df.filter((col >= valid_start) & (col < test_start)),
        test=df.filter(col >= test_start),
        protocol=f"temporal(valid_start={valid_start}, test_start={test_start})",
    )


def leave_last_out(
    df: pl.DataFrame, user_col: str = C.USER_ID, time_col: str = C.EVENT_TIMESTAMP, min_events: int = 3
) -> Split:
    """Per user, the latest event is the test, the one before it the validation event (ties in
    time keep file order). Users with fewer than `min_events` events stay entirely in train."""
    ranked = (
        df.with_row_index(_ROW)
        .sort([user_col, time_col, _ROW])
        .with_columns(
            (pl.len().over(user_col) - pl.int_range(pl.len()).over(user_col)).alias("__from_end"),
            pl.len().over(user_col).alias("__n"),
        )
        .sort(_ROW)
    )
    eligible = pl.col("__n") >= min_events
    drop = [_ROW, "__from_end", "__n"]
    return Split(
        train=ranked.filter(~eligible | (pl.col("__from_end") > 2)).drop(drop),
        valid=ranked.filter(eligible & (pl.col("__from_end") == 2)).drop(drop),
        test=ranked.filter(eligible & (pl.col("__from_end") == 1)).drop(drop),
        protocol="leave_last_out",
    )


def random_ratio_split(
    df: pl.DataFrame, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 2020,
    user_col: str = C.USER_ID,
) -> Split:
    """Per user, shuffle (seeded) and cut by `ratios` with RecBole's rounding: valid and test get
    `int(ratio * n)` events, bumped to one when `0 < ratio * n < 1` while train keeps more than one."""
    if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1) > 1e-9:
        raise ValueError(f"ratios must be three non-negative numbers summing to 1, got {ratios}")
    _, rv, rt = ratios
    key = np.random.default_rng(seed).random(df.height)
    n = pl.len().over(user_col)
    ranked = df.with_row_index(_ROW).with_columns(pl.Series("__key", key)).with_columns(
        pl.col("__key").rank("ordinal").over(user_col).cast(pl.Int64).sub(1).alias("__rank"),
        n.alias("__n"),
    )
    n = pl.col("__n")
    n_test = (n * rt).floor().cast(pl.Int64)
    n_valid = (n * rv).floor().cast(pl.Int64)
    n_train = n - n_test - n_valid
    bump_test = (n_train > 1) & (n * rt > 0) & (n * rt < 1)
    n_test = n_test + bump_test.cast(pl.Int64)
    n_train = n_train - bump_test.cast(pl.Int64)
    bump_valid = (n_train > 1) & (n * rv > 0) & (n * rv < 1)
    n_valid = n_valid + bump_valid.cast(pl.Int64)
    n_train = n_train - bump_valid.cast(pl.Int64)
    ranked = ranked.with_columns(n_train.alias("__train"), n_valid.alias("__valid"))
    r, tr, va = pl.col("__rank"), pl.col("__train"), pl.col("__valid")
    drop = [_ROW, "__key", "__rank", "__n", "__train", "__valid"]
    return Split(
        train=ranked.filter(r < tr).drop(drop),
        valid=ranked.filter((r >= tr) & (r < tr + va)).drop(drop),
        test=ranked.filter(r >= tr + va).drop(drop),
        protocol=f"random_ratio{tuple(ratios)}(seed={seed})",
    )


def holdout_start(events: pl.DataFrame, days: float) -> datetime | None:
    """Start of the offline-evaluation window: the last `days` of the log (None when days <= 0).

    Every training step drops events from this time on, and `recsys evaluate ab` scores exactly
    them, so an A/B comparison never rewards a model for remembering its test clicks.
    """
    if days <= 0 or events.height == 0:
        return None
    return events[C.EVENT_TIMESTAMP].max() - timedelta(days=days)


def before_holdout(events: pl.DataFrame, days: float) -> tuple[pl.DataFrame, datetime | None]:
    """The events a training step may use (those before `holdout_start`), and that start."""
    start = holdout_start(events, days)
    if start is None:
        return events, None
    return events.filter(pl.col(C.EVENT_TIMESTAMP) < start), start


def hashed_fraction(ids: Sequence[str], fraction: float, salt: str) -> np.ndarray:
    """A mask selecting about `fraction` of `ids` by a salted hash of each id.

    Unlike a shuffled split it is stable when the catalogue grows or is reordered: an item held
    out once stays held out (CLIP validation items, thumbnail evaluation items).
    """
    out = np.empty(len(ids), dtype=bool)
    for i, item_id in enumerate(ids):
        digest = hashlib.blake2b(f"{salt}:{item_id}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big") / 2**64 < fraction
    return out


def hold_out_items(split: Split, item_ids: Sequence[str], fraction: float,
                   salt: str) -> tuple[Split, list[str]]:
    """The item cold-start protocol (as in DropoutNet): about `fraction` of `item_ids`, chosen by
    a salted hash, lose their train and validation clicks and keep their test clicks, so the test
    holds many items no model saw a click of (a temporal split alone holds only the few items
    created during its last days). Returns the reduced split and the held-out ids."""
    held = [i for i, h in zip(item_ids, hashed_fraction(item_ids, fraction, salt), strict=True) if h]
    if not held:
        return split, held
    keep = ~pl.col(C.ITEM_ID).is_in(pl.Series(held, dtype=pl.String))
    return Split(split.train.filter(keep), split.valid.filter(keep), split.test, split.protocol), held


def candidate_split(clicks: pl.DataFrame, protocol: str, seed: int) -> Split:
    """The split that `recsys train retrieval` trains the candidate models on and that `recsys train
    ranker` stacks on (its `train` part is what the models learn from; `valid` and `test` are what
    the ranker of a click-only log learns from): RecBole's per-user random 80/10/10 (`random`) or
    a global time cut at 80% and 90% of the clicks (`temporal`). Rows are put in one canonical
    order first, so both commands cut the same log the same way."""
    clicks = clicks.sort([C.USER_ID, C.EVENT_TIMESTAMP, C.ITEM_ID], maintain_order=True)
    if protocol == "random":
        return random_ratio_split(clicks, (0.8, 0.1, 0.1), seed=seed)
    if protocol == "temporal":
        return temporal_split(clicks, valid_frac=0.1, test_frac=0.1)
    raise ValueError(f"unknown split protocol '{protocol}'; expected random or temporal")


def is_click_only(log_df: pl.DataFrame) -> bool:
    """Every row a click and no slate position: a click-only log (no impressions to learn from)."""
    if C.CLICKED in log_df.columns and not bool(log_df[C.CLICKED].all()):
        return False
    return C.POSITION not in log_df.columns or log_df[C.POSITION].null_count() == log_df.height


def split_protocol(setting: str, click_only: bool) -> str:
    """`retrieval.split` with `auto` resolved from the log's shape: a per-user random split for a
    click-only log (ratings, purchases: which other items will this user take), a global time cut
    for a log of impressions (a shop's logged slates, whose features are point-in-time)."""
    return setting if setting != "auto" else ("random" if click_only else "temporal")
