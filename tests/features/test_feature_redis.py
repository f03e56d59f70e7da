"""The Redis online store against a real redis-server (started by the `redis_server` fixture)."""

from __future__ import annotations

from datetime import timedelta

import polars as pl
import pytest

from features.jobs import build_features, materialize
from features.online import OnlineFeatures
from features.store import FeatureStoreUnavailable
from features.training_set import build_training_set
from recsys.config import load_settings
from recsys.data.tables import save_table

pytestmark = pytest.mark.integration


@pytest.fixture
def redis_settings(redis_server, home, world):
    settings = load_settings(
        **{"home": str(home), "features.online_store": "redis", "features.redis_url": redis_server.url}
    )
    from recsys.workspace import Workspace

    ws = Workspace.at(settings.home)
    for name, df in world.items():
        save_table(ws, name, df)
    build_features(settings, ws)
    return settings, ws


def test_materialize_to_redis_and_read_back(redis_settings, start):
    settings, ws = redis_settings
    t = start + timedelta(days=4, hours=12)
    result = materialize(settings, ws, end=t)
    assert result.online_store.startswith("redis at 127.0.0.1:")
    online = OnlineFeatures(settings)
    offline = build_training_set(
        settings, pl.DataFrame({"user_id": ["u05"], "event_timestamp": [t]}), ["user_behaviour"]
    ).row(0, named=True)
    user = online.user("u05")
    assert user["user_behaviour__impressions_7d"] > 0
    assert user == {k: v for k, v in offline.items() if k.startswith("user_behaviour__")}
    items = online.items(["i004", "i009"])
    assert items["item_content__model_version"].to_list() == ["clip/v1", "clip/v1"]


def test_killed_redis_raises_feature_store_unavailable(redis_settings, redis_server):
    settings, ws = redis_settings
    materialize(settings, ws, track=False)
    online = OnlineFeatures(settings)
    assert online.user("u01")["user_behaviour__clicks_30d"] is not None
    online.items(["i001"])  # fills the item cache
    redis_server.stop()
    with pytest.raises(FeatureStoreUnavailable, match=f"redis at {redis_server.url}"):
        online.user("u01")
    # items keep being served from memory while the store is down
    assert online.items(["i001"]).height == 1
    with pytest.raises(FeatureStoreUnavailable, match="redis"):
        materialize(settings, ws, track=False)
