"""The direct user read (`features.online.UserRowReader`) returns what Feast's
`get_online_features` returns, on the sqlite store and on a real Redis, for every user of a small
world, unknown users, and rows written by a push (the stream's path); and it fails the way the
Feast read fails (not applied, store missing, corrupted, down)."""

from __future__ import annotations

from datetime import timedelta

import polars as pl
import pytest

from features.definitions import USER_BEHAVIOUR
from features.jobs import build_features, materialize
from features.online import OnlineFeatures
from features.store import FeatureStoreError, FeatureStoreUnavailable
from recsys.config import load_settings
from recsys.data.tables import save_table
from recsys.workspace import Workspace

pytestmark = pytest.mark.integration


def feast_user(online: OnlineFeatures, user_id: str) -> dict:
    """The reference: one `get_online_features` call, as the reader used to make it."""
    out = online.store.get_online_features(features=online.user_refs, entity_rows=[{"user_id": user_id}],
                                           full_feature_names=True).to_dict()
    return {k: v[0] for k, v in out.items() if k != "user_id"}


def assert_same(a: dict, b: dict) -> None:
    """Equal values of equal types (an int is not a float, a list of floats stays one); Feast's
    order of the keys varies from call to call."""
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key] == b[key], key
        assert type(a[key]) is type(b[key]), (key, a[key], b[key])
        if isinstance(a[key], list):
            assert [type(x) for x in a[key]] == [type(x) for x in b[key]], key


def push_rows(settings, ws: Workspace, users: list[str]) -> None:
    """Rows written through the view's push source, as serving's stream writes them: a
    new user, and a known one whose lists are empty and whose last click is unknown."""
    from feast.data_source import PushMode

    from features.definitions import USER_PUSH_SOURCE
    from features.store import feature_store

    latest = (pl.read_parquet(ws.feature_sources_dir / f"{USER_BEHAVIOUR}.parquet")
              .sort("event_timestamp").group_by("user_id").last())
    rows = latest.filter(pl.col("user_id") == users[0]).with_columns(
        pl.lit("pushed-user").alias("user_id"), pl.col("event_timestamp") + timedelta(days=30))
    rows = pl.concat([rows, latest.filter(pl.col("user_id") == users[1]).with_columns(
        pl.col("event_timestamp") + timedelta(days=30),
        pl.lit(None, pl.Float64).alias("days_since_last_click"),
        pl.lit([], pl.List(pl.String)).alias("last_clicked_items"))])
    feature_store(settings).push(USER_PUSH_SOURCE, rows.to_pandas(), to=PushMode.ONLINE)


def check_every_user(settings, users: list[str], kind: str) -> None:
    direct, by_feast = OnlineFeatures(settings), OnlineFeatures(settings, direct=False)
    for user in [*users, "nobody", "pushed-user", "__readiness_probe__"]:
        got = direct.user(user)
        assert_same(got, feast_user(direct, user))
        assert_same(got, by_feast.user(user))
    assert direct._user_reader is not None and direct._user_reader.kind == kind
    assert by_feast._user_reader is None
    assert all(v is None for v in direct.user("nobody").values())
    known = direct.user(users[3])
    assert isinstance(known["user_behaviour__impressions_30d"], int)
    assert isinstance(known["user_behaviour__last_clicked_items"], list)


@pytest.fixture
def built(home, world):
    settings = load_settings(home=str(home))
    ws = Workspace.at(settings.home)
    for name, df in world.items():
        save_table(ws, name, df)
    build_features(settings, ws)
    return settings, ws, world


def test_sqlite_reads_equal_feast(built, start) -> None:
    settings, ws, world = built
    materialize(settings, ws, end=start + timedelta(days=6), track=False)
    users = world["users"]["user_id"].to_list()
    check_every_user(settings, users, "sqlite")
    push_rows(settings, ws, users)
    check_every_user(settings, users, "sqlite")
    assert OnlineFeatures(settings).user("pushed-user")["user_behaviour__impressions_30d"] is not None
    emptied = OnlineFeatures(settings).user(users[1])
    assert emptied["user_behaviour__days_since_last_click"] is None
    assert emptied["user_behaviour__last_clicked_items"] == []


def test_redis_reads_equal_feast(redis_server, home, world, start) -> None:
    settings = load_settings(**{"home": str(home), "features.online_store": "redis",
                                "features.redis_url": redis_server.url})
    ws = Workspace.at(settings.home)
    for name, df in world.items():
        save_table(ws, name, df)
    build_features(settings, ws)
    materialize(settings, ws, end=start + timedelta(days=6), track=False)
    users = world["users"]["user_id"].to_list()
    check_every_user(settings, users, "redis")
    push_rows(settings, ws, users)
    check_every_user(settings, users, "redis")
    online = OnlineFeatures(settings)
    assert online.user(users[0])["user_behaviour__impressions_7d"] is not None
    redis_server.stop()
    with pytest.raises(FeatureStoreUnavailable, match=f"redis at {redis_server.url}"):
        online.user(users[0])
    with pytest.raises(FeatureStoreUnavailable, match="redis"):
        OnlineFeatures(settings).probe()
    redis_server.start()  # the same client reads again once the server is back (empty: no persistence)
    assert all(v is None for v in online.user(users[0]).values())


def test_failures_read_as_feast_reads_fail(built) -> None:
    settings, ws, world = built
    user = world["users"]["user_id"][0]
    before = OnlineFeatures(settings)  # applied by the build, nothing materialized: unknown users
    assert all(v is None for v in before.user(user).values())
    materialize(settings, ws, track=False)
    online = OnlineFeatures(settings)
    assert online.user(user)["user_behaviour__clicks_30d"] is not None
    db = ws.feast_dir / "online.db"
    good = db.read_bytes()
    db.write_bytes(b"this is not a sqlite database " * 200)  # in place: the open connection reads it
    with pytest.raises(FeatureStoreUnavailable, match="online feature store unavailable"):
        online.user(user)
    db.unlink()
    fresh = OnlineFeatures(settings)
    with pytest.raises(FeatureStoreUnavailable):
        fresh.probe()
    assert not db.exists(), "a read never creates an empty store"
    db.write_bytes(good)
    assert fresh.user(user) == OnlineFeatures(settings, direct=False).user(user)
    assert online.replaced()  # a new file: the check reopens the old client
    assert online.reopened().user(user) == fresh.user(user)


def test_before_apply_says_what_to_run(settings) -> None:
    with pytest.raises(FeatureStoreError, match="recsys features build"):
        OnlineFeatures(settings).user("u01")
    with pytest.raises(FeatureStoreError, match="recsys features build"):
        OnlineFeatures(settings).probe()
