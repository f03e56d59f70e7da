"""Request-time rules, reasons and availability over HTTP, on a real trained recommender (the
tiny shop of tests/ranking: two-tower stand-in, LightGBM ranker) in the real app."""

from __future__ import annotations

import importlib.util
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from fastapi.testclient import TestClient
from serving_helpers import API_KEY, RecentClickFeatures, make_settings, wait_ready

from recsys.data import columns as C
from recsys.data.tables import save_table
from recsys.recommender import Recommender
from recsys.workspace import Workspace
from serving.app import create_app
from serving.state import ServingState, load_catalogue

_spec = importlib.util.spec_from_file_location("ranking_world",
                                               Path(__file__).parents[1] / "ranking" / "conftest.py")
_world = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_world)
USER = "u1"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, pl.DataFrame]]:
    from training.ranker import train_ranker

    world = _world.make_world(seed=3)
    home = tmp_path_factory.mktemp("rules") / "ws"
    settings = make_settings(home, **{"ranker.rounds": 30, "ranker.candidates": 8,
                                      "retrieval.candidates": 25})
    ws = Workspace.at(settings.home)
    for name in ("items", "item_embeddings", "impressions"):
        save_table(ws, name, world[name])
    train_ranker(settings, ws, None, promote=True, retrieval_uri="clip-profile")
    return settings, world


def real_state(settings: Any, previous: ServingState | None = None) -> ServingState:
    ws = Workspace.at(settings.home)
    rec = Recommender.load(settings)
    features = RecentClickFeatures(ws)
    return ServingState(catalogue=load_catalogue(ws), recommender=rec, features=features,
                        versions=dict(rec.versions), problems=())


@pytest.fixture
def client(shop) -> Iterator[TestClient]:
    with TestClient(create_app(shop[0], loader=real_state)) as c:
        wait_ready(c)
        yield c


def seen_by(world: dict[str, pl.DataFrame], user: str) -> set[str]:
    log = world["impressions"]
    return set(log.filter((pl.col(C.USER_ID) == user) & pl.col(C.CLICKED))[C.ITEM_ID].to_list())


def get(c: TestClient, user: str = USER, **params: Any) -> dict[str, Any]:
    r = c.get(f"/v1/users/{user}/recommendations", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_rules_hold_and_k_items_come_back(client: TestClient, shop) -> None:
    items = shop[1]["items"]
    category = dict(zip(items[C.ITEM_ID], items[C.CATEGORY], strict=True))
    plain = get(client, k=10)
    assert plain["fallback"] is None and not plain["degraded"] and len(plain["items"]) == 10
    assert all(it["reason"] for it in plain["items"])
    assert any(it["reason"].startswith("because you clicked") for it in plain["items"])
    banned = Counter(it["category"] for it in plain["items"]).most_common(1)[0][0]
    out = get(client, k=10, exclude_categories=banned)
    assert len(out["items"]) == 10 and banned not in {it["category"] for it in out["items"]}
    assert all(it["reason"] for it in out["items"])
    capped = get(client, k=8, max_per_category=2)  # 4 categories: 8 eligible slots
    assert len(capped["items"]) == 8 and max(Counter(it["category"] for it in capped["items"]).values()) <= 2
    diverse = get(client, k=10, diversity=0.7)  # seeded shop: 3 categories against the ranker's 2
    assert len({it["category"] for it in diverse["items"]}) > len({it["category"] for it in plain["items"]})
    assert all(it["reason"] for it in diverse["items"] + capped["items"])
    # price bound + category list + exclusions through POST: exactly the eligible items, all of them
    cheap = float(items[C.PRICE].sort()[12])
    cats = sorted(set(category.values()) - {banned})[:2]
    excluded = [plain["items"][0]["item_id"]]
    r = client.post("/v1/recommendations", json={"user_id": USER, "k": 50, "max_price": cheap,
                                                  "categories": ",".join(cats), "exclude": excluded})
    assert r.status_code == 200, r.text
    eligible = set(items.filter((pl.col(C.PRICE) <= cheap) & pl.col(C.CATEGORY).is_in(cats))[C.ITEM_ID]) \
        - seen_by(shop[1], USER) - set(excluded)
    assert eligible and {it["item_id"] for it in r.json()["items"]} == eligible


def test_the_popularity_paths_obey_the_same_rules(client: TestClient) -> None:
    cold = get(client, "never-seen", k=6, max_per_category=1, exclude_categories="hats")
    assert cold["fallback"] == "popular" and all(it["reason"] == "popular now" for it in cold["items"])
    cats = [it["category"] for it in cold["items"]]
    assert len(cats) == 3 and len(set(cats)) == 3 and "hats" not in cats  # 4 categories less hats, one each
    client.app.state.service.state.features.down = True  # the online store is unreachable: degraded
    degraded = get(client, k=5, categories="bags", max_price=60)
    assert degraded["degraded"] and degraded["fallback"] == "popular" and len(degraded["items"]) == 5
    assert {it["category"] for it in degraded["items"]} == {"bags"}
    assert all(it["reason"] == "popular now" for it in degraded["items"])


@pytest.mark.parametrize(("params", "field"), [
    ({"diversity": 1.5}, "diversity"), ({"max_per_category": 0}, "max_per_category"),
    ({"min_price": -1}, "min_price"), ({"max_price": "cheap"}, "max_price"),
    ({"min_price": 50, "max_price": 10}, "min_price"), ({"exclude": "i1,no/slash"}, "exclude"),
])
def test_bad_rules_are_422_naming_the_field(client: TestClient, params: dict, field: str) -> None:
    r = client.get(f"/v1/users/{USER}/recommendations", params=params)
    assert r.status_code == 422 and field in r.json()["message"], r.text
    body = {"user_id": USER, **params}
    r = client.post("/v1/recommendations", json=body)
    assert r.status_code == 422 and field in r.json()["message"], r.text


def test_unavailable_items_never_come_back(client: TestClient) -> None:
    first = [it["item_id"] for it in get(client, k=5)["items"]]
    popular = get(client, "never-seen", k=3)["items"][0]["item_id"]
    gone = [*first[:2], popular]
    body = {"item_ids": [*gone, "no-such-item"], "available": False}
    assert client.post("/v1/admin/availability", json=body).status_code == 401
    assert client.post("/v1/admin/availability", json=body, headers={"X-API-Key": "nope"}).status_code == 403
    r = client.post("/v1/admin/availability", json=body, headers={"X-API-Key": API_KEY})
    assert r.status_code == 200, r.text
    assert r.json() == {"matched": 3, "changed": 3, "unknown": ["no-such-item"]}
    again = client.post("/v1/admin/availability", json=body, headers={"X-API-Key": API_KEY}).json()
    assert again["changed"] == 0  # already out of stock

    def shown() -> set[str]:
        return {it["item_id"] for it in get(client, k=5)["items"]} | \
            {it["item_id"] for it in get(client, "never-seen", k=5)["items"]}

    assert len(get(client, k=5)["items"]) == 5 and not set(gone) & shown()
    assert client.post("/v1/admin/reload", headers={"X-API-Key": API_KEY}).status_code == 200
    assert not set(gone) & shown()  # a reload keeps what the admin set
    assert "recsys_availability_changes_total 3.0" in client.get("/metrics").text
    client.post("/v1/admin/availability", json={"item_ids": gone, "available": True},
                headers={"X-API-Key": API_KEY})
    assert [it["item_id"] for it in get(client, k=5)["items"]] == first
