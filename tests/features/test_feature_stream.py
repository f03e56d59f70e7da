"""The stream path of the user features against the batch job (training/serving skew), and
through Feast's push API into real online stores (sqlite, and a real redis-server)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from features.jobs import BehaviourParams, build_features, materialize, user_behaviour
from features.online import OnlineFeatures
from features.stream import UserEventBuffer
from recsys.config import load_settings
from recsys.data import columns as C
from recsys.data.tables import save_table
from recsys.workspace import Workspace
from serving.stream import UserFeatureStream

TS = C.EVENT_TIMESTAMP


def replay(buffer: UserEventBuffer, log: pl.DataFrame, chunk: int) -> pl.DataFrame:
    """Feed the log in time order, `chunk` events at a time; every row the stream produced,
    keeping each user's last row per snapshot stamp (what the online store holds at the end of
    that day)."""
    log = log.sort(TS)
    rows = [buffer.add(log.slice(i, chunk)) for i in range(0, log.height, chunk)]
    return pl.concat(rows).unique([C.USER_ID, TS], keep="last", maintain_order=True).sort(C.USER_ID, TS)


def test_stream_replay_matches_the_batch_job(world_factory) -> None:
    """Every row the stream pushed, one event at a time, equals the batch job's snapshot of that
    user at that stamp.

    45 days (past the 30-day window, so the buffer prunes) and 3 last clicks (so old clicks
    are dropped from memory): pruning must not change a value."""
    world = world_factory(n_users=6, n_impressions=900, days=45, seed=4)
    params = BehaviourParams(prior_clicks=1.0, prior_impressions=20.0, last_clicked=3)
    log, items = world["impressions"], world["items"]
    buffer = UserEventBuffer(items.select(C.ITEM_ID, C.CATEGORY), params)
    streamed = replay(buffer, log, 1)
    batch = user_behaviour(log, items, params)
    expected = batch.join(streamed.select(C.USER_ID, TS), on=[C.USER_ID, TS], how="semi").sort(C.USER_ID, TS)
    assert streamed.height == expected.height > 6 * 30  # a row per user and event day
    assert_frame_equal(streamed, expected)
    # memory follows the recent window (30 days and 3 clicks a user), not the log (45 days)
    recent = log.filter(pl.col(TS) >= pl.col(TS).max().over(C.USER_ID).dt.truncate("1d") - timedelta(days=29))
    assert buffer.events <= recent.height + 6 * 3 < log.height


def test_stream_batches_give_the_batch_job_over_the_log_so_far(world_factory) -> None:
    """Events arriving in batches (as the stream takes them under load): the rows after each
    batch are the batch job's rows over the log up to that batch."""
    world = world_factory(n_users=8, n_impressions=2000, days=40, seed=5)
    params = BehaviourParams(last_clicked=5)
    log, items = world["impressions"].sort(TS), world["items"]
    buffer = UserEventBuffer(items, params)
    for end in range(250, log.height + 1, 250):
        rows = buffer.add(log.slice(end - 250, 250))
        batch = user_behaviour(log.head(end), items, params)
        expected = batch.join(rows.select(C.USER_ID, TS), on=[C.USER_ID, TS], how="semi").sort(C.USER_ID)
        assert rows[C.USER_ID].n_unique() == rows.height == expected.height
        assert_frame_equal(rows.sort(C.USER_ID), expected)


def test_seeded_buffer_continues_where_the_log_ends(world_factory) -> None:
    """A buffer seeded from the first part of a log (what a starting server does) and fed the
    rest gives the batch job's values; events seen twice (seed and stream) count once."""
    world = world_factory(n_users=5, n_impressions=1000, days=40, seed=9)
    log, items = world["impressions"].sort(TS), world["items"]
    buffer = UserEventBuffer(items, BehaviourParams(last_clicked=4))
    head, tail = log.slice(0, 800), log.slice(800)
    buffer.seed(head)
    streamed = replay(buffer, pl.concat([log.slice(790, 10), tail]), 1)  # 10 already in the seed
    batch = user_behaviour(log, items, BehaviourParams(last_clicked=4))
    expected = batch.join(streamed.select(C.USER_ID, TS), on=[C.USER_ID, TS], how="semi").sort(C.USER_ID, TS)
    assert_frame_equal(streamed, expected)


def _stream_into_store(settings, world, start) -> None:
    """Build and materialize the batch features up to day 5, stream the rest of the log through
    a real `UserFeatureStream` (Feast push), and compare the online rows with the batch job run
    over the whole log."""
    ws = Workspace.at(settings.home)
    log = world["impressions"].sort(TS)
    cut = start.replace(day=start.day + 5)
    head = log.filter(pl.col(TS) < cut)
    for name, df in {**world, "impressions": head}.items():
        save_table(ws, name, df)
    build_features(settings, ws)
    materialize(settings, ws, track=False)
    stream = UserFeatureStream(settings)
    try:
        assert stream.wait_ready(120) and stream.stats.last_error is None
        assert stream.stats.seeded_events > 0
        tail = log.filter(pl.col(TS) >= cut)
        for i in range(0, tail.height, 50):
            stream.submit(tail.slice(i, 50).to_dicts())
        assert stream.flush(120)
        assert stream.stats.failures == 0 and stream.stats.pushed_rows > 0
    finally:
        stream.close()
    batch = user_behaviour(log, world["items"], BehaviourParams.from_settings(settings))
    online = OnlineFeatures(settings)
    users = tail[C.USER_ID].unique().sort().to_list()
    last = batch.sort(TS).group_by(C.USER_ID).agg(pl.all().last()).sort(C.USER_ID)
    for user in users:
        got = online.user(user)
        want = last.filter(pl.col(C.USER_ID) == user).row(0, named=True)
        for name, value in want.items():
            if name in (C.USER_ID, TS):
                continue
            if isinstance(value, float):
                assert got[f"user_behaviour__{name}"] == pytest.approx(value), (user, name)
            else:
                assert got[f"user_behaviour__{name}"] == value, (user, name)


def test_stream_pushes_batch_values_into_sqlite(settings, world, start) -> None:
    _stream_into_store(settings, world, start)


@pytest.mark.integration
def test_stream_pushes_batch_values_into_redis(redis_server, home, world, start) -> None:
    settings = load_settings(
        **{"home": str(home), "features.online_store": "redis", "features.redis_url": redis_server.url}
    )
    _stream_into_store(settings, world, start)


def test_stream_registers_its_push_source_on_an_older_registry(settings, stored_world) -> None:
    """A registry applied before streaming (no push source) gets it when the stream opens."""
    from feast import FeatureView

    from features.definitions import USER_BEHAVIOUR, build_definitions
    from features.store import ensure_sources, feature_store

    ws = Workspace.at(settings.home)
    ensure_sources(ws)
    defs = build_definitions(ws.feature_sources_dir)
    old = defs.views[USER_BEHAVIOUR]
    plain = FeatureView(name=old.name, entities=[defs.user], ttl=old.ttl, schema=old.schema,
                        source=old.batch_source, online=True)
    store = feature_store(settings)
    store.apply([defs.user, defs.item, plain])
    assert store.get_feature_view(USER_BEHAVIOUR).stream_source is None
    stream = UserFeatureStream(settings, seed=False)
    try:
        assert stream.wait_ready(120) and stream.stats.last_error is None
        stream.submit([{C.REQUEST_ID: "r", C.POSITION: 0, C.USER_ID: "u99", C.ITEM_ID: "i001",
                        TS: datetime.now(UTC), C.CLICKED: True}])
        assert stream.flush(60) and stream.stats.pushed_rows == 1
    finally:
        stream.close()
    assert OnlineFeatures(settings).user("u99")["user_behaviour__last_clicked_items"] == ["i001"]


@pytest.mark.integration
def test_rows_pushed_while_redis_is_down_arrive_when_it_is_back(redis_server, home, stored_world) -> None:
    """A push that fails (Redis killed) is kept and retried; the event intake never waits on it."""
    settings = load_settings(
        **{"home": str(home), "features.online_store": "redis", "features.redis_url": redis_server.url}
    )
    build_features(settings, Workspace.at(settings.home))
    stream = UserFeatureStream(settings, retry_seconds=0.1, seed=False)
    try:
        assert stream.wait_ready(120) and stream.stats.last_error is None
        redis_server.stop()
        stream.submit([{C.REQUEST_ID: "r1", C.POSITION: 0, C.USER_ID: "u01", C.ITEM_ID: "i007",
                        TS: datetime.now(UTC), C.CLICKED: True}])
        assert stream.flush(60)  # computed and tried: the push failed
        assert stream.stats.failures >= 1 and stream.stats.pushed_rows == 0
        redis_server.start()  # same port, empty (no persistence)
        deadline = time.monotonic() + 60
        while stream.stats.pushed_rows == 0:
            assert time.monotonic() < deadline, stream.stats
            time.sleep(0.05)
    finally:
        stream.close()
    assert OnlineFeatures(settings).user("u01")["user_behaviour__last_clicked_items"] == ["i007"]


def test_an_item_imported_while_streaming_gets_its_category(settings, stored_world) -> None:
    """The stream reads the items table again when it is rewritten, so a new item's clicks count
    under its category (as the batch job counts them), not under 'unknown'."""
    ws = Workspace.at(settings.home)
    build_features(settings, ws)
    stream = UserFeatureStream(settings, seed=False)

    def click(item: str, n: int) -> list[str]:
        stream.submit([{C.REQUEST_ID: f"r{n}", C.POSITION: 0, C.USER_ID: "u77", C.ITEM_ID: item,
                        TS: datetime.now(UTC), C.CLICKED: True}])
        assert stream.flush(60) and stream.stats.failures == 0
        return OnlineFeatures(settings).user("u77")["user_behaviour__click_categories_30d"]

    try:
        assert stream.wait_ready(120)
        assert click("new-1", 1) == ["unknown"]
        items = stored_world["items"]
        new = items.head(1).with_columns(pl.lit("new-1").alias(C.ITEM_ID), pl.lit("kites").alias(C.CATEGORY))
        save_table(ws, "items", pl.concat([items, new]))
        assert click("new-1", 2) == ["kites"]  # both clicks, now under the item's category
    finally:
        stream.close()
