"""POST /v1/events: batches in the impressions contract, bounded queue, nothing lost on shutdown."""

from __future__ import annotations

import polars as pl
from fastapi.testclient import TestClient
from serving_helpers import make_settings, wait_ready

from recsys.data import columns as C
from recsys.data.contracts import validate_impressions
from recsys.workspace import Workspace
from serving.app import create_app
from serving.events import COLUMNS, EventWriter, QueueFull, read_events


def _events(n: int, offset: int = 0) -> list[dict]:
    return [{"request_id": f"req{(offset + i) // 10}", "user_id": "u1",
             "item_id": f"i{(offset + i) % 40:03d}",
             "position": (offset + i) % 10, "clicked": i % 7 == 0, "propensity": 1.0, "policy": "ranker/v1"}
            for i in range(n)]


def test_every_accepted_event_is_written_on_shutdown(world: Workspace, loader) -> None:
    settings = make_settings(world.root, **{"serving.event_batch": 64, "serving.event_flush_seconds": 30.0})
    sent = 0
    with TestClient(create_app(settings, loader=loader)) as c:
        wait_ready(c)
        for b in range(25):
            r = c.post("/v1/events", json={"events": _events(37, offset=b * 37)})
            assert r.status_code == 202 and r.json() == {"accepted": 37}
            sent += 37
    # the flush interval is 30 s: whatever was not a full batch was written by the shutdown
    df = read_events(world.events_dir)
    assert df.height == sent
    files = sorted(world.events_dir.glob("impressions-*.parquet"))
    assert len(files) >= sent // 64 and not list(world.events_dir.glob(".*"))  # no temp files left
    checked = validate_impressions(df, "events")
    assert checked.bad.height == 0 and checked.good.height == sent
    assert df.schema[C.EVENT_TIMESTAMP] == pl.Datetime("us", "UTC")
    assert df[C.POLICY].unique().to_list() == ["ranker/v1"]


def test_events_are_validated(client: TestClient) -> None:
    bad = _events(1)
    bad[0]["propensity"] = 0
    assert client.post("/v1/events", json={"events": bad}).status_code == 422
    assert client.post("/v1/events", json={"events": []}).status_code == 422
    extra = _events(1)
    extra[0]["colour"] = "red"
    r = client.post("/v1/events", json={"events": extra})
    assert r.status_code == 422 and "colour" in r.json()["message"]


def test_full_queue_refuses_whole_batches(tmp_path) -> None:
    writer = EventWriter(tmp_path, capacity=10, batch=1000, flush_seconds=60)
    rows = [{**dict.fromkeys(COLUMNS), C.REQUEST_ID: "r", C.USER_ID: "u", C.ITEM_ID: f"i{i}", C.POSITION: i,
             C.EVENT_TIMESTAMP: None, C.CLICKED: False, C.PROPENSITY: None, C.POLICY: "p"} for i in range(10)]
    import datetime as dt

    for r in rows:
        r[C.EVENT_TIMESTAMP] = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    assert writer.submit(rows[:6]) == 6
    try:
        writer.submit(rows[:6])
        raise AssertionError("expected QueueFull")
    except QueueFull:
        pass
    assert writer.submit(rows[6:]) == 4
    writer.close()
    assert read_events(tmp_path).height == 10


def test_queue_full_is_503_with_retry_after(world: Workspace, loader) -> None:
    settings = make_settings(world.root, **{"serving.event_queue": 5, "serving.event_flush_seconds": 30.0})
    with TestClient(create_app(settings, loader=loader)) as c:
        wait_ready(c)
        assert c.post("/v1/events", json={"events": _events(4)}).status_code == 202
        r = c.post("/v1/events", json={"events": _events(4)})
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "full" in r.json()["message"]
    assert read_events(world.events_dir).height == 4
