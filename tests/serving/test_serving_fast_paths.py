"""The request path's shortcuts give the answers of the code they replace, on real trained models
(the benchmark's world builder at a small size: Feast features, a two-tower with user features,
EASE and the LightGBM ranker):

- the numpy user tower (`recsys.ranking.candidates.UserTower`) against the model's torch `user_vectors`;
- EASE's candidates and scores over its own items against the whole-catalogue arrays, reasons for
  all items at once against one lookup per item (`Recommender.fast = False` runs the references);
- the direct online-store read against Feast's `get_online_features` under the recommender;
- exploration's marginals of the shown items against the whole pool's.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import numpy as np
import polars as pl
import pytest

from recsys.config import Settings
from recsys.data import columns as C
from recsys.rules import Rules

pytestmark = pytest.mark.integration  # Feast, MLflow, LightGBM and torch, for real
SIZES = {"items": 300, "users": 200, "impressions": 8_000}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, serving_bench: ModuleType) -> Settings:
    home = tmp_path_factory.mktemp("fast-paths") / "ws"
    serving_bench.build_world(home, **SIZES)
    return serving_bench.bench_settings(home, *SIZES.values())


@pytest.fixture(scope="module")
def state(trained: Settings):  # noqa: ANN201
    from serving.state import load_state

    state = load_state(trained)
    assert state.ready, state.problems
    return state


def users_with_clicks(settings: Settings, n: int = 60) -> list[str]:
    log = pl.read_parquet(Path(settings.home) / "data" / "impressions.parquet",
                          columns=[C.USER_ID, C.CLICKED])
    return log.filter(pl.col(C.CLICKED))[C.USER_ID].unique().sort().to_list()[:n]


def test_the_numpy_user_tower_is_the_models(state, trained: Settings) -> None:
    rec = state.recommender
    assert rec._tower is not None, "a two-tower with a Linear-ReLU-Linear user tower gets the numpy form"
    for user in [*users_with_clicks(trained, 40), "never-seen"]:
        feats = {k.removeprefix("user_behaviour__"): v for k, v in state.features.user(user).items()}
        hist = rec.history_rows(feats, None)
        scalars = {k: v for k, v in feats.items() if isinstance(v, int | float)}
        uf = pl.DataFrame([scalars]) if scalars else None
        want = rec.retrieval.user_vectors([user], hist, uf)[0]
        got = rec._tower.vector(user, hist[0], scalars)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


@pytest.mark.parametrize("rules", [
    Rules(),
    Rules(exclude_categories=frozenset({"cushion"}), max_price=80.0),
    Rules(categories=frozenset({"plate", "ring"})),
    Rules(max_per_category=2, diversity=0.5),
], ids=["none", "filters", "categories", "caps"])
def test_fast_recommendations_equal_the_reference(state, trained: Settings, rules: Rules) -> None:
    rec = state.recommender
    assert rec._ease_arrays is not None, "the world's ranker is trained beside EASE"
    now = datetime.now(UTC)
    for user in users_with_clicks(trained):
        feats = state.features.user(user)
        exclude = set(feats.get("user_behaviour__last_clicked_items") or [])  # seen ones again
        kw = dict(user_features=feats, as_of=now, rules=rules, exclude=exclude)
        rec.fast = True
        fast = rec.recommend(user, 30, **kw)
        rec.fast = False
        try:
            ref = rec.recommend(user, 30, **kw)
        finally:
            rec.fast = True
        assert [i for i, _, _ in fast.items] == [i for i, _, _ in ref.items], user
        np.testing.assert_allclose([s for _, s, _ in fast.items], [s for _, s, _ in ref.items],
                                   rtol=0, atol=1e-5)
        assert fast.reasons == ref.reasons and fast.candidates == ref.candidates
        assert fast.fallback == ref.fallback


def test_direct_user_reads_rank_as_feast_reads(state, trained: Settings) -> None:
    from features.online import OnlineFeatures

    by_feast = OnlineFeatures(trained, direct=False)
    assert state.features._user_reader is None or state.features._user_reader.kind == "sqlite"
    now = datetime.now(UTC)
    for user in users_with_clicks(trained, 30):
        direct, feast = state.features.user(user), by_feast.user(user)
        assert direct == feast
        a = state.rank(user, 30, direct, Rules(), now)
        b = state.rank(user, 30, feast, Rules(), now)
        assert a.items == b.items
    assert state.features._user_reader.kind == "sqlite"


def test_served_propensities_are_the_whole_pools_marginals(state, trained: Settings) -> None:
    from recsys.evaluation import plackett_luce as PL
    from serving.exploration import choose_slate

    now = datetime.now(UTC)
    temperature = trained.serving.temperature
    for n, user in enumerate(users_with_clicks(trained, 30)):
        ranked = state.rank(user, 30, state.features.user(user), Rules(), now).items
        scores = np.array([s for _, s in ranked])
        full = PL.marginals(scores[None, :], temperature, 10)[0]
        slate = choose_slate(ranked, 10, "softmax", temperature, np.random.default_rng(n))
        position = {item: j for j, (item, _) in enumerate(ranked)}
        for rank, (item, _, p, every) in enumerate(slate):
            np.testing.assert_allclose(every, full[position[item]], rtol=0, atol=1e-9)
            assert p == every[rank]
