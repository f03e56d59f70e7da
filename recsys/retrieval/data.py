"""Encoding the catalogue and user features into the arrays the two-tower model takes.

Pure functions over polars frames; the encodings (vocabularies, price bucket edges, the CLIP
projection, feature mean/std) are returned so they can be saved with the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from recsys.data import columns as C
from recsys.retrieval.model import ItemContent


@dataclass
class ItemEncoding:
    """How items were turned into model inputs; saved in the model folder (`model.json`)."""

    item_ids: list[str]                       # position i -> 1-based item index i + 1
    categories: list[str]                     # index j + 1 (0 = unknown)
    price_edges: list[float]                  # bucket = 1 + searchsorted(edges, price); 0 = none
    image_sources: list[str] = field(default_factory=lambda: list(C.IMAGE_SOURCES))
    clip_components: list[list[float]] | None = None  # (reduced, full) PCA rows, or None
    clip_mean: list[float] | None = None

    @property
    def index(self) -> dict[str, int]:
        return {item: i + 1 for i, item in enumerate(self.item_ids)}

    def to_dict(self) -> dict:
        return {"categories": self.categories, "price_edges": self.price_edges,
                "image_sources": self.image_sources, "clip_components": self.clip_components,
                "clip_mean": self.clip_mean}


def stack_vectors(values: Sequence[Sequence[float] | None], dim: int | None = None) -> np.ndarray:
    """A list column of vectors (None allowed -> zeros) as a float32 matrix."""
    if dim is None:
        dim = next((len(v) for v in values if v is not None), 0)
    out = np.zeros((len(values), dim), dtype=np.float32)
    for i, v in enumerate(values):
        if v is not None:
            if len(v) != dim:
                raise ValueError(f"row {i}: vector of length {len(v)}, expected {dim}")
            out[i] = v
    return out


def stack_vector_column(column: pl.Series, dim: int | None = None) -> np.ndarray:
    """`stack_vectors` of a list column (null -> zeros) read straight into numpy: the same
    matrix without a Python float per value (100k CLIP vectors of 128 as Python lists: 0.46 GiB,
    of 512: about 1.8 GiB)."""
    lengths = column.list.len()
    if dim is None:
        present = lengths.drop_nulls()
        dim = int(present[0]) if len(present) else 0
    wrong = (lengths != dim).fill_null(False)
    if wrong.any():
        i = int(wrong.arg_true()[0])
        raise ValueError(f"row {i}: vector of length {lengths[i]}, expected {dim}")
    out = np.zeros((len(column), dim), dtype=np.float32)
    has = lengths.is_not_null().to_numpy()
    if dim and has.any():
        out[has] = column.filter(has).explode().to_numpy().astype(np.float32, copy=False).reshape(-1, dim)
    return out


def pca_reduce(x: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project rows onto their top `dim` principal directions, re-normalised (fewer FLOPs in
    both towers: 512 -> 128 keeps most of a catalogue's CLIP variance). Returns
    (reduced, components (dim, full), mean)."""
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    comps = vt[:dim].astype(np.float32)
    reduced = (x - mean) @ comps.T
    norms = np.linalg.norm(reduced, axis=1, keepdims=True)
    return (reduced / np.maximum(norms, 1e-12)).astype(np.float32), comps, mean.astype(np.float32)


def encode_items(items: pl.DataFrame, embeddings: pl.DataFrame, warm: set[str] | None = None,
                 price_buckets: int = 8, clip_dim: int | None = 128) -> tuple[ItemEncoding, ItemContent]:
    """Join the catalogue with its fused CLIP vectors and encode metadata.

    Items without a vector get zeros (they are still rankable by metadata); `warm` items (with
    training clicks) keep their id embedding, the others use the shared "no id" row.
    `clip_dim` reduces the CLIP vectors by PCA (None: keep them whole).
    """
    emb = embeddings.select(C.ITEM_ID, C.EMBEDDING).unique(C.ITEM_ID, keep="last")
    price = C.PRICE if C.PRICE in items.columns else pl.lit(None, pl.Float64).alias(C.PRICE)
    source = C.IMAGE_SOURCE if C.IMAGE_SOURCE in items.columns else pl.lit("none").alias(C.IMAGE_SOURCE)
    df = items.select(C.ITEM_ID, C.CATEGORY, price, source)
    df = df.join(emb, on=C.ITEM_ID, how="left").sort(C.ITEM_ID)
    missing = df.filter(pl.col(C.EMBEDDING).is_null()).height
    if missing == df.height:
        raise ValueError("no item has a CLIP vector in item_embeddings: run `recsys backfill` first")
    clip = stack_vector_column(df[C.EMBEDDING])
    components = mean = None
    if clip_dim and clip_dim < clip.shape[1] and len(clip) > clip_dim:
        has = np.linalg.norm(clip, axis=1) > 0
        reduced, components, mean = pca_reduce(clip[has], clip_dim)
        full = np.zeros((len(clip), clip_dim), dtype=np.float32)
        full[has] = reduced
        clip = full
    categories = sorted({c for c in df[C.CATEGORY].to_list() if c is not None})
    prices = df[C.PRICE].cast(pl.Float64).to_numpy()
    finite = prices[np.isfinite(prices)]
    edges = (np.unique(np.quantile(finite, np.linspace(0, 1, price_buckets + 1)[1:-1])).tolist()
             if finite.size else [])
    enc = ItemEncoding(item_ids=df[C.ITEM_ID].to_list(), categories=categories, price_edges=edges,
                       clip_components=None if components is None else components.tolist(),
                       clip_mean=None if mean is None else mean.tolist())
    n = df.height
    cat_index = {c: j + 1 for j, c in enumerate(categories)}
    src_index = {s: j + 1 for j, s in enumerate(enc.image_sources)}
    price_bucket = np.where(np.isfinite(prices), 1 + np.searchsorted(edges, np.nan_to_num(prices)), 0)
    warm_mask = np.array([i in warm for i in enc.item_ids]) if warm is not None else np.ones(n, bool)
    content = ItemContent(
        clip=np.vstack([np.zeros((1, clip.shape[1]), np.float32), clip]),
        category=np.concatenate([[0], [cat_index.get(c, 0) for c in df[C.CATEGORY].to_list()]]
                                ).astype(np.int64),
        price_bucket=np.concatenate([[0], price_bucket]).astype(np.int64),
        image_source=np.concatenate([[0], [src_index.get(s, 0) for s in df[C.IMAGE_SOURCE].to_list()]]
                                    ).astype(np.int64),
        warm=np.concatenate([[False], warm_mask]),
    )
    return enc, content


@dataclass
class FeatureScaler:
    """Standardisation of numeric user features; missing values become the mean (0)."""

    names: list[str]
    mean: list[float]
    std: list[float]
    log1p: list[str] = field(default_factory=list)  # counts, compressed before scaling

    @classmethod
    def fit(cls, frame: pl.DataFrame, names: Sequence[str], log1p: Sequence[str] = ()) -> FeatureScaler:
        names = list(names)
        log1p = [n for n in log1p if n in names]
        x = cls([], [], [], log1p)._raw(frame.select([pl.col(n).cast(pl.Float64) for n in names]).to_numpy(),
                                        names) if names else np.zeros((frame.height, 0))
        mean = np.nanmean(x, axis=0) if len(x) else np.zeros(len(names))
        std = np.nanstd(x, axis=0) if len(x) else np.ones(len(names))
        mean = np.nan_to_num(mean)
        std = np.where(np.nan_to_num(std) > 1e-9, np.nan_to_num(std), 1.0)
        return cls(names, mean.tolist(), std.tolist(), log1p)

    def _raw(self, x: np.ndarray, names: Sequence[str] | None = None) -> np.ndarray:
        x = np.array(x, dtype=np.float64, copy=True)
        for j, name in enumerate(names if names is not None else self.names):
            if name in self.log1p:
                x[:, j] = np.log1p(np.maximum(x[:, j], 0.0))
        return x

    def transform_frame(self, frame: pl.DataFrame) -> np.ndarray:
        if not self.names:
            return np.zeros((frame.height, 0), dtype=np.float32)
        x = frame.select([pl.col(n).cast(pl.Float64) for n in self.names]).to_numpy()
        return self._scale(x)

    def transform_dicts(self, rows: Sequence[Mapping[str, object] | None]) -> np.ndarray:
        x = np.full((len(rows), len(self.names)), np.nan)
        for i, row in enumerate(rows):
            if not row:
                continue
            for j, name in enumerate(self.names):
                value = row.get(name)
                if isinstance(value, int | float) and not isinstance(value, bool) or isinstance(value, bool):
                    x[i, j] = float(value)
        return self._scale(x)

    def _scale(self, x: np.ndarray) -> np.ndarray:
        """Raw values (U, F) in `names` order -> standardised float32; NaN -> 0 (the mean)."""
        x = self._raw(x)
        z = (x - np.asarray(self.mean)) / np.asarray(self.std)
        return np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)

    def to_dict(self) -> dict:
        return {"names": self.names, "mean": self.mean, "std": self.std, "log1p": self.log1p}
