"""The ranker's feature matrix: one pure function, `assemble`, used at training and at serving.

Training calls it once over a million candidate rows; serving calls it per request over ~300
candidates. Both pass the same kinds of inputs (per-item arrays prebuilt in an `ItemTable`,
per-query `Profiles` and user-behaviour rows, per-candidate two-tower scores), so a feature
can never mean one thing offline and another online. The list of features is fixed by a
`FeatureSpec` that is saved beside the model (`features.json`) and versioned
(`FEATURE_SET_VERSION`); a loaded model assembles exactly its own list, in its own order.

Features (F = U + B + 4 + 11):

- `user.<name>`: the user's behaviour features (Feast view `user_behaviour`, numeric ones).
- `item.<name>`: the item's behaviour features (Feast view `item_behaviour`, numeric ones).
- content: `price`, `image_source` (categorical: original / generated / none), `item_age_days`,
  `category` (categorical, codes of the training catalogue's categories).
- request-time: `tt_score` and `tt_rank` (two-tower dot product and rank in the retrieval list,
  rank capped at the list length for items outside it), `clip_cos` (cosine between the user's
  recent-click CLIP profile and the item's fused CLIP vector), `category_share` (share of the
  user's recent clicks in the item's category) and `category_match` (item is in the user's top
  category), `price_rel` (price over the median price of the user's recent clicks),
  `history_len` (how many recent clicks the profile rests on).
- candidate sources beside the two-tower: `ease_score` and `ease_rank` (the EASE item-item
  score x_u B of the candidate and its rank in EASE's list, capped like `tt_rank`),
  `item_popularity` (share of users who clicked the item in the data EASE was fit on, so that
  a fit on more data keeps the scale) and `user_clicks` (log1p of the user's known clicks).
  NaN where the ranker was trained without EASE (a logged-impressions log, whose features
  come from Feast point-in-time).

Position is deliberately *not* a feature. It is used for de-biasing at training time only, by
inverse examination-propensity weights on clicked rows (see `recsys.ranking.dataset`): a
position feature would have to be pinned to a constant at serving, where the tree splits on it
would then act on a value the model never saw with real candidates, and hard negatives (never
shown) have no position at all. Weights leave the model a function of the item and user alone.
Missing values (item without features, user without history) stay NaN: LightGBM routes them
down a learned default branch, the same offline and online.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from recsys.data import columns as C

FEATURE_SET_VERSION = 2
IMAGE_SOURCE_CODES = {s: i for i, s in enumerate(C.IMAGE_SOURCES)}
CONTENT = ("price", "image_source", "item_age_days", "category")
REQUEST = ("tt_score", "tt_rank", "clip_cos", "category_share", "category_match", "price_rel", "history_len",
           "ease_score", "ease_rank", "item_popularity", "user_clicks")
SOURCE_FEATURES = ("ease_score", "ease_rank", "item_popularity", "user_clicks")  # (n,) arrays per candidate
CATEGORICAL = ("image_source", "category")
_DAY = 86_400.0


@dataclass(frozen=True)
class FeatureSpec:
    """The fixed, ordered list of features of one ranker model."""

    user_behaviour: tuple[str, ...] = ()
    item_behaviour: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    base: str | None = None  # a feature whose scaled value starts every score (`base_margin`)
    base_scale: float = 0.0
    version: int = FEATURE_SET_VERSION

    @property
    def names(self) -> list[str]:
        return ([f"user.{n}" for n in self.user_behaviour] + [f"item.{n}" for n in self.item_behaviour]
                + list(CONTENT) + list(REQUEST))

    @property
    def categorical(self) -> list[str]:
        return list(CATEGORICAL)

    def to_dict(self) -> dict:
        return {"version": self.version, "names": self.names, "categorical": self.categorical,
                "user_behaviour": list(self.user_behaviour), "item_behaviour": list(self.item_behaviour),
                "categories": list(self.categories), "base": self.base, "base_scale": self.base_scale}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> FeatureSpec:
        d = json.loads(Path(path).read_text())
        if d.get("version") != FEATURE_SET_VERSION:
            raise ValueError(f"{path}: feature set version {d.get('version')} is not supported by this "
                             f"code (version {FEATURE_SET_VERSION}); retrain the ranker")
        spec = cls(tuple(d["user_behaviour"]), tuple(d["item_behaviour"]), tuple(d["categories"]),
                   d.get("base"), float(d.get("base_scale", 0.0)))
        if spec.names != d["names"]:
            raise ValueError(f"{path}: stored feature names do not match the spec they were saved from")
        return spec


def base_margin(spec: FeatureSpec, x: np.ndarray) -> np.ndarray:
    """(n,) float64 start of every score: `base_scale` times the `base` feature (0 where it is
    missing), or zeros. With EASE's score as the base, the trees learn a correction to EASE's
    order rather than an order from scratch, so a ranker that finds nothing to add stays at
    EASE's quality instead of below it."""
    if spec.base is None:
        return np.zeros(len(x))
    return spec.base_scale * np.nan_to_num(np.asarray(x[:, spec.names.index(spec.base)], np.float64))


def numeric_columns(df: pl.DataFrame | None, exclude: Sequence[str] = ()) -> tuple[str, ...]:
    """Scalar numeric/boolean columns of a feature frame (lists, text and keys are not features)."""
    if df is None:
        return ()
    skip = set(exclude) | {C.USER_ID, C.ITEM_ID, C.EVENT_TIMESTAMP, C.REQUEST_ID}
    return tuple(n for n, t in df.schema.items()
                 if n not in skip and (t.is_numeric() or t == pl.Boolean))


def frame_matrix(df: pl.DataFrame | None, names: Sequence[str], rows: int) -> np.ndarray:
    """(rows, len(names)) float32 of the named columns; a column the frame lacks is NaN."""
    out = np.full((rows, len(names)), np.nan, dtype=np.float32)
    if df is None:
        return out
    for j, n in enumerate(names):
        if n in df.columns:
            out[:, j] = df[n].cast(pl.Float32).fill_null(np.nan).to_numpy()
    return out


@dataclass
class ItemTable:
    """Per-item arrays, built once (at training start, or when a model loads for serving).

    Row i of every array is item `ids[i]`; `index` maps an id to its row. `behaviour` holds the
    latest item-behaviour features (serving); training passes point-in-time rows instead.
    """

    ids: np.ndarray
    index: dict[str, int]
    emb: np.ndarray  # (N, D) float32, L2-normalised; zeros where an item has no vector
    has_emb: np.ndarray  # (N,) bool
    category: np.ndarray  # (N,) int32 code into `categories`, -1 where unknown
    categories: tuple[str, ...]
    price: np.ndarray  # (N,) float32, NaN where unknown
    image_source: np.ndarray  # (N,) float32 code of IMAGE_SOURCE_CODES
    created_at: np.ndarray  # (N,) float64 unix seconds, NaN where unknown
    behaviour: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # (N, B)
    behaviour_names: tuple[str, ...] = ()
    titles: np.ndarray | None = None  # (N,) object, for reasons shown to users
    available: np.ndarray | None = None  # (N,) bool: may be recommended (None: every item)
    # every catalogue category, coded for the shop's rules (filters, per-category caps), which
    # name categories the ranker never saw too; `category` codes only the ranker's (its feature).
    # None: the same as `category` / `categories`
    shop_category: np.ndarray | None = None  # (N,) int32 code into `shop_categories`, -1: none
    shop_categories: tuple[str, ...] | None = None
    _frame: pl.DataFrame | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.shop_category is None:
            self.shop_category, self.shop_categories = self.category, self.categories

    def title(self, row: int) -> str:
        """The item's title (its id where it has none)."""
        title = self.titles[row] if self.titles is not None else None
        return str(title) if title else str(self.ids[row])

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def build(cls, items: pl.DataFrame, embeddings: pl.DataFrame | None = None,
              categories: Sequence[str] | None = None) -> ItemTable:
        """From the items table and (optionally) item_embeddings. `categories` fixes the code
        order (a model's spec); by default the catalogue's categories, sorted."""
        ids = items[C.ITEM_ID].cast(pl.String).to_numpy().astype(object)
        index = {i: r for r, i in enumerate(ids)}
        cat_col = items[C.CATEGORY] if C.CATEGORY in items.columns else pl.Series([None] * len(ids))
        cats = cat_col.cast(pl.String).to_list()
        shop_categories = sorted({c for c in cats if c is not None})
        categories = shop_categories if categories is None else list(categories)
        code = {c: i for i, c in enumerate(categories)}
        category = np.array([code.get(c, -1) if c is not None else -1 for c in cats], dtype=np.int32)
        shop_code = {c: i for i, c in enumerate(shop_categories)}
        shop_category = np.array([shop_code[c] if c is not None else -1 for c in cats], dtype=np.int32)
        price = (items[C.PRICE].cast(pl.Float32).fill_null(np.nan).to_numpy()
                 if C.PRICE in items.columns else np.full(len(ids), np.nan, np.float32))
        src = (items[C.IMAGE_SOURCE].to_list() if C.IMAGE_SOURCE in items.columns else ["none"] * len(ids))
        created = (items[C.CREATED_AT].dt.epoch("us").cast(pl.Float64).to_numpy() / 1e6
                   if C.CREATED_AT in items.columns else np.full(len(ids), np.nan))
        dim = 0
        emb = np.zeros((len(ids), 0), np.float32)
        has = np.zeros(len(ids), bool)
        if embeddings is not None and embeddings.height:
            e = embeddings.filter(pl.col(C.EMBEDDING).is_not_null())
            rows = np.array([index.get(i, -1) for i in e[C.ITEM_ID].to_list()], dtype=np.int64)
            vecs = np.asarray(e[C.EMBEDDING].to_list(), dtype=np.float32)
            dim = vecs.shape[1] if vecs.ndim == 2 else 0
            emb = np.zeros((len(ids), dim), np.float32)
            ok = rows >= 0
            norms = np.linalg.norm(vecs[ok], axis=1, keepdims=True)
            emb[rows[ok]] = vecs[ok] / np.maximum(norms, 1e-12)
            has[rows[ok]] = True
            if C.IMAGE_SOURCE in e.columns:  # the backfill knows which images were generated
                for r, s in zip(rows[ok], np.asarray(e[C.IMAGE_SOURCE].to_list(), dtype=object)[ok],
                                strict=True):
                    if s is not None:
                        src[r] = s
        image_source = np.array([IMAGE_SOURCE_CODES.get(s or "none", 2) for s in src], dtype=np.float32)
        return cls(ids=ids, index=index, emb=emb, has_emb=has, category=category,
                   categories=tuple(categories), price=np.asarray(price, np.float32),
                   image_source=image_source, created_at=np.asarray(created, np.float64),
                   behaviour=np.zeros((len(ids), 0), np.float32),
                   titles=items[C.TITLE].to_numpy().astype(object) if C.TITLE in items.columns else None,
                   available=items[C.AVAILABLE].fill_null(True).to_numpy().astype(bool)
                   if C.AVAILABLE in items.columns else None,
                   shop_category=shop_category, shop_categories=tuple(shop_categories))

    def with_behaviour(self, df: pl.DataFrame | None, names: Sequence[str]) -> ItemTable:
        """A copy holding the latest item-behaviour features (one row per item id) for serving."""
        mat = np.full((len(self.ids), len(names)), np.nan, dtype=np.float32)
        if df is not None and df.height:
            rows = self.rows(df[C.ITEM_ID].cast(pl.String).to_list())
            ok = rows >= 0
            mat[rows[ok]] = frame_matrix(df, names, df.height)[ok]
        out = ItemTable(**{**self.__dict__})
        out.behaviour, out.behaviour_names = mat, tuple(names)
        return out

    def rows(self, ids: Sequence[str] | pl.Series) -> np.ndarray:
        """Row of each id, -1 where the id is not in the table (a join for long inputs)."""
        if len(ids) > 4096:
            if self._frame is None:
                self._frame = pl.DataFrame({"_id": list(self.ids), "_row": np.arange(len(self.ids))},
                                           schema={"_id": pl.String, "_row": pl.Int64})
            q = pl.DataFrame({"_id": pl.Series(ids, dtype=pl.String)})
            got = q.join(self._frame, on="_id", how="left", maintain_order="left")["_row"]
            return got.fill_null(-1).to_numpy()
        get = self.index.get
        return np.fromiter((get(i, -1) for i in ids), dtype=np.int64, count=len(ids))


@dataclass
class Profiles:
    """Per-query user context built from the user's recent clicks (as of the query time)."""

    clip: np.ndarray  # (M, D) float32 L2-normalised mean of clicked items' vectors (zeros: none)
    category_share: np.ndarray  # (M, K) float32 share of recent clicks per category
    top_category: np.ndarray  # (M,) int32, -1 where no history
    typical_price: np.ndarray  # (M,) float32 median price of recent clicks, NaN where none
    history_len: np.ndarray  # (M,) float32


def user_profiles(history: np.ndarray, items: ItemTable) -> Profiles:
    """Profiles from a padded (M, H) array of item rows of recent clicks (-1 pads)."""
    history = np.asarray(history, dtype=np.int64)
    if history.ndim == 1:
        history = history[None, :]
    m = history.shape[0]
    valid = history >= 0
    safe = np.where(valid, history, 0)
    n = valid.sum(axis=1).astype(np.float32)
    dim = items.emb.shape[1]
    if dim:
        w = (valid & items.has_emb[safe]).astype(np.float32)
        if m > 64:  # training: a sparse (M, N) click matrix times the (N, D) vectors, no (M, H, D) copy
            from scipy.sparse import csr_matrix

            rr, cc = np.nonzero(w)
            mat = csr_matrix((np.ones(len(rr), np.float32), (rr, safe[rr, cc])), shape=(m, len(items.ids)))
            clip = np.asarray(mat @ items.emb)
        else:
            clip = np.einsum("mh,mhd->md", w, items.emb[safe]) if m * history.shape[1] else np.zeros((m, dim))
        clip = clip / np.maximum(np.linalg.norm(clip, axis=1, keepdims=True), 1e-12)
    else:
        clip = np.zeros((m, 0), np.float32)
    k = max(len(items.categories), 1)
    cat = np.where(valid, items.category[safe], -1)
    share = np.zeros((m, k), np.float32)
    rr, cc = np.nonzero(cat >= 0)
    np.add.at(share, (rr, cat[rr, cc]), 1.0)
    share /= np.maximum(n, 1.0)[:, None]
    top = np.where(share.max(axis=1) > 0, share.argmax(axis=1), -1).astype(np.int32)
    prices = np.where(valid, items.price[safe], np.nan)
    if m == 1:  # serving: np.nanmedian goes through masked arrays (~0.3 ms for one short row)
        row = prices[0][~np.isnan(prices[0])]
        typical = np.array([np.median(row) if len(row) else np.nan], np.float32)
        return Profiles(clip=clip.astype(np.float32), category_share=share, top_category=top,
                        typical_price=typical, history_len=n)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            typical = np.nanmedian(prices, axis=1) if prices.shape[1] else np.full(m, np.nan)
    return Profiles(clip=clip.astype(np.float32), category_share=share, top_category=top,
                    typical_price=np.asarray(typical, np.float32), history_len=n)


def assemble(
    spec: FeatureSpec,
    items: ItemTable,
    item_rows: np.ndarray,
    query_rows: np.ndarray,
    profiles: Profiles,
    user_behaviour: np.ndarray,
    request_ts: np.ndarray,
    tt_score: np.ndarray | None = None,
    tt_rank: np.ndarray | None = None,
    item_behaviour: np.ndarray | None = None,
    sources: Mapping[str, np.ndarray] | None = None,
    chunk: int = 262_144,
) -> np.ndarray:
    """The (n, F) float32 feature matrix, columns in `spec.names` order.

    - `item_rows` (n,): candidate's row in `items`; `query_rows` (n,): its query's row in
      `profiles`, `user_behaviour` (M, U, columns in `spec.user_behaviour` order) and
      `request_ts` (M,) (unix seconds).
    - `tt_score`, `tt_rank` (n,): two-tower score and rank (NaN / None where unavailable).
    - `item_behaviour` (n, B): point-in-time rows at training; None at serving, where the
      latest rows held in `items.behaviour` are gathered.
    - `sources`: (n,) arrays of the `SOURCE_FEATURES` (NaN where absent).
    """
    item_rows = np.asarray(item_rows, dtype=np.int64)
    query_rows = np.asarray(query_rows, dtype=np.int64)
    n = len(item_rows)
    nu, nb = len(spec.user_behaviour), len(spec.item_behaviour)
    out = np.empty((n, len(spec.names)), dtype=np.float32)
    if nu:
        out[:, :nu] = np.asarray(user_behaviour, np.float32)[query_rows]
    if nb:
        if item_behaviour is None:
            if tuple(items.behaviour_names) != tuple(spec.item_behaviour):
                raise ValueError("items.behaviour does not hold this model's item features "
                                 f"{list(spec.item_behaviour)}; call ItemTable.with_behaviour first")
            item_behaviour = items.behaviour[item_rows]
        out[:, nu:nu + nb] = item_behaviour
    j = nu + nb
    price = items.price[item_rows]
    out[:, j] = price
    out[:, j + 1] = items.image_source[item_rows]
    ts = np.asarray(request_ts, np.float64)[query_rows]
    out[:, j + 2] = (ts - items.created_at[item_rows]) / _DAY
    cat = items.category[item_rows]
    out[:, j + 3] = np.where(cat >= 0, cat, np.nan)
    j += len(CONTENT)
    out[:, j] = np.nan if tt_score is None else tt_score
    out[:, j + 1] = np.nan if tt_rank is None else tt_rank
    # cosine profile . item, chunked so a million rows never materialise two (n, D) copies
    cos = out[:, j + 2]
    if items.emb.shape[1] and profiles.clip.shape[1] == items.emb.shape[1]:
        for s in range(0, n, chunk):
            ir, qr = item_rows[s:s + chunk], query_rows[s:s + chunk]
            cos[s:s + chunk] = np.einsum("nd,nd->n", profiles.clip[qr], items.emb[ir])
        ok = items.has_emb[item_rows] & (profiles.history_len[query_rows] > 0)
        cos[~ok] = np.nan
    else:
        cos[:] = np.nan
    safe_cat = np.maximum(cat, 0)
    share = profiles.category_share[query_rows, np.minimum(safe_cat, profiles.category_share.shape[1] - 1)]
    out[:, j + 3] = np.where(cat >= 0, share, np.nan)
    out[:, j + 4] = np.where(cat >= 0, (cat == profiles.top_category[query_rows]).astype(np.float32), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        out[:, j + 5] = price / profiles.typical_price[query_rows]
    out[:, j + 6] = profiles.history_len[query_rows]
    for o, name in enumerate(SOURCE_FEATURES, start=j + 7):
        value = (sources or {}).get(name)
        out[:, o] = np.nan if value is None else value
    return out
