"""Two-tower shapes, cold items scored from content, the logQ-corrected loss, determinism."""

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F

from recsys.data import columns as C
from recsys.retrieval.config import RetrievalConfig
from recsys.retrieval.model import ItemContent, TowerSpec, TwoTower, sampled_softmax_loss, user_bucket
from recsys.retrieval.train import build_examples, item_log_q, train_two_tower


def _tiny(n_items=20, clip_dim=8, feats=3, warm_upto=10):
    rng = np.random.default_rng(0)
    clip = rng.normal(size=(n_items + 1, clip_dim)).astype(np.float32)
    warm = np.arange(n_items + 1) <= warm_upto
    warm[0] = False
    content = ItemContent(clip, rng.integers(0, 3, n_items + 1), rng.integers(0, 4, n_items + 1),
                          rng.integers(0, 2, n_items + 1), warm)
    spec = TowerSpec(n_items=n_items, clip_dim=clip_dim, n_user_features=feats, user_buckets=97,
                     n_categories=3, n_price_buckets=4, n_image_sources=2, dim=16, hidden=32)
    torch.manual_seed(0)
    return TwoTower(spec, content)


def test_shapes_and_normalisation():
    m = _tiny().eval()
    u = m.user_tower(torch.tensor([1, 5]), torch.tensor([[3, 2, 0], [0, 0, 0]]), torch.randn(2, 3))
    v = m.item_tower(torch.tensor([1, 2, 3]))
    assert u.shape == (2, 16) and v.shape == (3, 16)
    assert torch.allclose(u.norm(dim=1), torch.ones(2), atol=1e-5)
    assert m.all_item_vectors().shape == (20, 16)
    assert 0 <= user_bucket("someone-new", 97) < 97
    assert user_bucket("u1", 97) == user_bucket("u1", 97)


def test_cold_items_ignore_their_id_vector():
    m = _tiny().eval()
    cold, warm = torch.tensor([15]), torch.tensor([5])
    before_cold, before_warm = m.item_tower(cold), m.item_tower(warm)
    with torch.no_grad():
        m.item_id.weight[15] += 10.0
        m.item_id.weight[5] += 10.0
    assert torch.allclose(m.item_tower(cold), before_cold)
    assert not torch.allclose(m.item_tower(warm), before_warm)


def test_sampled_softmax_applies_logq_over_distinct_items():
    torch.manual_seed(0)
    u = F.normalize(torch.randn(4, 8), dim=1)
    v = F.normalize(torch.randn(3, 8), dim=1)        # distinct items 7, 3, 9
    target = torch.tensor([0, 1, 0, 2])               # rows 0 and 2 both clicked item 7
    log_q = torch.log(torch.tensor([0.5, 0.1, 0.2]) * 4)
    loss = sampled_softmax_loss(u, v, target, log_q, 0.1)
    logits = u @ v.T / 0.1 - log_q[None, :]
    assert loss.item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-5)
    # with equal scores the correction is what separates the candidates: a popular positive
    # (large q) is discounted, so its loss is higher than an unpopular one's
    same = torch.ones(2, 8) / np.sqrt(8)
    flat = sampled_softmax_loss(same, same, torch.tensor([0, 1]), torch.zeros(2), 1.0)
    corrected = sampled_softmax_loss(same[:1], same, torch.tensor([0]), torch.tensor([2.0, 0.0]), 1.0)
    assert flat.item() == pytest.approx(np.log(2), rel=1e-5)
    assert corrected.item() == pytest.approx(np.log(1 + np.exp(2.0)), rel=1e-5)
    # uniform negatives join the softmax with their own correction
    neg = F.normalize(torch.randn(3, 8), dim=1)
    with_neg = sampled_softmax_loss(u, v, target, log_q, 0.1, neg, torch.full((3,), np.log(3 / 100)))
    ref = torch.cat([logits, u @ neg.T / 0.1 - np.log(3 / 100)], dim=1)
    assert with_neg.item() == pytest.approx(F.cross_entropy(ref, target).item(), rel=1e-5)
    assert with_neg.item() > loss.item()


def test_item_log_q_is_a_smoothed_log_share():
    lq = item_log_q(np.array([1, 1, 1, 2]), n_items=3, smoothing=1.0)
    p = np.exp(lq)
    assert p.sum() == pytest.approx(1.0)
    assert p[1] > p[2] > p[3]


def test_histories_are_point_in_time():
    ts = pl.datetime_range(pl.datetime(2024, 1, 1), pl.datetime(2024, 1, 4), "1d", eager=True,
                           time_zone="UTC").dt.cast_time_unit("us")
    clicks = pl.DataFrame({C.USER_ID: ["a", "a", "b", "a"], C.ITEM_ID: ["x", "y", "x", "z"],
                           C.EVENT_TIMESTAMP: ts})
    ex = build_examples(clicks, {"x": 1, "y": 2, "z": 3}, history=3, buckets=11)
    assert len(ex) == 4
    rows = sorted(zip(ex.item.tolist(), ex.history.tolist(), strict=True))
    assert rows.count((1, [0, 0, 0])) == 2                  # first clicks see nothing
    assert (3, [2, 1, 0]) in rows                           # a's 3rd click: y then x, newest first
    assert (2, [1, 0, 0]) in rows
    with pytest.raises(ValueError, match="outside the catalogue"):
        build_examples(clicks, {"x": 1}, history=3, buckets=11)


def test_training_is_deterministic_on_cpu(shop, shop_split):
    cfg = RetrievalConfig(epochs=2, batch_size=256, dim=16, hidden=32, clip_dim=16, user_buckets=1009)
    a = train_two_tower(shop.items, shop.embeddings, shop_split.train, shop_split.valid, cfg, seed=3)
    b = train_two_tower(shop.items, shop.embeddings, shop_split.train, shop_split.valid, cfg, seed=3)
    assert a.model.model_version == b.model.model_version
    sa, sb = a.model.net.state_dict(), b.model.net.state_dict()
    for name, x in sa.items():
        assert torch.equal(x, sb[name]), name
    assert len(a.fit.epochs) == 2 and "val_score" in a.fit.epochs[0]


def test_user_features_train_and_serve_by_name(shop, shop_split):
    train = shop_split.train
    feats = train.select(pl.int_range(pl.len()).over(C.USER_ID).alias("user_behaviour__clicks_30d"),
                         pl.lit(0.1).alias("user_behaviour__ctr_30d"))
    cfg = RetrievalConfig(epochs=1, batch_size=256, dim=16, hidden=32, clip_dim=16, user_buckets=1009)
    model = train_two_tower(shop.items, shop.embeddings, train, shop_split.valid, cfg, seed=0,
                            user_features=feats, feature_names=list(feats.columns),
                            log_features=["user_behaviour__clicks_30d"]).model
    assert model.scaler.names == list(feats.columns) and model.scaler.log1p == ["user_behaviour__clicks_30d"]
    by_dict = model.user_vectors(["u1"], [["i0001"]], [{"user_behaviour__clicks_30d": 5, "other": "x"}])
    by_frame = model.user_vectors(["u1"], [["i0001"]], pl.DataFrame({"clicks_30d": [5]}))  # bare name
    missing = model.user_vectors(["u1"], [["i0001"]], [None])
    assert np.allclose(by_dict, by_frame, atol=1e-6)
    assert not np.allclose(by_dict, missing, atol=1e-4)
