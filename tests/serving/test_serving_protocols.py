"""The serving doubles have the real parts' shapes: the same Protocol methods with the same
parameters, and the same keys in a user's feature row. A test passing on a double then says
something about the real recommender and store."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest
from serving_helpers import RECENT_CLICKS, RecentClickFeatures, VectorRecommender

from features.definitions import USER_BEHAVIOUR
from features.online import OnlineFeatures, feature_refs
from recsys.recommender import Recommender
from recsys.workspace import Workspace
from serving.protocols import OnlineFeatureReader, RecommendationModel


def _methods(protocol: type) -> list[str]:
    return [n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")]


def _params(fn: Callable) -> list[inspect.Parameter]:
    return [p for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize(("protocol", "real", "double"), [
    (RecommendationModel, Recommender, VectorRecommender),
    (OnlineFeatureReader, OnlineFeatures, RecentClickFeatures),
])
def test_the_real_part_and_its_double_take_what_the_protocol_says(protocol: type, real: type,
                                                                  double: type) -> None:
    assert _methods(protocol)
    for name in _methods(protocol):
        want = [(p.name, p.kind, p.default) for p in _params(getattr(protocol, name))]
        for impl in (real, double):
            got = _params(getattr(impl, name))
            assert [(p.name, p.kind, p.default) for p in got[:len(want)]] == want, (impl, name)
            extra = got[len(want):]
            assert all(p.default is not inspect.Parameter.empty for p in extra), (impl, name, extra)


def test_the_feature_double_answers_the_real_stores_keys(world: Workspace) -> None:
    real_keys = {ref.replace(":", "__") for ref in feature_refs([USER_BEHAVIOUR])}
    row = RecentClickFeatures(world).user("u1")
    assert RECENT_CLICKS in real_keys and set(row) <= real_keys and row[RECENT_CLICKS]
    assert isinstance(RecentClickFeatures(world), OnlineFeatureReader)
    assert isinstance(VectorRecommender(world), RecommendationModel)
