"""The request path without HTTP: `RecommendService` called directly over the serving world's
state (doubles that implement `serving.protocols`), its degradations named and counted."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from serving_helpers import Loader, RecentClickFeatures, make_settings

from recsys.config import Settings
from recsys.rules import RuleError
from recsys.workspace import Workspace
from serving.schemas import RecommendationRequest, Recommendations
from serving.service import NotFound, NotReady, RecommendService
from serving.state import ServingState, load_catalogue


def started(settings: Settings, loader: Loader) -> RecommendService:
    service = RecommendService(settings, loader)
    asyncio.run(service.load_initial())
    return service


@pytest.fixture
def service(world: Workspace, loader: Loader) -> RecommendService:
    return started(make_settings(world.root), loader)


def ask(service: RecommendService, user: str = "u1", **fields: Any) -> Recommendations:
    return service.recommend(RecommendationRequest(user_id=user, **fields))


def counted(service: RecommendService, name: str, **labels: str) -> float:
    value = service.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


def test_nothing_is_answered_before_the_state_loads(world: Workspace, loader: Loader) -> None:
    service = RecommendService(make_settings(world.root), loader)
    with pytest.raises(NotReady, match="loading"):
        ask(service)
    assert asyncio.run(service.readiness()).reasons == ("loading",)


def test_a_known_user_gets_the_recommenders_ranking(service: RecommendService) -> None:
    body = ask(service, k=5)
    assert [it.rank for it in body.items] == [1, 2, 3, 4, 5]
    assert all(it.propensity == 1.0 and it.reason.startswith("because you clicked") for it in body.items)
    scores = [it.score for it in body.items]
    assert scores == sorted(scores, reverse=True)
    assert (body.fallback, body.degraded, body.policy) == (None, False, "ranker/v1+retrieval/v1:none")
    assert {"user_features", "rank", "explore", "total"} <= set(body.timings_ms)
    assert counted(service, "recsys_stage_seconds_count", stage="user_features") == 1
    recent = set(service.state.catalogue.recent["u1"])
    assert not recent & {it.item_id for it in body.items}, "recent clicks are not recommended"


def test_an_unknown_user_gets_popularity_counted_as_a_fallback(service: RecommendService) -> None:
    body = ask(service, "stranger", k=4, category="hats")
    assert body.fallback == "popular" and body.policy == "popular" and not body.degraded
    assert len(body.items) == 4 and {it.category for it in body.items} == {"hats"}
    assert all(it.reason == "popular now" for it in body.items)
    assert counted(service, "recsys_fallbacks_total", kind="popular") == 1


def test_a_store_that_cannot_be_read_degrades(service: RecommendService, loader: Loader) -> None:
    loader.features.down = True
    body = ask(service, k=5)
    assert body.degraded and body.fallback == "popular" and len(body.items) == 5
    assert not set(loader.features.recent["u1"]) & {it.item_id for it in body.items}
    assert counted(service, "recsys_degraded_total", reason="feature_store") == 1
    ready = asyncio.run(service.readiness())
    assert not ready.ready and any(r.startswith("feature store: ConnectionError") for r in ready.reasons)


def test_a_failing_ranker_degrades_instead_of_failing(service: RecommendService) -> None:
    body = ask(service, "explode", k=3)
    assert body.degraded and body.fallback == "popular" and len(body.items) == 3
    assert counted(service, "recsys_degraded_total", reason="ranker_error") == 1


def test_without_models_the_catalogue_answers(world: Workspace) -> None:
    def catalogue_only(settings: Settings, previous: ServingState | None = None) -> ServingState:
        return ServingState(load_catalogue(world), None, RecentClickFeatures(world),
                            {"ranker": None, "retrieval": None},
                            ("models (@champion): LookupError: nothing registered",))

    service = started(make_settings(world.root), catalogue_only)
    body = ask(service, k=3, exclude=["i000"])
    assert body.degraded and body.fallback == "popular" and len(body.items) == 3
    assert "i000" not in {it.item_id for it in body.items}
    assert counted(service, "recsys_degraded_total", reason="models") == 1


def test_exploration_records_propensities_below_one(world: Workspace, loader: Loader) -> None:
    service = started(make_settings(world.root, **{"serving.exploration": "softmax",
                                                   "serving.temperature": 2.0}), loader)
    bodies = [ask(service, k=5) for _ in range(10)]
    props = [it.propensity for b in bodies for it in b.items]
    assert all(0 < p <= 1 for p in props) and min(props) < 1.0
    assert all(b.policy.endswith(":softmax") for b in bodies)


def test_rules_the_schema_let_through_are_refused_by_name(service: RecommendService) -> None:
    unchecked = RecommendationRequest.model_construct(user_id="u1", k=5, diversity=2.0)
    with pytest.raises(RuleError, match="diversity"):
        service.recommend(unchecked)


def test_similar_items_and_images(service: RecommendService) -> None:
    found = service.similar("i001", 5)
    assert len(found.items) == 5 and "i001" not in {it.item_id for it in found.items}
    assert all(it.reason == "similar to Item 1" for it in found.items)
    with pytest.raises(NotFound):
        service.similar("nope", 5)
    assert service.image_path("i000").is_file()
    with pytest.raises(NotFound):
        service.image_path("i002")  # every third item has no image


def test_availability_holds_across_reloads(service: RecommendService) -> None:
    shown = [it.item_id for it in ask(service, "stranger", k=3).items]
    changed = asyncio.run(service.set_availability([shown[0], "no-such-item"], False))
    assert (changed.matched, changed.changed, changed.unknown) == (1, 1, ["no-such-item"])
    assert shown[0] not in {it.item_id for it in ask(service, "stranger", k=3).items}
    swapped, new = asyncio.run(service.reload())
    assert swapped and new.versions["ranker"] == "ranker/v2"
    assert shown[0] not in {it.item_id for it in ask(service, "stranger", k=3).items}
    assert ask(service).ranker_version == "ranker/v2"


def test_a_reload_that_loads_less_keeps_the_old_state(world: Workspace, loader: Loader) -> None:
    calls = {"n": 0}

    def second_fails(settings: Settings, previous: ServingState | None = None) -> ServingState:
        calls["n"] += 1
        if calls["n"] == 1:
            return loader(settings, previous)
        return ServingState(None, None, None, {"ranker": None, "retrieval": None}, ("catalogue: gone",))

    service = started(make_settings(world.root), second_fails)
    swapped, new = asyncio.run(service.reload())
    assert not swapped and new.problems == ("catalogue: gone",)
    assert service.state.ready and ask(service).ranker_version == "ranker/v1"
    assert counted(service, "recsys_reloads_total", outcome="kept_old") == 1


def test_the_store_check_reports_a_failing_store_and_its_return(service: RecommendService,
                                                                 loader: Loader) -> None:
    loader.features.down = True
    asyncio.run(service.check_store())
    assert not service.state.ready and service.state.problems[0].startswith("feature store: ")
    loader.features.down = False
    asyncio.run(service.check_store())
    assert service.state.ready and not ask(service).degraded
