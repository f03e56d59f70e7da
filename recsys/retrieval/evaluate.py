"""Full-ranking evaluation of retrieval methods, with baselines, by one code path.

Every method is a scorer `users -> (U, n_items) scores` over the same catalogue; the same
`evaluate_methods` ranks all items, excludes what each user clicked before the test (`known`;
re-clicks of those items are not in the truth either, as they could never be hits), and
computes the metrics of `recsys.evaluation.metrics` per user, for segments:

- `all`: every test click, ranked among all items;
- `warm_items`: test clicks on items with clicks before the test, ranked among all items;
- `cold_items`: test clicks on items with no click before the test, ranked among the cold
  items only (the question is "which new item", which popularity cannot answer);
- `cold_users`: users with no click before the test, ranked among all items.

`available` (optional, a bool mask over items) removes items that did not exist yet when the
test window ended (a temporal split's catalogue grows during the log): nobody could click
them in the test, so ranking them only dilutes every method.

Baselines: `popularity_scorer` (clicks before the test) and `clip_scorer` (user = mean of the
CLIP vectors of the items they clicked).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from recsys.data import columns as C
from recsys.evaluation.metrics import ranking_metrics, summarize, top_k

Scorer = Callable[[Sequence[str]], np.ndarray]
SEGMENTS = ("all", "warm_items", "cold_items", "cold_users")
HEADLINE = ("recall", "ndcg", "hit", "mrr")


PROFILE_VALUES = 16_000_000  # vector values of clicks added at a time by `clip_scorer` (64 MB)


def _positions(item_ids: Sequence[str]) -> pl.DataFrame:
    return pl.DataFrame({C.ITEM_ID: list(item_ids), "_pos": np.arange(len(item_ids), dtype=np.int64)},
                        schema={C.ITEM_ID: pl.String, "_pos": pl.Int64})


def recent_histories(known: pl.DataFrame, users: Sequence[str], length: int) -> list[list[str]]:
    """Per user, the item ids of their last `length` clicks in `known`, most recent first."""
    if known.height == 0:
        return [[] for _ in users]
    last = (known.with_row_index("_row")
            .sort([C.USER_ID, C.EVENT_TIMESTAMP, "_row"], descending=[False, True, True])
            .group_by(C.USER_ID, maintain_order=True).agg(pl.col(C.ITEM_ID).head(length)))
    lookup = dict(zip(last[C.USER_ID].to_list(), last[C.ITEM_ID].to_list(), strict=True))
    return [lookup.get(u, []) for u in users]


def popularity_scorer(known: pl.DataFrame, item_ids: Sequence[str]) -> Scorer:
    """Most-popular: every user gets the items ranked by their clicks in `known`.

    Ties (above all among items with no clicks, i.e. every cold item) break at random, seeded
    per user id: a fixed order would make the cold-item figure a lottery on where the new items
    happen to sit in the catalogue, instead of chance level."""
    counts = (known.group_by(C.ITEM_ID).len().join(_positions(item_ids), on=C.ITEM_ID))
    pop = np.zeros(len(item_ids), dtype=np.float64)
    pop[counts["_pos"].to_numpy()] = counts["len"].to_numpy()

    def score(users: Sequence[str]) -> np.ndarray:
        out = np.empty((len(users), len(pop)), dtype=np.float64)
        for r, u in enumerate(users):  # jitter < 1 click: it only orders equal counts
            out[r] = pop + 0.5 * np.random.default_rng(zlib.crc32(str(u).encode())).random(len(pop))
        return out

    return score


def clip_scorer(known: pl.DataFrame, item_ids: Sequence[str], clip: np.ndarray) -> Scorer:
    """CLIP-only content retrieval: user = mean of the CLIP vectors of their clicked items."""
    clip = np.asarray(clip, dtype=np.float32)
    norms = np.linalg.norm(clip, axis=1, keepdims=True)
    clip = clip / np.maximum(norms, 1e-12)
    rows = known.join(_positions(item_ids), on=C.ITEM_ID)
    users_all = rows[C.USER_ID].unique(maintain_order=True).to_list()
    uidx = {u: i for i, u in enumerate(users_all)}
    profile = np.zeros((len(users_all), clip.shape[1]), dtype=np.float32)
    user_rows = rows.select(pl.col(C.USER_ID).replace_strict(
        users_all, np.arange(len(users_all), dtype=np.int64), return_dtype=pl.Int64)).to_series().to_numpy()
    positions = rows["_pos"].to_numpy()
    # the clicks' vectors a slice at a time, added in the same order (one (clicks, dim) copy of
    # them was 4.6 GB at 9M known clicks with 128-d vectors)
    step = max(1, PROFILE_VALUES // max(clip.shape[1], 1))
    for s in range(0, len(positions), step):
        np.add.at(profile, user_rows[s:s + step], clip[positions[s:s + step]])

    def score(users: Sequence[str]) -> np.ndarray:
        q = np.zeros((len(users), clip.shape[1]), dtype=np.float32)
        for r, u in enumerate(users):
            if u in uidx:
                q[r] = profile[uidx[u]]
        q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        return q @ clip.T

    return score


@dataclass
class EvalResult:
    table: pl.DataFrame                                   # method, segment, users, metric@k ...
    per_user: dict[tuple[str, str], dict[str, np.ndarray]] = field(default_factory=dict)
    users: dict[str, list[str]] = field(default_factory=dict)   # segment -> users (row order)

    def value(self, method: str, segment: str, metric: str) -> float:
        row = self.table.filter((pl.col("method") == method) & (pl.col("segment") == segment))
        return float(row[metric][0]) if row.height else float("nan")

    def format(self, ks: Sequence[int] = (10,)) -> str:
        cols = ["method", "segment", "users"] + [f"{m}@{k}" for k in ks for m in HEADLINE]
        cols = [c for c in cols if c in self.table.columns]
        lines = ["  ".join(f"{c:>12}" for c in cols)]
        for row in self.table.select(cols).iter_rows():
            lines.append("  ".join(_cell(v) for v in row))
        return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:>12.4f}"
    return f"{'-' if value is None else value!s:>12}"


def evaluate_methods(methods: dict[str, Scorer], known: pl.DataFrame, test: pl.DataFrame,
                     item_ids: Sequence[str], ks: Sequence[int] = (10, 50),
                     segments: Sequence[str] = SEGMENTS, max_cells: int = 4_000_000,
                     available: np.ndarray | None = None) -> EvalResult:
    """Rank every (available) item for every test user with each method; metrics per segment.

    Users are scored in chunks of about `max_cells` (user, item) scores (float64, a few copies
    in `top_k`): memory follows the catalogue, not the number of test users."""
    ks = sorted(set(ks))
    pos = _positions(item_ids)
    n_items = len(item_ids)
    chunk = max(1, max_cells // max(n_items, 1))
    known_rows = known.select(C.USER_ID, C.ITEM_ID).join(pos, on=C.ITEM_ID).unique()
    # a test click on an item the user clicked before can never be a hit (seen items are not
    # ranked): it is not part of the truth
    test_rows = (test.select(C.USER_ID, C.ITEM_ID).join(pos, on=C.ITEM_ID).unique()
                 .join(known_rows.select(C.USER_ID, C.ITEM_ID), on=[C.USER_ID, C.ITEM_ID], how="anti"))
    warm = np.zeros(n_items, dtype=bool)
    warm[known_rows["_pos"].to_numpy()] = True
    known_users = known_rows[C.USER_ID].unique()  # a Series: a set of every known click's str was 0.5 GB
    exists = np.ones(n_items, dtype=bool) if available is None else np.asarray(available, dtype=bool)
    if exists.shape != (n_items,):
        raise ValueError(f"available must be a bool mask over the {n_items} items, got shape {exists.shape}")
    result = EvalResult(table=pl.DataFrame())
    rows = []
    for segment in segments:
        truth = test_rows
        candidates = None if available is None else exists
        if segment == "warm_items":
            truth = truth.filter(pl.Series(warm[truth["_pos"].to_numpy()]))
        elif segment == "cold_items":
            truth = truth.filter(pl.Series(~warm[truth["_pos"].to_numpy()]))
            candidates = ~warm & exists
        elif segment == "cold_users":
            truth = truth.filter(~pl.col(C.USER_ID).is_in(known_users.implode()))
        elif segment != "all":
            raise ValueError(f"unknown segment '{segment}'; expected one of {SEGMENTS}")
        users = sorted(set(truth[C.USER_ID].to_list()))
        result.users[segment] = users
        if not users:  # keep the row so tables have the same shape every run
            rows.extend({"method": name, "segment": segment, "users": 0} for name in methods)
            continue
        # users -> rows in polars: a Python str per seen click was 8M objects at 10M clicks
        user_row = pl.col(C.USER_ID).replace_strict(users, np.arange(len(users), dtype=np.int64),
                                                    default=None, return_dtype=pl.Int64)
        t_rows = truth.select(user_row).to_series().to_numpy()
        t_items = truth["_pos"].to_numpy()
        seen = known_rows.select(user_row.alias("_r"), "_pos").filter(pl.col("_r").is_not_null())
        s_rows = seen["_r"].to_numpy()
        s_items = seen["_pos"].to_numpy()
        for name, scorer in methods.items():
            ranked = np.full((len(users), max(ks)), -1, dtype=np.int64)
            for s in range(0, len(users), chunk):
                scores = np.asarray(scorer(users[s:s + chunk]), dtype=np.float64)
                in_chunk = (s_rows >= s) & (s_rows < s + chunk)
                ranked[s:s + chunk] = top_k(scores, max(ks), s_rows[in_chunk] - s, s_items[in_chunk],
                                            candidates)
            per_user = ranking_metrics(ranked, t_rows, t_items, ks=ks)
            result.per_user[(name, segment)] = per_user
            rows.append({"method": name, "segment": segment, "users": len(users), **summarize(per_user)})
    empty = {"method": pl.String, "segment": pl.String, "users": pl.Int64}
    result.table = pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame(schema=empty)
    return result
