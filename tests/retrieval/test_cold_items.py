"""Item-tower vectors for items imported after the two-tower was trained (`recsys.retrieval.cold`):
the same model inputs as training's encoding, the model's own cold-item vectors."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from recsys.data import columns as C
from recsys.retrieval.artifact import RetrievalModel
from recsys.retrieval.cold import cold_item_vectors, encode_content
from recsys.retrieval.data import FeatureScaler, encode_items
from recsys.retrieval.model import TowerSpec, TwoTower


def catalogue(n: int = 40, dim: int = 24, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Items with a few gaps (no price, no category, no image source, no vector) and their vectors."""
    rng = np.random.default_rng(seed)
    ids = [f"i{i:03d}" for i in range(n)]
    items = pl.DataFrame({
        C.ITEM_ID: ids,
        C.CATEGORY: [None if i % 11 == 3 else ["shoes", "bags", "hats"][i % 3] for i in range(n)],
        C.PRICE: [None if i % 7 == 2 else float(np.round(rng.uniform(5, 100), 2)) for i in range(n)],
        C.IMAGE_SOURCE: [None if i % 13 == 5 else ["original", "generated", "none"][i % 3] for i in range(n)],
    })
    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    embeddings = pl.DataFrame({C.ITEM_ID: ids, C.EMBEDDING: vecs.tolist()},
                              schema={C.ITEM_ID: pl.String, C.EMBEDDING: pl.List(pl.Float32)})
    return items, embeddings.filter(pl.col(C.ITEM_ID) != "i009")  # one item never backfilled


def model_over(items: pl.DataFrame, embeddings: pl.DataFrame, clip_dim: int | None) -> RetrievalModel:
    """A (randomly initialised) two-tower over `items`, encoded as training encodes them."""
    warm = set(items[C.ITEM_ID].to_list()[::2])
    encoding, content = encode_items(items, embeddings, warm=warm, price_buckets=4, clip_dim=clip_dim)
    spec = TowerSpec(n_items=len(encoding.item_ids), clip_dim=content.clip.shape[1], user_buckets=31,
                     n_categories=len(encoding.categories) + 1, n_price_buckets=len(encoding.price_edges) + 2,
                     n_image_sources=len(encoding.image_sources) + 1, dim=16, hidden=32)
    torch.manual_seed(0)
    net = TwoTower(spec, content)
    return RetrievalModel.from_trained(net, encoding, FeatureScaler([], [], []), history=5)


@pytest.mark.parametrize("clip_dim", [8, None], ids=["pca", "whole"])
def test_new_items_get_the_inputs_and_vectors_the_model_gives_its_cold_items(clip_dim: int | None) -> None:
    items, embeddings = catalogue()
    model = model_over(items, embeddings, clip_dim)
    ids, content = encode_content(model.encoding, items, embeddings, model.net.spec.clip_dim)
    net = model.net
    assert ids == model.item_ids
    np.testing.assert_allclose(content.clip, net.item_clip.numpy(), atol=1e-5)
    assert (content.clip[1 + ids.index("i009")] == 0).all()  # no vector: zeros, as in training
    for mine, theirs in ((content.category, net.item_category), (content.price_bucket, net.item_price),
                         (content.image_source, net.item_source)):
        np.testing.assert_array_equal(mine, theirs.numpy())
    assert not content.warm.any()

    rng_before = torch.get_rng_state()
    got_ids, got = cold_item_vectors(model, items.reverse(), embeddings)  # any row order
    assert torch.equal(torch.get_rng_state(), rng_before)  # the small tower's init drew nothing
    with torch.no_grad():  # the model's own tower, every item scored as a cold one
        warm = net.item_warm.clone()
        net.item_warm.zero_()
        expected = net.all_item_vectors().numpy()
        net.item_warm.copy_(warm)
    assert got_ids == ids
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_what_the_model_never_saw_is_unknown_and_other_vectors_are_refused() -> None:
    items, embeddings = catalogue()
    model = model_over(items, embeddings, 8)
    new = pl.DataFrame({C.ITEM_ID: ["n1", "n2"], C.CATEGORY: ["garden gnomes", "shoes"],
                        C.PRICE: [10_000.0, None], C.IMAGE_SOURCE: ["a new source", "original"]})
    vec = embeddings[C.EMBEDDING][0]
    new_emb = pl.DataFrame({C.ITEM_ID: ["n1", "n2"], C.EMBEDDING: [vec, vec]},
                           schema={C.ITEM_ID: pl.String, C.EMBEDDING: pl.List(pl.Float32)})
    ids, content = encode_content(model.encoding, new, new_emb, model.net.spec.clip_dim)
    assert ids == ["n1", "n2"]
    assert content.category.tolist() == [0, 0, model.encoding.categories.index("shoes") + 1]
    assert content.price_bucket.tolist() == [0, len(model.encoding.price_edges) + 1, 0]  # above every edge
    assert content.image_source.tolist() == [0, 0, model.encoding.image_sources.index("original") + 1]
    np.testing.assert_array_equal(content.clip[1], content.clip[2])  # same vector, same input
    _, vectors = cold_item_vectors(model, new, new_emb)
    assert vectors.shape == (2, model.dim) and np.isfinite(vectors).all()

    other_clip = new_emb.with_columns(pl.col(C.EMBEDDING).list.head(10))  # another CLIP model's size
    with pytest.raises(ValueError, match="length 10"):
        cold_item_vectors(model, new, other_clip)
    assert cold_item_vectors(model, new.head(0), new_emb)[1].shape == (0, model.dim)


def test_a_candidate_source_takes_in_the_items_new_since_training() -> None:
    from recsys.ranking.candidates import TwoTowerSource
    from recsys.ranking.features import ItemTable

    items, embeddings = catalogue()
    trained = items.head(30)  # the last 10 items are imported after the model was trained
    model = model_over(trained, embeddings.filter(pl.col(C.ITEM_ID).is_in(trained[C.ITEM_ID])), 8)
    table = ItemTable.build(items)
    source = TwoTowerSource(model, table, "v1")
    assert len(source.item_rows) == 30 and source.index is model.index

    extended = source.with_new_items(items, embeddings)
    assert extended.new_items == 10 and extended.index is None  # the model's index lacks them
    assert sorted(extended.item_rows.tolist()) == list(range(40))
    new_ids, expected = cold_item_vectors(model, items.tail(10), embeddings)
    np.testing.assert_array_equal(extended.item_vectors[30:], expected)
    assert [str(table.ids[r]) for r in extended.item_rows[30:]] == new_ids
    np.testing.assert_array_equal(extended.item_vectors[:30], source.item_vectors)  # the trained ones kept
    assert len(source.item_rows) == 30  # the source itself is unchanged
    assert extended.with_new_items(items, embeddings) is extended  # nothing left to add: itself
    whole = TwoTowerSource(model, ItemTable.build(trained), "v1")
    assert whole.with_new_items(trained, None) is whole
