"""The embedded world's ground truth: what the simulator knows and a real shop never does.

The click model (position-based): a user `u` shown item `i` at position `k` clicks with

    P(click | u, i, k) = position_bias[k] * relevance(u, i)
    relevance(u, i)    = sigmoid(taste[u] . onehot(attributes[i]) + quality[i] + bias)

`taste[u]` has one weight per attribute value (category, colour, pattern, background; see
`recsys.data.appearance`), drawn around one of a few taste segments, so content predicts
relevance and users share tastes. `quality[i]` is an item-specific effect that content cannot
see (a collaborative model can learn it from clicks on warm items).

The logging policy (the production system that produced the click log) ranks like a production
ranker with exploration: each day it scores the items available at the day's start for each
taste segment (a segment-level model: `W_SEGMENT * segment_taste . onehot(attributes[i])`, plus
`legacy_base[i]`, a noisy quality estimate, plus a "new in" boost for items created in the 7 days
before), keeps its top `candidates`, and fills the slate by Plackett-Luce sampling without
replacement over those scores at `temperature` (softmax exploration). The exact marginal
probability that it shows item `i` in slot `k` of a request,

    mu(i, k | segment, day) = P(PL draws i in slot k)      (recsys.evaluation.plackett_luce)

is recorded with each impression: `propensity` at the logged slot and `slot_propensities` at
every slot (what item-level off-policy estimators need). Every candidate has mu > 0 in every
slot, so a target policy that only shows candidates has full support.

Because the simulator knows the truth it also runs the *online* A/B test (`simulate_online`)
that off-policy estimators try to predict from the log.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property

import numpy as np
import polars as pl

from recsys.data import appearance as A
from recsys.data import history
from recsys.evaluation import plackett_luce as PL
from recsys.io import atomic_path, write_json
from recsys.workspace import Workspace

DAY_US = 86_400_000_000
META_FILE, ARRAYS_FILE = "truth.json", "arrays.npz"  # in the workspace's truth_dir
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Policy = Callable[[np.ndarray, datetime], np.ndarray]
# the logging policy's score: W_SEGMENT x the segment's taste + legacy_base + LOGGING_NEW_BOOST for
# items created in the LOGGING_NEW_DAYS before the day ("new in" promotion, so items that arrive in
# a held-out window get impressions and cold-item clicks)
W_SEGMENT, LOGGING_NEW_BOOST, LOGGING_NEW_DAYS = 0.6, 1.0, 7


def to_us(when) -> np.ndarray | int:
    """Microseconds since the epoch of a datetime (naive = UTC), numpy datetime64s or a polars Series."""
    if isinstance(when, datetime):
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return (when - _EPOCH) // timedelta(microseconds=1)
    if isinstance(when, pl.Series):
        return when.dt.epoch("us").to_numpy()
    arr = np.asarray(when)
    if arr.dtype == object:
        return np.array([to_us(w) for w in arr.ravel()], dtype=np.int64).reshape(arr.shape)
    return arr.astype("datetime64[us]").astype(np.int64)


def format_ids(prefix: str, n: int, width: int) -> np.ndarray:
    """Ids `prefix` + zero-padded index (fixed width, so string order is index order)."""
    s = pl.Series(np.arange(n, dtype=np.int64)).cast(pl.String).str.zfill(width)
    return (prefix + s).to_numpy().astype(object)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass(frozen=True)
class OnlineResult:
    """Outcome of a simulated online test. `ctr`/`clicks_per_request` are from sampled clicks;
    the `expected_*` figures are their exact expectations for the same requests (no click noise)."""

    ctr: float
    clicks_per_request: float
    n: int
    expected_ctr: float
    expected_clicks_per_request: float

    def summary(self) -> str:
        return (
            f"{self.n:,} requests: CTR {self.ctr:.4f} ({self.clicks_per_request:.3f} clicks/request; "
            f"expected {self.expected_ctr:.4f})"
        )


@dataclass
class WorldTruth:
    """Everything the simulator knows; arrays are indexed by item/user index (= id number)."""

    start: datetime
    end: datetime
    slate_size: int
    temperature: float
    candidates: int
    bias: float
    position_bias: np.ndarray  # (max_positions,)
    item_attributes: np.ndarray  # (n_items, 4) category, colour, pattern, background
    item_quality: np.ndarray  # (n_items,)
    item_created_us: np.ndarray  # (n_items,) sorted ascending
    legacy_base: np.ndarray  # (n_items,) the logging policy's quality estimate per item
    user_taste: np.ndarray  # (n_users, N_ATTRIBUTE_VALUES)
    user_created_us: np.ndarray  # (n_users,)
    user_activity: np.ndarray  # (n_users,) share of requests, sums to 1
    user_segment: np.ndarray  # (n_users,) taste segment
    segment_taste: np.ndarray  # (n_segments, N_ATTRIBUTE_VALUES) the segments' mean tastes
    item_width: int
    user_width: int
    _marginals: tuple[int, np.ndarray] | None = field(default=None, init=False, repr=False, compare=False)

    # --- ids ----------------------------------------------------------------------------------
    @property
    def n_items(self) -> int:
        return len(self.item_quality)

    @property
    def n_users(self) -> int:
        return len(self.user_activity)

    @cached_property
    def item_ids(self) -> np.ndarray:
        return format_ids("i", self.n_items, self.item_width)

    @cached_property
    def user_ids(self) -> np.ndarray:
        return format_ids("u", self.n_users, self.user_width)

    def item_index(self, item_ids) -> np.ndarray:
        return _parse_ids(item_ids, "i", self.item_width, self.n_items, "item")

    def user_index(self, user_ids) -> np.ndarray:
        return _parse_ids(user_ids, "u", self.user_width, self.n_users, "user")

    # --- the click model ----------------------------------------------------------------------
    def score_idx(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Relevance logit for index arrays of the same shape."""
        a = self.item_attributes[items]
        s = self.item_quality[items].astype(np.float64) + self.bias
        for g, off in enumerate(A.OFFSETS):
            s = s + self.user_taste[users, off + a[..., g]]
        return s

    def relevance_idx(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return _sigmoid(self.score_idx(users, items))

    def relevance(self, user_ids, item_ids) -> np.ndarray:
        """P(click | examined) for paired arrays of user and item ids."""
        return self.relevance_idx(self.user_index(user_ids), self.item_index(item_ids))

    def click_probability(self, user_ids, item_ids, positions) -> np.ndarray:
        """P(click) of each (user, item, 0-based position) triple."""
        pos = np.asarray(positions, dtype=np.int64)
        if pos.size and (pos.min() < 0 or pos.max() >= len(self.position_bias)):
            raise ValueError(
                f"positions must be in [0, {len(self.position_bias)}), got {pos.min()}..{pos.max()}"
            )
        return self.position_bias[pos] * self.relevance(user_ids, item_ids)

    # --- the logging policy -------------------------------------------------------------------
    def n_available(self, t_us) -> np.ndarray:
        """Number of items created at or before each time (items are indexed in creation order)."""
        return np.searchsorted(self.item_created_us, t_us, side="right")

    @property
    def n_days(self) -> int:
        return max(1, -(-(to_us(self.end) - to_us(self.start)) // DAY_US))

    def day_index(self, t_us) -> np.ndarray:
        start = to_us(self.start)
        return np.clip((np.asarray(t_us) - start) // DAY_US, 0, self.n_days - 1)

    def logging_scores(self, day: int) -> np.ndarray:
        """The logging policy's scores (n_segments, n_items) on `day`: -inf for items not yet
        available at the day's start and for items outside a segment's top `candidates`."""
        day_start = to_us(self.start) + day * DAY_US
        avail = int(self.n_available(day_start))
        onehot = self.item_attributes[:avail] + np.asarray(A.OFFSETS)[None, :]  # (avail, groups)
        taste = self.segment_taste[:, onehot].sum(axis=2)  # (n_segments, avail)
        fresh = self.item_created_us[:avail] > day_start - LOGGING_NEW_DAYS * DAY_US
        scores = np.full((len(self.segment_taste), self.n_items), -np.inf)
        scores[:, :avail] = W_SEGMENT * taste + self.legacy_base[:avail] + LOGGING_NEW_BOOST * fresh
        if self.candidates < avail:  # exactly the top `candidates` of each segment stay
            out = np.full_like(scores, -np.inf)
            top = np.argpartition(-scores[:, :avail], self.candidates - 1, axis=1)[:, : self.candidates]
            np.put_along_axis(out, top, np.take_along_axis(scores, top, 1), axis=1)
            return out
        return scores

    def logging_marginals(self, day: int) -> np.ndarray:
        """mu (n_segments, n_items, slate_size): the exact probability that the logging policy
        shows each item in each slot on `day`, per segment (the last day asked is cached)."""
        if self._marginals is None or self._marginals[0] != day:
            scores = self.logging_scores(day)
            # each segment over its own candidates (the same number for every segment)
            shown = np.sort(np.argsort(~np.isfinite(scores), axis=1, kind="stable")[
                :, : int(np.isfinite(scores).sum(axis=1).min())], axis=1)
            mu = np.zeros((*scores.shape, self.slate_size))
            own = PL.marginals(np.take_along_axis(scores, shown, 1), self.temperature, self.slate_size)
            np.put_along_axis(mu, shown[..., None], own, axis=1)
            self._marginals = (day, mu)
        return self._marginals[1]

    def logging_slates_idx(self, rng: np.random.Generator, users: np.ndarray, t_us) -> np.ndarray:
        """Item indices (n, slate_size) the logging policy shows users (n,) at times t_us (n,)."""
        days = self.day_index(t_us)
        out = np.empty((len(users), self.slate_size), dtype=np.int64)
        for day in np.unique(days):
            rows = np.flatnonzero(days == day)
            scores = self.logging_scores(int(day))
            cols = np.flatnonzero(np.isfinite(scores).any(axis=0))
            weights = PL.weights(scores[:, cols], self.temperature)  # one row per segment
            out[rows] = cols[PL.sample_grouped(rng, weights, self.user_segment[users[rows]].astype(np.int64),
                                               self.slate_size)]
        return out

    def slot_propensities_idx(self, users: np.ndarray, items: np.ndarray, t_us) -> np.ndarray:
        """mu(i, k) at every slot k for item indices `items` (n,) or (n, L) shown to users (n,) at
        times t_us (n,): shape items.shape + (slate_size,); 0 where the policy never shows it."""
        days = self.day_index(t_us)
        out = np.zeros((*items.shape, self.slate_size))
        for day in np.unique(days):
            rows = days == day
            seg = self.user_segment[users[rows]].reshape(-1, *([1] * (items.ndim - 1)))
            out[rows] = self.logging_marginals(int(day))[seg, items[rows]]
        return out

    def logging_slates(self, user_ids, as_of, seed: int = 0) -> np.ndarray:
        """Slates (item ids, (n, slate_size)) drawn from the logging policy for each user at
        `as_of` (one time or one per user), as the world's log draws them; `seed` fixes the draw."""
        users = self.user_index(user_ids)
        t = np.broadcast_to(to_us(as_of), users.shape)
        return self.item_ids[self.logging_slates_idx(np.random.default_rng(seed), users, t)]

    def slot_propensities(self, user_ids, item_ids, as_of) -> np.ndarray:
        """mu(i, k) at every slot k for each (user, item) at `as_of` (one time or one per row),
        shape (n, slate_size); 0 where the policy never shows the item."""
        users, items = self.user_index(user_ids), self.item_index(item_ids)
        return self.slot_propensities_idx(users, items, np.broadcast_to(to_us(as_of), users.shape))

    def logging_propensity(self, user_ids, item_ids, positions, as_of) -> np.ndarray:
        """Exact marginal probability that the logging policy shows each item at each position
        for that user at `as_of` (see the module docstring); 0 where it never would."""
        pos = np.asarray(positions, dtype=np.int64)
        per_slot = self.slot_propensities(user_ids, item_ids, as_of)
        in_range = (pos >= 0) & (pos < self.slate_size)
        picked = per_slot[np.arange(len(pos)), np.clip(pos, 0, self.slate_size - 1)]
        return np.where(in_range, picked, 0.0)

    # --- online test --------------------------------------------------------------------------
    def simulate_online(
        self,
        policy: Policy,
        n_requests: int,
        seed: int,
        slate_size: int = 10,
        as_of: datetime | None = None,
        batch_size: int = 2048,
        users: np.ndarray | None = None,
    ) -> OnlineResult:
        """Run `policy` live: sample `n_requests` users (by activity), ask the policy for ranked
        slates at `as_of` (default: the end of the log), draw clicks from the true click model.

        `users` (ids, one per request) replaces the sample with given requests, e.g. those of a
        log's held-out window: the online test of that very traffic, which is what an off-policy
        estimate on that window estimates. The same `seed` gives the same users and the same
        uniform draws, so two policies run with one seed are compared on common random numbers
        (a paired test). An empty slot ("" or None, a policy with too few candidates) is never
        clicked; CTR still counts it as shown.
        """
        if slate_size > len(self.position_bias):
            raise ValueError(
                f"slate_size {slate_size} exceeds the {len(self.position_bias)} modelled positions"
            )
        as_of = as_of or self.end
        rng = np.random.default_rng(seed)
        if users is None:
            alive = self.user_created_us <= to_us(as_of)
            p = self.user_activity * alive
            users = rng.choice(self.n_users, size=n_requests, p=p / p.sum())
        else:
            users = self.user_index(users)
            n_requests = len(users)
        draws = rng.random((n_requests, slate_size))
        clicks = expected = 0.0
        for lo in range(0, n_requests, batch_size):
            u = users[lo : lo + batch_size]
            slates = np.asarray(policy(self.user_ids[u], as_of))
            if slates.shape != (len(u), slate_size):
                raise ValueError(f"policy returned shape {slates.shape}; expected ({len(u)}, {slate_size})")
            filled = (slates != "") & (slates != None)  # noqa: E711 - elementwise
            items = np.zeros(slates.shape, dtype=np.int64)
            items[filled] = self.item_index(slates[filled])
            prob = self.position_bias[:slate_size][None, :] * self.relevance_idx(u[:, None], items) * filled
            clicks += float((draws[lo : lo + batch_size] < prob).sum())
            expected += float(prob.sum())
        shown = n_requests * slate_size
        return OnlineResult(
            clicks / shown, clicks / n_requests, n_requests, expected / shown, expected / n_requests
        )

    # --- inspection ---------------------------------------------------------------------------
    def items_frame(self) -> pl.DataFrame:
        """Item ids with their attribute names and hidden quality (for debugging and tests)."""
        cols = {"item_id": self.item_ids.astype(str)}
        for g, (name, values) in enumerate(A.GROUPS):
            cols[name] = np.asarray(values)[self.item_attributes[:, g]]
        cols["quality"] = self.item_quality
        return pl.DataFrame(cols)

    # --- persistence --------------------------------------------------------------------------
    _ARRAYS = (
        "position_bias",
        "item_attributes",
        "item_quality",
        "item_created_us",
        "legacy_base",
        "user_taste",
        "user_created_us",
        "user_activity",
        "user_segment",
        "segment_taste",
    )

    def save(self, ws: Workspace) -> None:
        with atomic_path(ws.truth_dir / ARRAYS_FILE, suffix=".npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, **{k: getattr(self, k) for k in self._ARRAYS})
        meta = {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "slate_size": self.slate_size,
            "temperature": self.temperature,
            "candidates": self.candidates,
            "bias": self.bias,
            "item_width": self.item_width,
            "user_width": self.user_width,
            "model": __doc__.split("\n\n")[1],
            "tables": world_fingerprint(ws),
        }
        write_json(meta, ws.truth_dir / META_FILE)

    @classmethod
    def applies(cls, ws: Workspace) -> bool:
        """Whether the workspace holds a truth that describes its current tables: the same click
        log and the same item and user ids as when the world was generated. An import keeps the
        truth files (a rollback can bring the world's tables back); it only stops applying."""
        meta_path = ws.truth_dir / META_FILE
        if not meta_path.exists() or not (ws.truth_dir / ARRAYS_FILE).exists():
            return False
        recorded = json.loads(meta_path.read_text()).get("tables")
        return recorded is None or recorded == world_fingerprint(ws)  # None: written before fingerprints

    @classmethod
    def load(cls, ws: Workspace) -> WorldTruth:
        meta_path = ws.truth_dir / META_FILE
        if not meta_path.exists():
            raise FileNotFoundError(
                f"{meta_path} does not exist: run `recsys generate` first "
                "(ground truth exists for the embedded world only)"
            )
        meta = json.loads(meta_path.read_text())
        with np.load(ws.truth_dir / ARRAYS_FILE) as z:
            arrays = {k: z[k] for k in cls._ARRAYS}
        return cls(
            start=datetime.fromisoformat(meta["start"]),
            end=datetime.fromisoformat(meta["end"]),
            slate_size=meta["slate_size"],
            temperature=meta["temperature"],
            candidates=meta["candidates"],
            bias=meta["bias"],
            item_width=meta["item_width"],
            user_width=meta["user_width"],
            **arrays,
        )


def world_fingerprint(ws: Workspace) -> dict[str, str | None]:
    """What the truth is about: the click log's content hash and digests of the item and user
    id sets (the pipeline may rewrite other item columns, e.g. generated thumbnails)."""
    def ids_digest(table: str, column: str) -> str | None:
        if not ws.table(table).exists():
            return None
        ids = pl.read_parquet(ws.table(table), columns=[column])[column].sort()
        return hashlib.sha256("\n".join(ids.to_list()).encode()).hexdigest()

    return {"impressions": history.table_sha256(ws, "impressions"),
            "item_ids": ids_digest("items", "item_id"), "user_ids": ids_digest("users", "user_id")}


def _parse_ids(ids, prefix: str, width: int, n: int, what: str) -> np.ndarray:
    arr = np.asarray(ids)
    s = pl.Series(arr.ravel().astype(str) if arr.dtype != object else arr.ravel(), dtype=pl.String)
    idx = s.str.slice(1).cast(pl.Int64, strict=False)
    ok = s.str.starts_with(prefix) & (s.str.len_chars() == width + 1) & idx.is_not_null() & (idx < n)
    ok = ok.fill_null(False)
    if not ok.all():
        bad = s.filter(~ok).unique(maintain_order=True).head(5).to_list()
        raise ValueError(
            f"unknown {what} id(s) {bad}: the world has {what} ids {prefix}{'0' * width}.."
            f"{prefix}{n - 1:0{width}d}"
        )
    return idx.to_numpy().reshape(arr.shape)
