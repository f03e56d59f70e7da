"""Exact vs approximate search, seen-item filtering, atomic save, version stamping."""

import numpy as np
import pytest

from recsys.retrieval.index import IndexVersionError, ItemIndex


def _vectors(n=3000, d=32, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 8)) @ rng.normal(size=(8, d)) + 0.3 * rng.normal(size=(n, d))
    ids = [f"item{i}" for i in range(n)]
    return ids, base.astype(np.float32), rng.normal(size=(50, 8)) @ rng.normal(size=(8, d))


def _brute(vecs, q, k):
    v = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    return np.argsort(-(qn @ v.T), axis=1, kind="stable")[:, :k]


def test_exact_matches_brute_force():
    ids, vecs, q = _vectors()
    index = ItemIndex.build(ids, vecs, "v1", kind="exact")
    pos, scores = index.search_positions(q, 10)
    assert (pos == _brute(vecs, q, 10)).all()
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    found, _ = index.search(q[:1], 3)
    assert found.shape == (1, 3) and all(isinstance(x, str) for x in found[0])


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_ann_recall_against_exact(kind):
    ids, vecs, q = _vectors()
    exact = ItemIndex.build(ids, vecs, "v1", kind="exact")
    ann = ItemIndex.build(ids, vecs, "v1", kind=kind, nprobe=16)
    k = 50
    e_ids, _ = exact.search(q, k)
    a_ids, _ = ann.search(q, k)
    recall = np.mean([len(set(a) & set(e)) / k for a, e in zip(a_ids, e_ids, strict=True)])
    assert recall >= 0.9, recall


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_seen_items_are_never_returned(kind):
    ids, vecs, q = _vectors(n=500)
    index = ItemIndex.build(ids, vecs, "v1", kind=kind)
    top, _ = index.search(q[:3], 20)
    exclude = [set(top[0][:15]), set(), set(top[2]) | {"not-an-item"}]
    got, scores = index.search(q[:3], 20, exclude=exclude)
    assert not set(got[0]) & exclude[0]
    assert list(got[0][:5]) == list(top[0][15:20])           # the rest move up, in order
    assert list(got[1]) == list(top[1])
    assert not set(got[2]) & exclude[2] and "" not in set(got[2])
    # asking for more than what is left pads with '' and -inf
    small = ItemIndex.build(ids[:5], vecs[:5], "v1", kind="exact")
    got, scores = small.search(q[:1], 4, exclude=[{ids[0], ids[1]}])
    assert list(got[0][3:]) == [""] and np.isneginf(scores[0, 3])


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf"])
def test_save_load_roundtrip_and_version_check(tmp_path, kind):
    ids, vecs, q = _vectors(n=800)
    index = ItemIndex.build(ids, vecs, "tt-abc", kind=kind)
    before, _ = index.search(q, 10)
    index.save(tmp_path / "index")
    index.save(tmp_path / "index")                             # overwrite in place, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]
    loaded = ItemIndex.load(tmp_path / "index", expected_version="tt-abc")
    after, _ = loaded.search(q, 10)
    assert (before == after).all()
    with pytest.raises(IndexVersionError, match="tt-abc"):
        ItemIndex.load(tmp_path / "index", expected_version="tt-other")


def test_bad_input_is_refused():
    ids, vecs, _ = _vectors(n=10)
    with pytest.raises(ValueError, match="unique"):
        ItemIndex.build(ids[:9] + ids[:1], vecs, "v")
    with pytest.raises(ValueError, match="10 item ids but 9"):
        ItemIndex.build(ids, vecs[:9], "v")
    index = ItemIndex.build(ids, vecs, "v")
    with pytest.raises(ValueError, match="dim"):
        index.search(np.ones((1, 3)), 2)
    with pytest.raises(FileNotFoundError):
        ItemIndex.load("/nonexistent/index", "v")
