"""Item-tower vectors for items a trained two-tower never saw (imported after it was trained).

The registered model holds vectors for the catalogue it was trained on; an item imported and
backfilled later has none, so stage 1 can never retrieve it. Its vector is the item tower over its
content, as the model scores its own cold items (no training clicks): the fused CLIP vector
(through the model's saved PCA projection), category, price bucket and image source, encoded
with the model's saved `ItemEncoding`, and the shared "no id" embedding row. A category or image
source the model does not know is "unknown" (index 0), as it is for a trained item without one.

`encode_content` is the transform half of `recsys.retrieval.data.encode_items` (which fits the
encoding on the training catalogue); tests/retrieval/test_cold_items.py checks that both give
the same model inputs, and that these vectors are the model's own cold-item vectors.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import polars as pl
import torch

from recsys.data import columns as C
from recsys.retrieval.artifact import RetrievalModel
from recsys.retrieval.data import ItemEncoding, stack_vector_column
from recsys.retrieval.model import ItemContent, TwoTower

# the item-table buffers (sized by the training catalogue) and the id tables: everything else in
# the state dict (MLPs, category/price/source embeddings) is the item tower a cold item goes through
_CATALOGUE_SIZED = ("item_clip", "item_category", "item_price", "item_source", "item_warm",
                    "item_id.weight", "user_id.weight")


def clip_input_dim(encoding: ItemEncoding, clip_dim: int) -> int:
    """Length of the CLIP vectors the model was trained on (before its PCA, if any)."""
    return len(encoding.clip_mean) if encoding.clip_components else clip_dim


def encode_content(encoding: ItemEncoding, items: pl.DataFrame, embeddings: pl.DataFrame,
                   clip_dim: int) -> tuple[list[str], ItemContent]:
    """(item ids sorted, their item-tower inputs, 1-based with the padding row 0, none warm) under
    a trained model's `encoding`. `items`: item_id and, where known, category, price and
    image_source; `embeddings`: item_id, embedding (items without one get zeros, as in
    training); `clip_dim`: the model's `TowerSpec.clip_dim`. Raises ValueError when the vectors
    are not of the length the model was trained on (a new CLIP model: retrain the two-tower)."""
    emb = embeddings.select(C.ITEM_ID, C.EMBEDDING).unique(C.ITEM_ID, keep="last")
    price = C.PRICE if C.PRICE in items.columns else pl.lit(None, pl.Float64).alias(C.PRICE)
    source = C.IMAGE_SOURCE if C.IMAGE_SOURCE in items.columns else pl.lit("none").alias(C.IMAGE_SOURCE)
    category = C.CATEGORY if C.CATEGORY in items.columns else pl.lit(None, pl.String).alias(C.CATEGORY)
    df = items.select(C.ITEM_ID, category, price, source).join(emb, on=C.ITEM_ID, how="left").sort(C.ITEM_ID)
    clip = stack_vector_column(df[C.EMBEDDING], clip_input_dim(encoding, clip_dim))
    if encoding.clip_components:  # the model's PCA, as `pca_reduce` applied it in training
        comps = np.asarray(encoding.clip_components, np.float32)
        mean = np.asarray(encoding.clip_mean, np.float32)
        has = np.linalg.norm(clip, axis=1) > 0
        reduced = (clip[has] - mean) @ comps.T
        norms = np.linalg.norm(reduced, axis=1, keepdims=True)
        clip = np.zeros((len(df), comps.shape[0]), np.float32)
        clip[has] = (reduced / np.maximum(norms, 1e-12)).astype(np.float32)
    cat_index = {c: j + 1 for j, c in enumerate(encoding.categories)}
    src_index = {s: j + 1 for j, s in enumerate(encoding.image_sources)}
    prices = df[C.PRICE].cast(pl.Float64).to_numpy()
    bucket = np.where(np.isfinite(prices),
                      1 + np.searchsorted(encoding.price_edges, np.nan_to_num(prices)), 0)
    n = df.height
    return df[C.ITEM_ID].to_list(), ItemContent(
        clip=np.vstack([np.zeros((1, clip.shape[1]), np.float32), clip]),
        category=np.array([0, *(cat_index.get(c, 0) for c in df[C.CATEGORY].to_list())], np.int64),
        price_bucket=np.concatenate([[0], bucket]).astype(np.int64),
        image_source=np.array([0, *(src_index.get(s, 0) for s in df[C.IMAGE_SOURCE].to_list())], np.int64),
        warm=np.zeros(n + 1, bool),
    )


@torch.no_grad()
def cold_item_vectors(model: RetrievalModel, items: pl.DataFrame,
                      embeddings: pl.DataFrame) -> tuple[list[str], np.ndarray]:
    """(item ids, (n, dim) L2-normalised vectors): `model`'s item tower over the content of
    `items` (see `encode_content`), each scored as a cold item. The tower is the model's own
    (`TwoTower.item_tower`): a small TwoTower over these items shares every trained weight but
    the catalogue-sized tables, and the "no id" row of the item-id table."""
    if not items.height:
        return [], np.zeros((0, model.dim), np.float32)
    spec = model.net.spec
    ids, content = encode_content(model.encoding, items, embeddings, spec.clip_dim)
    with torch.random.fork_rng(devices=[]):  # the new tables' random init must not move the global RNG
        net = TwoTower(replace(spec, n_items=len(ids), user_buckets=1), content)
    trained = {k: v for k, v in model.net.state_dict().items() if k not in _CATALOGUE_SIZED}
    missing, unexpected = net.load_state_dict(trained, strict=False)
    if unexpected or not set(missing) <= set(_CATALOGUE_SIZED):  # the tower changed shape: say so
        raise RuntimeError(f"cannot copy the item tower: missing {missing}, unexpected {unexpected}")
    net.item_id.weight[0] = model.net.item_id.weight[0]  # the shared "no id" row cold items use
    return ids, net.all_item_vectors().numpy().astype(np.float32)
