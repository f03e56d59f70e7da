"""The ranker's training set: query groups, candidates, labels, weights (pure: frames in, arrays out).

- **Query groups** are requests (`request_id`); a click-only log gets user-days (the contract
  sets `request_id = user:day`).
- **Candidates** of a group: the logged impressions of the request, plus `ranker.candidates`
  items drawn (seeded) from the two-tower's top-N for that user at that time (N =
  `retrieval.candidates`, the very list the ranker orders at serving) that were not shown and
  that the user never clicked: hard negatives, label 0. Drawn from the whole list, not its head:
  negatives from the head alone taught the ranker that a high retrieval rank means "no click"
  (two-stage NDCG@10 on ml-100k fell from 0.27 to 0.01). In a click-only log, positives outside
  the top-N are dropped (counted) for the same reason. Without a two-tower model, a click-only
  log gets uniformly sampled negatives instead, since a group of clicks alone teaches nothing.
- **Labels**: clicked = 1, else 0.
- **History** (the profile behind `clip_cos`, `category_share`, `price_rel`): the user's last
  clicks strictly before midnight UTC of the request day, the same cut as the Feast
  `user_behaviour.last_clicked_items` snapshot that serving reads, so both see the same thing.
- **De-biasing**: inverse examination-propensity weights on clicked rows (Joachims et al.,
  WSDM 2017). The examination curve is estimated from the log as CTR(position) / CTR(0),
  forced non-increasing and clipped at `ranker.ips_clip`; it is recorded with the model.
  The logged `propensity` (probability that the policy chose the item) is left to the off-policy
  evaluators: it corrects for what the policy showed, not for where users look.
- Groups with no click or with a single candidate carry no lambdarank gradient: dropped, counted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

import numpy as np
import polars as pl

from recsys.data import columns as C
from recsys.ranking.features import (
    SOURCE_FEATURES,
    FeatureSpec,
    ItemTable,
    Profiles,
    assemble,
    frame_matrix,
    user_profiles,
)

if TYPE_CHECKING:
    from recsys.retrieval.index import ItemIndex

log = logging.getLogger(__name__)
FEATURE_TS = "feature_timestamp"


class CandidateSource(Protocol):
    """What the ranker needs from a two-tower model (see `recsys.ranking.retrieval`)."""

    version: str | None
    item_rows: np.ndarray  # (N_r,) row in the ItemTable of each retrieval item vector
    item_vectors: np.ndarray  # (N_r, d) float32
    index: ItemIndex | None  # the source's own ANN index over its items, if it has one

    def user_vectors(self, user_ids: Sequence[str], history: np.ndarray,
                     user_features: pl.DataFrame | None = None) -> np.ndarray:
        """(M, d) query vectors; `history` (M, H) holds ItemTable rows of recent clicks (-1 pads)."""
        ...


def dense_vectors(source: CandidateSource, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """((n_items, d) float32 vectors, (n_items,) bool present): the source's item vectors placed at
    their ItemTable rows, zeros where the source has no vector."""
    vecs = np.zeros((n_items, source.item_vectors.shape[1]), np.float32)
    present = np.zeros(n_items, bool)
    vecs[source.item_rows] = source.item_vectors
    present[source.item_rows] = True
    return vecs, present


class TrainingDataError(ValueError):
    """The click log cannot make a training set; the message says why and what to do."""


@dataclass
class Candidates:
    """One row per (query, candidate item), rows of a query contiguous, queries sorted by time."""

    queries: pl.DataFrame  # q, request_id, user_id, event_timestamp, feature_timestamp
    rows: pl.DataFrame  # q, item_row, item_id, label, position, source, tt_score, tt_rank
    history: np.ndarray  # (M, H) ItemTable rows of recent clicks, -1 pads
    counts: dict[str, int] = field(default_factory=dict)
    examination: list[float] = field(default_factory=list)

    @property
    def group_sizes(self) -> np.ndarray:
        return np.bincount(self.rows["q"].to_numpy(), minlength=self.queries.height)


def prepare_log(log_df: pl.DataFrame, items: ItemTable) -> tuple[pl.DataFrame, dict[str, int]]:
    """Drop rows of unknown items (counted) and refuse a log without a single click."""
    counts = {"log_rows": log_df.height}
    known = log_df[C.ITEM_ID].is_in(pl.Series(list(items.ids), dtype=pl.String).implode())
    counts["unknown_item_rows"] = int((~known).sum())
    if counts["unknown_item_rows"]:
        sample = log_df.filter(~known)[C.ITEM_ID].unique().head(5).to_list()
        log.warning("%d log rows refer to items not in the catalogue (e.g. %s): dropped",
                    counts["unknown_item_rows"], sample)
    log_df = log_df.filter(known)
    if log_df.height == 0:
        raise TrainingDataError("no row of the click log refers to a catalogue item: is it the log "
                                "of this workspace's items?")
    n_clicks = int(log_df[C.CLICKED].sum())
    if n_clicks == 0:
        raise TrainingDataError(f"the click log has {log_df.height:,} impressions but no click at all: "
                                "a ranker cannot learn from it (check the 'clicked' column)")
    counts["clicks"] = n_clicks
    return log_df, counts


def known_items(log_df: pl.DataFrame, items: ItemTable,
                as_of: datetime | None = None) -> dict[str, np.ndarray]:
    """User -> ItemTable rows of every item they clicked (before `as_of` where given, and where
    the log has timestamps); rows with clicked = false are ignored."""
    if C.CLICKED in log_df.columns:
        log_df = log_df.filter(pl.col(C.CLICKED))
    if as_of is not None and C.EVENT_TIMESTAMP in log_df.columns:
        log_df = log_df.filter(pl.col(C.EVENT_TIMESTAMP) < as_of)
    pairs = log_df.select(C.USER_ID, C.ITEM_ID).unique()
    pairs = pairs.with_columns(pl.Series("_row", items.rows(pairs[C.ITEM_ID]))).filter(pl.col("_row") >= 0)
    grouped = pairs.group_by(C.USER_ID).agg(pl.col("_row"))
    return {u: np.asarray(r, np.int64) for u, r in
            zip(grouped[C.USER_ID].to_list(), grouped["_row"].to_list(), strict=True)}


def click_history(log_df: pl.DataFrame, queries: pl.DataFrame, items: ItemTable, length: int) -> np.ndarray:
    """(M, length) ItemTable rows of each query user's last clicks before the query's
    `feature_timestamp` (most recent last; -1 pads)."""
    clicks = (log_df.filter(pl.col(C.CLICKED)).select(C.USER_ID, C.ITEM_ID, C.EVENT_TIMESTAMP)
              .sort([C.USER_ID, C.EVENT_TIMESTAMP]))
    m = queries.height
    out = np.full((m, length), -1, dtype=np.int64)
    if clicks.height == 0 or m == 0:
        return out
    item_rows = items.rows(clicks[C.ITEM_ID])
    clicks = clicks.with_columns(pl.int_range(pl.len()).alias("_pos"))
    starts = clicks.group_by(C.USER_ID).agg(pl.col("_pos").min().alias("_start"))
    # number of the user's clicks strictly before the cut, via a sorted asof search
    before = (queries.select("q", C.USER_ID, FEATURE_TS).sort(FEATURE_TS)
              .join_asof(clicks.select(C.USER_ID, pl.col(C.EVENT_TIMESTAMP).alias(FEATURE_TS), "_pos")
                         .sort(FEATURE_TS), on=FEATURE_TS, by=C.USER_ID, strategy="backward",
                         allow_exact_matches=False, check_sortedness=False)
              .join(starts, on=C.USER_ID, how="left").sort("q"))
    end = before["_pos"].fill_null(-2).to_numpy() + 1  # exclusive end; -1 where no earlier click
    start = before["_start"].fill_null(0).to_numpy()
    idx = end[:, None] - length + np.arange(length)[None, :]
    ok = (idx >= start[:, None]) & (end[:, None] > 0) & (idx >= 0)
    out[ok] = item_rows[idx[ok]]
    return out


def _examination(rows: pl.DataFrame, min_impressions: int = 50) -> list[float]:
    """Relative examination probability per position: CTR(p)/CTR(0), non-increasing, in (0, 1]."""
    logged = rows.filter(pl.col(C.POSITION).is_not_null())
    if logged.height == 0:
        return []
    by = (logged.group_by(C.POSITION).agg(pl.col("label").mean().alias("ctr"), pl.len().alias("n"))
          .sort(C.POSITION))
    positions = by[C.POSITION].to_numpy()
    if positions[0] != 0:
        return []
    ctr = by["ctr"].to_numpy()
    n = by["n"].to_numpy()
    if ctr[0] <= 0:
        return []
    curve = np.ones(int(positions.max()) + 1)
    last = 1.0
    for p, c, k in zip(positions, ctr, n, strict=True):
        if k >= min_impressions:
            last = min(last, max(c / ctr[0], 1e-6))
        curve[p] = last
    for p in range(1, len(curve)):  # positions never logged inherit their predecessor
        if p not in set(positions.tolist()):
            curve[p] = curve[p - 1]
    return curve.tolist()


def ips_weights(rows: pl.DataFrame, examination: list[float], clip: float) -> np.ndarray:
    """1 / examination(position) on clicked logged rows (clipped); 1 elsewhere."""
    w = np.ones(rows.height, dtype=np.float64)
    if not examination:
        return w
    pos = rows[C.POSITION].fill_null(-1).to_numpy()
    lab = rows["label"].to_numpy()
    curve = np.asarray(examination)
    sel = (lab > 0) & (pos >= 0)
    p = np.minimum(pos[sel], len(curve) - 1)
    w[sel] = np.minimum(1.0 / curve[p], clip)
    return w


def _retrieve(source: CandidateSource, queries: pl.DataFrame, history: np.ndarray,
              logged: pl.DataFrame, n_items: int, n_neg: int, cap: int,
              user_features: pl.DataFrame | None, avoid: pl.DataFrame | None = None, chunk: int = 2048,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray, pl.DataFrame]:
    """Two-tower score and rank (capped at `cap`) of every logged row, plus `n_neg` hard
    negatives per query: drawn uniformly (seeded) from the query's top-`cap` retrieval list,
    leaving out items logged in the query, in its history, or among the (q, item_row) pairs of
    `avoid`."""
    m = queries.height
    rng = np.random.default_rng(seed)
    qv = np.asarray(source.user_vectors(queries[C.USER_ID].to_list(), history, user_features), np.float32)
    vecs, present = dense_vectors(source, n_items)  # items the model lacks score -inf
    lq = logged["q"].to_numpy()
    li = logged["item_row"].to_numpy()
    if avoid is not None:
        aq, ai = avoid["q"].to_numpy(), avoid["item_row"].to_numpy()
        avoid_order = np.argsort(aq, kind="stable")
        avoid_bounds = np.searchsorted(aq[avoid_order], np.arange(0, m + chunk, chunk))
    score = np.full(len(lq), np.nan, np.float32)
    rank = np.full(len(lq), float(cap), np.float32)
    neg_q, neg_i, neg_s, neg_r = [], [], [], []
    order = np.argsort(lq, kind="stable")
    bounds = np.searchsorted(lq[order], np.arange(0, m + chunk, chunk))
    width = min(cap, n_items)
    for c, s in enumerate(range(0, m, chunk)):
        e = min(s + chunk, m)
        scores = qv[s:e] @ vecs.T
        scores[:, ~present] = -np.inf
        h = history[s:e]
        hr, hc = np.nonzero(h >= 0)
        raw = scores.copy()
        scores[hr, h[hr, hc]] = -np.inf  # seen items are never candidates (as at serving)
        top = np.argpartition(-scores, width - 1, axis=1)[:, :width] if width < n_items else \
            np.tile(np.arange(n_items), (e - s, 1))
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), 1, kind="stable"), 1)
        ranks = np.full(scores.shape, cap, dtype=np.int32)
        np.put_along_axis(ranks, top, np.arange(width, dtype=np.int32)[None, :], 1)
        sel = order[bounds[c]:bounds[c + 1]]
        ql, il = lq[sel] - s, li[sel]
        score[sel] = raw[ql, il]
        rank[sel] = ranks[ql, il]
        if n_neg:
            shown = np.zeros(scores.shape, bool)
            shown[ql, il] = True
            if avoid is not None:
                a = avoid_order[avoid_bounds[c]:avoid_bounds[c + 1]]
                shown[aq[a] - s, ai[a]] = True
            # uniform over the whole candidate list (what the ranker will order at serving), not
            # its head: negatives from the head alone teach "a high retrieval rank means no click"
            cand = top
            free = ~np.take_along_axis(shown, cand, 1) & np.isfinite(np.take_along_axis(scores, cand, 1))
            key = np.where(free, rng.random(cand.shape), np.inf)
            take = min(n_neg, cand.shape[1])
            pick = np.argpartition(key, take - 1, axis=1)[:, :take] if take < cand.shape[1] else \
                np.tile(np.arange(cand.shape[1]), (cand.shape[0], 1))
            keep = np.zeros(cand.shape, bool)
            np.put_along_axis(keep, pick, True, 1)
            keep &= free
            rr, cc = np.nonzero(keep)
            items_ = cand[rr, cc]
            neg_q.append(rr + s)
            neg_i.append(items_)
            neg_s.append(raw[rr, items_])
            neg_r.append(ranks[rr, items_])
    negs = pl.DataFrame({
        "q": np.concatenate(neg_q) if neg_q else np.zeros(0, np.int64),
        "item_row": np.concatenate(neg_i).astype(np.int64) if neg_i else np.zeros(0, np.int64),
        "tt_score": np.concatenate(neg_s).astype(np.float32) if neg_s else np.zeros(0, np.float32),
        "tt_rank": np.concatenate(neg_r).astype(np.float32) if neg_r else np.zeros(0, np.float32),
    })
    return score, rank, negs


def _random_negatives(queries: pl.DataFrame, history: np.ndarray, logged: pl.DataFrame,
                      n_items: int, n_neg: int, seed: int, avoid: pl.DataFrame | None = None) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    m = queries.height
    draw = rng.integers(0, n_items, size=(m, n_neg + 8))
    shown = set(zip(logged["q"].to_list(), logged["item_row"].to_list(), strict=True))
    if avoid is not None:
        shown |= set(zip(avoid["q"].to_list(), avoid["item_row"].to_list(), strict=True))
    q_out, i_out = [], []
    for q in range(m):
        seen = set(history[q][history[q] >= 0].tolist())
        taken = 0
        for i in dict.fromkeys(draw[q].tolist()):
            if taken >= n_neg:
                break
            if i in seen or (q, i) in shown:
                continue
            q_out.append(q)
            i_out.append(i)
            taken += 1
    return pl.DataFrame({"q": np.array(q_out, np.int64), "item_row": np.array(i_out, np.int64)})


def build_candidates(log_df: pl.DataFrame, items: ItemTable, *, history: int, negatives: int,
                     source: CandidateSource | None = None, rank_cap: int = 300, seed: int = 0,
                     user_features: pl.DataFrame | None = None, debias: str = "ips",
                     exclude_user_clicks: bool = True, history_log: pl.DataFrame | None = None) -> Candidates:
    """Query groups with their candidates and labels from a validated click log.

    `user_features` (keyed by user_id, feature_timestamp) feeds the two-tower's user tower.
    `history_log`: earlier clicks that form the users' histories besides the log's own (e.g. the
    clicks a two-tower was trained on when the ranker learns from held-out ones).
    """
    log_df, counts = prepare_log(log_df, items)
    past = log_df if history_log is None else pl.concat(
        [log_df.select(C.USER_ID, C.ITEM_ID, C.EVENT_TIMESTAMP, C.CLICKED),
         history_log.select(C.USER_ID, C.ITEM_ID, C.EVENT_TIMESTAMP, C.CLICKED)])
    past = past.filter(pl.col(C.ITEM_ID).is_in(pl.Series(list(items.ids), dtype=pl.String).implode()))
    queries = (log_df.group_by(C.REQUEST_ID)
               .agg(pl.col(C.USER_ID).first(), pl.col(C.EVENT_TIMESTAMP).min(),
                    pl.col(C.USER_ID).n_unique().alias("_users"))
               .sort([C.EVENT_TIMESTAMP, C.REQUEST_ID]))
    mixed = queries.filter(pl.col("_users") > 1)
    if mixed.height:
        raise TrainingDataError(f"{mixed.height} request_id(s) span several users (e.g. "
                                f"{mixed[C.REQUEST_ID].head(3).to_list()}): a request is one user's slate")
    queries = queries.drop("_users").with_columns(
        pl.int_range(pl.len(), dtype=pl.Int64).alias("q"),
        pl.col(C.EVENT_TIMESTAMP).dt.truncate("1d").alias(FEATURE_TS),
    )
    hist = click_history(past, queries, items, history)
    logged = (log_df.join(queries.select(C.REQUEST_ID, "q"), on=C.REQUEST_ID)
              .with_columns(pl.col(C.CLICKED).cast(pl.Int32).alias("label"))
              .group_by(["q", C.ITEM_ID], maintain_order=True)  # an item twice in a slate: once
              .agg(pl.col("label").max(), pl.col(C.POSITION).min()))
    logged = logged.with_columns(pl.Series("item_row", items.rows(logged[C.ITEM_ID])))
    logged = logged.with_columns(pl.lit("logged").alias("source"))
    counts["duplicate_impressions"] = int(log_df.height - logged.height)
    n_items = len(items)
    extra = None
    avoid = None
    if exclude_user_clicks:  # an item the user clicks on another day is no negative for them
        clicked = past.filter(pl.col(C.CLICKED)).select(C.USER_ID, C.ITEM_ID).unique()
        clicked = clicked.with_columns(pl.Series("item_row", items.rows(clicked[C.ITEM_ID])))
        avoid = queries.select("q", C.USER_ID).join(clicked, on=C.USER_ID).select("q", "item_row")
    if source is not None:
        uf = None
        if user_features is not None:
            uf = queries.select(C.USER_ID, FEATURE_TS).join(user_features, on=[C.USER_ID, FEATURE_TS],
                                                             how="left", maintain_order="left")
        score, rank, negs = _retrieve(source, queries, hist, logged, n_items, negatives, rank_cap, uf, avoid,
                                      seed=seed)
        logged = logged.with_columns(pl.Series("tt_score", score), pl.Series("tt_rank", rank))
        if bool(log_df[C.CLICKED].all()):
            # click-only: every logged row is a positive, so rows outside the candidate list
            # (rank = cap, a value serving never produces) would mark "outside" as "clicked"
            outside = logged["tt_rank"] >= rank_cap
            counts["positives_outside_candidates"] = int(outside.sum())
            logged = logged.filter(~outside)
        extra = negs.with_columns(pl.lit(0, dtype=pl.Int32).alias("label"),
                                  pl.lit("retrieved").alias("source"))
    elif bool(log_df[C.CLICKED].all()) and negatives:
        extra = _random_negatives(queries, hist, logged, n_items, negatives, seed, avoid).with_columns(
            pl.lit(0, dtype=pl.Int32).alias("label"), pl.lit("random").alias("source"))
    if "tt_score" not in logged.columns:
        logged = logged.with_columns(pl.lit(None, dtype=pl.Float32).alias("tt_score"),
                                     pl.lit(None, dtype=pl.Float32).alias("tt_rank"))
    cols = ["q", "item_row", "label", C.POSITION, "source", "tt_score", "tt_rank"]
    rows = logged.with_columns(pl.col("tt_score").cast(pl.Float32), pl.col("tt_rank").cast(pl.Float32))
    rows = rows.select(cols)
    if extra is not None and extra.height:
        extra = extra.with_columns(pl.lit(None, dtype=pl.Int32).alias(C.POSITION))
        for c in ("tt_score", "tt_rank"):
            extra = extra.with_columns((pl.col(c) if c in extra.columns else pl.lit(None)).cast(pl.Float32)
                                       .alias(c))
        rows = pl.concat([rows, extra.select(cols)], how="vertical_relaxed")
    counts["hard_negatives"] = 0 if extra is None else extra.height
    # drop groups that teach nothing: no click, no non-click, or a single candidate
    stats = rows.group_by("q").agg(pl.len().alias("n"), pl.col("label").sum().alias("pos"))
    counts["groups"] = queries.height
    counts["groups_single_candidate"] = int((stats["n"] < 2).sum())
    counts["groups_without_click"] = int(((stats["pos"] == 0) & (stats["n"] >= 2)).sum())
    counts["groups_all_clicked"] = int(((stats["pos"] == stats["n"]) & (stats["n"] >= 2)).sum())
    good = stats.filter((pl.col("n") >= 2) & (pl.col("pos") > 0) & (pl.col("pos") < pl.col("n")))["q"]
    if good.len() == 0:
        raise TrainingDataError(
            f"none of the {queries.height:,} query groups has both a click and a non-click among "
            f"two or more candidates ({counts['groups_single_candidate']} single-candidate groups, "
            f"{counts['groups_without_click']} without a click): nothing to rank")
    queries = queries.filter(pl.col("q").is_in(good.implode()))
    hist = hist[queries["q"].to_numpy()]
    remap = pl.DataFrame({"q": queries["q"], "_new": np.arange(queries.height, dtype=np.int64)})
    # rows of a group in random (seeded) order: in logged order, score ties would be broken by
    # slate position and the validation NDCG would reward the logging policy, not the model
    rows = rows.join(remap, on="q").drop("q").rename({"_new": "q"})
    shuffle = np.random.default_rng(seed).permutation(rows.height)
    rows = rows.with_columns(pl.Series("_r", shuffle)).sort(["q", "_r"]).drop("_r")
    queries = queries.with_columns(pl.Series("q", np.arange(queries.height, dtype=np.int64)))
    id_col = pl.Series(C.ITEM_ID, list(items.ids), dtype=pl.String)
    rows = rows.with_columns(id_col.gather(rows["item_row"].to_numpy()).alias(C.ITEM_ID))
    counts["groups_used"] = queries.height
    counts["rows"] = rows.height
    exam = _examination(rows) if debias == "ips" else []
    return Candidates(queries=queries, rows=rows, history=hist, counts=counts, examination=exam)


def feature_matrix(cands: Candidates, spec: FeatureSpec, items: ItemTable,
                   user_features: pl.DataFrame | None = None,
                   item_features: pl.DataFrame | None = None) -> tuple[np.ndarray, dict[str, int]]:
    """(n, F) features of every candidate row through `features.assemble`.

    `user_features` is keyed by (user_id, feature_timestamp), `item_features` by (item_id,
    feature_timestamp): the point-in-time rows from Feast for the queries' days.
    """
    counts: dict[str, int] = {}
    q = cands.queries
    m = q.height
    ub = np.full((m, len(spec.user_behaviour)), np.nan, np.float32)
    if user_features is not None and spec.user_behaviour:
        uf = q.select(C.USER_ID, FEATURE_TS).join(user_features, on=[C.USER_ID, FEATURE_TS], how="left",
                                                  maintain_order="left")
        ub = frame_matrix(uf, spec.user_behaviour, m)
    rows = cands.rows
    ib = np.full((rows.height, len(spec.item_behaviour)), np.nan, np.float32)
    if spec.item_behaviour:
        if item_features is not None:
            keyed = rows.select("q", C.ITEM_ID).join(q.select("q", FEATURE_TS), on="q", how="left",
                                                     maintain_order="left")
            f = keyed.join(item_features, on=[C.ITEM_ID, FEATURE_TS], how="left", maintain_order="left")
            ib = frame_matrix(f, spec.item_behaviour, rows.height)
        counts["rows_missing_item_features"] = int(np.isnan(ib).all(axis=1).sum())
    profiles: Profiles = user_profiles(cands.history, items)
    ts = q[C.EVENT_TIMESTAMP].dt.epoch("us").cast(pl.Float64).to_numpy() / 1e6
    sources = {n: rows[n].fill_null(np.nan).to_numpy() for n in SOURCE_FEATURES if n in rows.columns}
    x = assemble(spec, items, rows["item_row"].to_numpy(), rows["q"].to_numpy(), profiles, ub, ts,
                 rows["tt_score"].fill_null(np.nan).to_numpy(), rows["tt_rank"].fill_null(np.nan).to_numpy(),
                 item_behaviour=ib, sources=sources)
    return x, counts
