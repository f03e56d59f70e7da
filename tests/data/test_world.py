"""The embedded world: deterministic, valid, learnable, and its ground truth agrees with its log."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
import pytest
from PIL import Image

from recsys.data import columns as C
from recsys.data.config import WorldConfig
from recsys.data.contracts import validate_impressions, validate_items, validate_users
from recsys.data.splits import temporal_split
from recsys.data.tables import load_table
from recsys.data.truth import WorldTruth, to_us
from recsys.data.world import generate_world
from recsys.workspace import Workspace

TINY = WorldConfig(items=60, users=50, days=5, impressions=3000, images=False)


def test_tables_follow_the_contracts(small_world) -> None:
    ws, result = small_world
    items, users, imp = (load_table(ws, t) for t in ("items", "users", "impressions"))
    assert (items.height, users.height, imp.height) == (result.items, result.users, result.impressions)
    assert validate_items(items, "items").bad.height == 0
    assert validate_users(users, "users").bad.height == 0
    checked = validate_impressions(imp, "impressions", known_items=items[C.ITEM_ID])
    assert checked.bad.height == 0 and checked.good.schema == imp.schema
    assert imp[C.EVENT_TIMESTAMP].is_sorted()
    assert imp.group_by(C.REQUEST_ID).len()["len"].max() == 10
    assert imp.select(pl.struct(C.REQUEST_ID, C.ITEM_ID).is_unique().all()).item()  # no repeats in a slate
    assert 0.02 < imp[C.CLICKED].mean() < 0.3
    assert "items" in result.summary() and str(ws.data_dir) in result.summary()


def test_items_have_pictures_and_words(small_world) -> None:
    ws, _ = small_world
    items = load_table(ws, "items")
    truth = WorldTruth.load(ws).items_frame()
    no_image = items[C.IMAGE_URI].null_count() / items.height
    assert 0.07 < no_image < 0.25
    assert set(items[C.IMAGE_SOURCE].unique()) == {"original", "none"}
    first = items.drop_nulls(C.IMAGE_URI).row(0, named=True)
    with Image.open(first[C.IMAGE_URI]) as img:
        assert img.size == (128, 128) and img.format == "PNG"
    joined = items.join(truth, on=C.ITEM_ID)
    for row in joined.head(50).iter_rows(named=True):  # every attribute is named in the text
        text = row[C.DESCRIPTION].lower()
        assert row["category"] in text and row["colour"] in text, text
    assert items[C.DESCRIPTION].n_unique() == items.height
    assert items[C.PRICE].min() > 0


def test_cold_items_exist_in_a_temporal_test_split(small_world) -> None:
    ws, _ = small_world
    imp, items = load_table(ws, "impressions"), load_table(ws, "items")
    split = temporal_split(imp.filter(pl.col(C.CLICKED)), valid_frac=0.1, test_frac=0.2)
    cold = set(split.test[C.ITEM_ID]) - set(split.train[C.ITEM_ID]) - set(split.valid[C.ITEM_ID])
    assert cold
    late = items.filter(pl.col(C.CREATED_AT) > imp[C.EVENT_TIMESTAMP].min())
    assert 0.1 < late.height / items.height < 0.4


def test_same_seed_same_world(tmp_path) -> None:
    a, b, c = (Workspace.at(tmp_path / n) for n in "abc")
    generate_world(TINY, 3, a)
    generate_world(TINY, 3, b)
    generate_world(TINY, 4, c)
    for table in ("items", "users", "impressions"):
        assert load_table(a, table).equals(load_table(b, table)), table
    assert not load_table(a, "impressions").equals(load_table(c, "impressions"))
    assert load_table(a, "items")[C.IMAGE_URI].null_count() == TINY.items  # --no-images
    assert not list(a.images_dir.glob("*.png"))


def test_world_refuses_a_catalogue_smaller_than_three_slates(tmp_path) -> None:
    with pytest.raises(ValueError, match="slate_size"):
        generate_world(
            WorldConfig(items=20, users=20, impressions=200, images=False), 0, Workspace.at(tmp_path)
        )


def test_recorded_propensities_are_the_logging_policys(small_world) -> None:
    ws, _ = small_world
    truth, imp = WorldTruth.load(ws), load_table(ws, "impressions")
    users, items = imp[C.USER_ID].to_numpy(), imp[C.ITEM_ID].to_numpy()
    p = truth.logging_propensity(users, items, imp[C.POSITION].to_numpy(), imp[C.EVENT_TIMESTAMP])
    np.testing.assert_allclose(p, imp[C.PROPENSITY].to_numpy())
    every_slot = np.stack(imp[C.SLOT_PROPENSITIES].to_numpy())
    np.testing.assert_allclose(every_slot, truth.slot_propensities(users, items, imp[C.EVENT_TIMESTAMP]),
                               rtol=1e-6, atol=1e-9)
    # each slot's marginals sum to one over the catalogue (Plackett-Luce fills every slot)
    day = truth.day_index(to_us(truth.end)).item()
    np.testing.assert_allclose(truth.logging_marginals(day).sum(axis=1), 1.0, atol=1e-6)
    # the marginals are what the sampler draws: item-slot frequencies of 20,000 slates agree
    user, when = truth.user_ids[:1], truth.end - timedelta(hours=1)
    slates = truth.item_index(truth.logging_slates(np.repeat(user, 20_000), when, seed=3))
    freq = np.zeros((truth.n_items, truth.slate_size))
    np.add.at(freq, (slates, np.broadcast_to(np.arange(truth.slate_size), slates.shape)), 1 / 20_000)
    mu = truth.slot_propensities(np.repeat(user, truth.n_items), truth.item_ids, when)
    assert np.abs(freq - mu).max() < 5 * np.sqrt(mu.max() / 20_000)
    # an item not yet created never shows
    newest = truth.item_ids[-1]
    before = truth.start - timedelta(days=1)
    assert truth.logging_propensity(user, np.array([newest]), np.array([0]), before)[0] == 0


def test_click_model_and_truth_api(small_world) -> None:
    ws, _ = small_world
    truth = WorldTruth.load(ws)
    users = truth.user_ids[:5]
    items = truth.item_ids[:5]
    rel = truth.relevance(users, items)
    assert rel.shape == (5,) and ((rel > 0) & (rel < 1)).all()
    p0 = truth.click_probability(users, items, np.zeros(5, int))
    p5 = truth.click_probability(users, items, np.full(5, 5))
    np.testing.assert_allclose(p0, truth.position_bias[0] * rel)
    assert (p5 < p0).all() and np.all(np.diff(truth.position_bias) < 0)
    with pytest.raises(ValueError, match="unknown item"):
        truth.relevance(users[:1], np.array(["nope"]))
    # taste is over attributes: two items with the same attributes differ only by quality
    frame = truth.items_frame()
    same = (
        frame.group_by("category", "colour", "pattern", "background")
        .agg(pl.col(C.ITEM_ID))
        .filter(pl.col(C.ITEM_ID).list.len() >= 2)
        .row(0, named=True)[C.ITEM_ID][:2]
    )
    u = truth.user_ids[:50]
    idx = truth.item_index(np.array(same))
    logit = [truth.score_idx(truth.user_index(u), np.full(50, i)) for i in idx]
    q = truth.item_quality[truth.item_index(np.array(same))]
    np.testing.assert_allclose(logit[0] - logit[1], q[0] - q[1], atol=1e-4)


def test_online_simulation_orders_policies(small_world) -> None:
    ws, _ = small_world
    truth = WorldTruth.load(ws)
    rng = np.random.default_rng(0)

    def oracle(user_ids, as_of):
        s = truth.score_idx(truth.user_index(user_ids)[:, None], np.arange(truth.n_items)[None, :])
        return truth.item_ids[np.argsort(-s, axis=1)[:, :10]]

    def content_only(user_ids, as_of):  # taste x attributes, blind to quality
        u = truth.user_index(user_ids)[:, None]
        s = truth.score_idx(u, np.arange(truth.n_items)[None, :]) - truth.item_quality[None, :]
        return truth.item_ids[np.argsort(-s, axis=1)[:, :10]]

    def popular(user_ids, as_of):  # quality alone, the same slate for everyone
        return np.tile(truth.item_ids[np.argsort(-truth.item_quality)[:10]], (len(user_ids), 1))

    def random(user_ids, as_of):
        return truth.item_ids[rng.choice(truth.n_items, (len(user_ids), 10))]

    res = {
        name: truth.simulate_online(f, 2000, seed=1)
        for name, f in [
            ("oracle", oracle),
            ("content", content_only),
            ("popular", popular),
            ("random", random),
            ("logging", truth.logging_slates),
        ]
    }
    ev = {k: v.expected_ctr for k, v in res.items()}
    assert ev["oracle"] > ev["content"] > ev["popular"] > ev["random"]
    assert ev["oracle"] > ev["logging"] > ev["random"]
    assert res["oracle"].n == 2000 and abs(res["oracle"].ctr - ev["oracle"]) < 0.02
    again = truth.simulate_online(oracle, 2000, seed=1)
    assert again == res["oracle"]
    def padded(user_ids, as_of):
        slates = oracle(user_ids, as_of).astype(object)
        slates[:, 5:] = ""
        return slates

    half = truth.simulate_online(padded, 2000, seed=1)
    assert 0 < half.expected_ctr < ev["oracle"]
    with pytest.raises(ValueError, match="shape"):
        truth.simulate_online(lambda u, t: truth.item_ids[:3][None, :].repeat(len(u), 0), 10, seed=0)
