"""The HTTP API in process: recommendations, limits, errors, similar items, metrics, readiness."""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from serving_helpers import N_ITEMS, make_settings, wait_ready

from recsys.workspace import Workspace
from serving.app import create_app, parse_query
from serving.schemas import RecommendationQuery


def test_recommendations_carry_scores_ranks_propensities_and_versions(client: TestClient) -> None:
    r = client.get("/v1/users/u1/recommendations", params={"k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [it["rank"] for it in body["items"]] == [1, 2, 3, 4, 5]
    assert all(it["propensity"] == 1.0 for it in body["items"])
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert body["ranker_version"] == "ranker/v1" and body["retrieval_version"] == "retrieval/v1"
    assert body["fallback"] is None and body["degraded"] is False
    assert len(body["request_id"]) == 32 and body["policy"].endswith(":none")
    assert body["items"][0]["title"].startswith("Item ")
    assert "total" in body["timings_ms"]


def test_post_applies_exclusions_and_category(client: TestClient) -> None:
    first = client.get("/v1/users/u1/recommendations", params={"k": 3}).json()["items"][0]["item_id"]
    r = client.post("/v1/recommendations", json={"user_id": "u1", "k": 10, "exclude": [first],
                                                  "category": "bags", "timestamp": "2024-02-01T00:00:00Z"})
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert items and first not in {it["item_id"] for it in items}
    assert {it["category"] for it in items} == {"bags"}


def test_unknown_user_gets_popular_fallback(client: TestClient) -> None:
    body = client.get("/v1/users/stranger/recommendations", params={"k": 4, "category": "hats"}).json()
    assert body["fallback"] == "popular" and body["policy"] == "popular"
    assert len(body["items"]) == 4 and {it["category"] for it in body["items"]} == {"hats"}
    assert 'recsys_fallbacks_total{kind="popular"} 1.0' in client.get("/metrics").text


def test_feature_store_down_degrades_to_popularity(client: TestClient, loader) -> None:
    loader.features.down = True
    body = client.get("/v1/users/u1/recommendations", params={"k": 5}).json()
    assert body["degraded"] is True and body["fallback"] == "popular" and len(body["items"]) == 5
    recent = set(loader.features.recent["u1"])
    assert not recent & {it["item_id"] for it in body["items"]}, "seen items are filtered when degraded"
    assert 'recsys_degraded_total{reason="feature_store"} 1.0' in client.get("/metrics").text


def test_a_ranker_error_degrades_instead_of_failing(client: TestClient) -> None:
    body = client.get("/v1/users/explode/recommendations", params={"k": 3}).json()
    assert body["degraded"] is True and body["fallback"] == "popular" and len(body["items"]) == 3
    assert 'recsys_degraded_total{reason="ranker_error"} 1.0' in client.get("/metrics").text


def test_input_limits_answer_422_with_a_message(client: TestClient) -> None:
    for k in (0, 101, "x"):
        r = client.get("/v1/users/u1/recommendations", params={"k": k})
        assert r.status_code == 422 and r.json()["error"] == "invalid_request" and "k" in r.json()["message"]
    assert client.get("/v1/users/" + "a" * 65 + "/recommendations").status_code == 422
    assert client.get("/v1/users/bad%20id/recommendations").status_code == 422
    r = client.post("/v1/recommendations", json={"user_id": "u1", "k": 5, "surprise": 1})
    assert r.status_code == 422 and "surprise" in r.json()["message"]
    r = client.post("/v1/recommendations", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_bodies_over_the_cap_answer_413(client: TestClient) -> None:
    big = {"user_id": "u1", "k": 5, "exclude": ["i001"] * 20_000}
    r = client.post("/v1/recommendations", json=big)
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"


def test_unknown_route_is_json_404(client: TestClient) -> None:
    r = client.get("/v2/nothing")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_similar_items(client: TestClient) -> None:
    body = client.get("/v1/items/i001/similar", params={"k": 5}).json()
    ids = [it["item_id"] for it in body["items"]]
    assert len(ids) == 5 and "i001" not in ids
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert client.get("/v1/items/nope/similar").status_code == 404


def test_health_ready_metrics_docs(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["versions"]["ranker"] == "ranker/v1"
    client.get("/v1/users/u1/recommendations")
    text = client.get("/metrics").text
    route = "/v1/users/{user_id}/recommendations"
    assert f'recsys_http_requests_total{{method="GET",route="{route}",status="200"}}' in text
    assert 'recsys_stage_seconds_count{stage="user_features"}' in text
    assert 'recsys_model_info{ranker="ranker/v1",retrieval="retrieval/v1"} 1.0' in text
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/recommendations" in paths and "/v1/items/{item_id}/similar" in paths


def test_exploration_records_propensities(world: Workspace, loader) -> None:
    settings = make_settings(world.root, **{"serving.exploration": "softmax", "serving.temperature": 2.0})
    app = create_app(settings, loader=loader)
    with TestClient(app) as c:
        wait_ready(c)
        bodies = [c.get("/v1/users/u1/recommendations", params={"k": 5}).json() for _ in range(10)]
    props = [it["propensity"] for b in bodies for it in b["items"]]
    assert all(0 < p <= 1 for p in props) and min(props) < 1.0
    assert all(b["policy"].endswith(":softmax") for b in bodies)
    assert all(len(it["slot_propensities"]) == 5 for b in bodies for it in b["items"])
    assert len({tuple(it["item_id"] for it in b["items"]) for b in bodies}) > 1
    assert N_ITEMS > 5


def test_the_recommenders_answer_is_normalised() -> None:
    """`recsys.recommender.Recommendation` (item, score, rank) maps onto the response fields."""
    from recsys.recommender import Recommendation
    from serving.state import Ranked

    versions = {"ranker": "ranker/v3", "retrieval": "retrieval/v2"}
    rec = Recommendation([("i1", 0.9, 1), ("i2", 0.5, 2)], versions, {"retrieval": 0.001, "ranking": 0.002},
                         "popularity", 300)
    ranked = Ranked.of(rec, {"ranker": None, "retrieval": None})
    assert ranked.items == [("i1", 0.9), ("i2", 0.5)]
    assert ranked.fallback == "popular" and ranked.fallback_reason == "popularity"
    assert (ranked.ranker_version, ranked.retrieval_version) == ("ranker/v3", "retrieval/v2")
    assert ranked.timings == {"retrieval": 0.001, "ranking": 0.002}


QUERIES = [
    "", "k=5", "k=0", "k=101", "k=abc", "k=3&k=7", "categories=bags,hats&categories=toys", "categories=",
    "exclude_categories=hats&exclude=i1,i2&exclude=i3", "min_price=10&max_price=5", "min_price=-1",
    "max_price=nan", "max_per_category=2&diversity=0.7", "diversity=1.5", "category=bags&categories=bags",
    "category=", "exclude=bad%20id", "surprise=1&k=4", "exclude=" + ",".join(f"i{n}" for n in range(501)),
]


def test_the_query_is_read_as_fastapi_reads_a_query_model() -> None:
    """`parse_query` (the route reads its query itself) against FastAPI's own reading of an
    `Annotated[RecommendationQuery, Query()]` parameter: the same values, the same errors."""
    reference, ours = FastAPI(), FastAPI()

    @reference.get("/q")
    async def by_fastapi(params: Annotated[RecommendationQuery, Query()]) -> dict:
        return params.model_dump()

    @ours.get("/q")
    async def by_parse(request: Request) -> dict:
        return parse_query(request.query_params).model_dump()

    for app in (reference, ours):
        @app.exception_handler(RequestValidationError)
        async def errors(request: Request, exc: RequestValidationError) -> JSONResponse:
            return JSONResponse([{k: e[k] for k in ("loc", "msg", "type")} for e in exc.errors()], 422)

    with TestClient(reference) as a, TestClient(ours) as b:
        for query in QUERIES:
            want, got = a.get(f"/q?{query}"), b.get(f"/q?{query}")
            assert (got.status_code, got.json()) == (want.status_code, want.json()), query
    assert any(a.get(f"/q?{q}").status_code == 422 for q in QUERIES)


def test_the_recommendation_route_documents_its_query(client: TestClient) -> None:
    route = client.get("/openapi.json").json()["paths"]["/v1/users/{user_id}/recommendations"]
    params = route["get"]["parameters"]
    assert [p["name"] for p in params if p["in"] == "query"] == [
        "categories", "exclude_categories", "min_price", "max_price", "exclude", "max_per_category",
        "diversity", "k", "category"]
    r = client.get("/v1/users/u1/recommendations", params={"k": 0})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "k"]


def test_the_answer_is_the_json_fastapi_would_write() -> None:
    """The routes write their answer with pydantic (`as_json`) instead of through FastAPI's
    `response_model` round trip: the same document."""
    import json

    from fastapi.encoders import jsonable_encoder

    from serving.app import as_json
    from serving.schemas import Recommendations, RecommendedItem

    items = [RecommendedItem(item_id=f"i{n}", rank=n + 1, score=1.25 - n / 3, propensity=0.1 + n / 7,
                             slot_propensities=[1e-5, 0.5, 1 / 3], title="Ä title", reason="popular now")
             for n in range(3)]
    answer = Recommendations(request_id="r" * 32, user_id="u1", items=items, ranker_version="ranker/v1",
                             retrieval_version=None, policy="p:softmax", timings_ms={"total": 1.5})
    r = as_json(answer)
    assert r.media_type == "application/json"
    assert json.loads(r.body) == json.loads(JSONResponse(jsonable_encoder(answer)).body)
