"""Durable event intake: the write-ahead log (kill -9 of a real server loses nothing that was
answered 202), replay after a crash, duplicates by (request_id, position), implausible times."""

from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import polars as pl
import pytest
from fastapi.testclient import TestClient
from serving_helpers import build_world, make_settings

from recsys.data import columns as C
from serving import wal
from serving.app import create_app
from serving.events import COLUMNS, EventWriter, encode_rows, read_events, write_events_file
from serving.process import start_server


def _event(i: int, request: str = "req", clicked: bool = False) -> dict:
    return {"request_id": f"{request}{i // 10}", "user_id": f"u{i % 7}", "item_id": f"i{i % 40:03d}",
            "position": i % 10, "clicked": clicked, "propensity": 0.5, "policy": "test",
            "event_timestamp": (datetime(2024, 3, 1, tzinfo=UTC) + timedelta(seconds=i)).isoformat()}


def _row(i: int) -> dict:
    """A writer's row: every contract column, those the API does not take null (as serving builds it)."""
    e = _event(i)
    return {**dict.fromkeys(COLUMNS), **e, C.EVENT_TIMESTAMP: datetime.fromisoformat(e["event_timestamp"])}


@pytest.mark.integration
def test_kill_9_loses_no_acknowledged_event(tmp_path: Path) -> None:
    ws = build_world(tmp_path / "ws")
    # no parquet flush before the kill: every event is only in the write-ahead log
    settings = make_settings(ws.root, **{"serving.event_flush_seconds": 600.0,
                                         "serving.event_batch": 100_000})
    server = start_server(settings, wait=120)
    batches = [[_event(i) for i in range(b * 10, b * 10 + 10)] for b in range(100)]
    try:
        def post(batch: list[dict]) -> httpx.Response:
            return httpx.post(server.url + "/v1/events", json={"events": batch}, timeout=30)

        with ThreadPoolExecutor(8) as pool:  # concurrent requests: they share fsyncs
            answers = list(pool.map(post, batches))
        assert [r.status_code for r in answers] == [202] * 100
        assert sum(r.json()["accepted"] for r in answers) == 1000
        os.kill(server.process.pid, signal.SIGKILL)
        assert server.process.wait(30) == -signal.SIGKILL
    finally:
        server.stop(5)
    assert read_events(ws.events_dir).height == 0  # none reached parquet before the kill
    assert list((ws.events_dir / "wal").glob("*.wal"))

    server = start_server(settings, wait=120)  # replays the log before it serves
    try:
        df = read_events(ws.events_dir)
        assert df.height == 1000
        assert df.select(C.REQUEST_ID, C.POSITION).unique().height == 1000
        assert df[C.EVENT_TIMESTAMP].min() == datetime(2024, 3, 1, tzinfo=UTC)
        assert not list((ws.events_dir / "wal").glob("*.wal"))
        # the replayed events are remembered: posted again, they are duplicates
        again = httpx.post(server.url + "/v1/events", json={"events": batches[3]}, timeout=30)
        assert again.status_code == 202 and again.json() == {"accepted": 0, "duplicates": 10}
    finally:
        assert server.stop(60) in (0, -signal.SIGTERM)
    assert read_events(ws.events_dir).height == 1000


def test_duplicates_are_dropped(client: TestClient, world) -> None:
    first = client.post("/v1/events", json={"events": [_event(i) for i in range(10)]})
    assert first.status_code == 202 and first.json() == {"accepted": 10}
    # a retry of part of it, plus two new events, one of them twice in the same batch
    batch = [_event(3), _event(4, clicked=True), _event(10), _event(11), _event(11)]
    second = client.post("/v1/events", json={"events": batch})
    assert second.status_code == 202 and second.json() == {"accepted": 2, "duplicates": 3}
    # without a position the key is (request_id, item_id)
    loose = [{**_event(20), "position": None}, {**_event(21), "position": None},
             {**_event(22), "position": None, "item_id": "i020"}]
    assert client.post("/v1/events", json={"events": loose}).json() == {"accepted": 2, "duplicates": 1}
    metrics = client.get("/metrics").text
    assert "recsys_events_duplicates_total 4.0" in metrics


def test_stored_duplicates_are_dropped_by_readers(tmp_path: Path) -> None:
    # two workers each accepted the same event (each remembers only its own keys)
    write_events_file([_row(0), _row(1)], tmp_path / "impressions-20240301T000000000000-11-000001.parquet")
    write_events_file([_row(1), _row(2)], tmp_path / "impressions-20240301T000000000001-12-000001.parquet")
    df = read_events(tmp_path)
    assert df[C.POSITION].to_list() == [0, 1, 2]


@pytest.mark.parametrize(("stamp", "words"), [
    ("0001-01-01T00:00:00", "before 2000-01-01"),
    ("1999-12-31T23:59:59+00:00", "before 2000-01-01"),
    ("9999-12-31T23:59:59", "more than a day after"),
    ((datetime.now(UTC) + timedelta(days=3)).isoformat(), "more than a day after"),
])
def test_implausible_times_are_refused_naming_the_field(client: TestClient, stamp: str, words: str) -> None:
    events = [_event(0), {**_event(1), "event_timestamp": stamp}]
    r = client.post("/v1/events", json={"events": events})
    assert r.status_code == 422, r.text
    assert "events.1.event_timestamp" in r.json()["message"] and words in r.json()["message"]
    ok = [{**_event(2), "event_timestamp": (datetime.now(UTC) + timedelta(hours=12)).isoformat()}]
    assert client.post("/v1/events", json={"events": ok}).status_code == 202


# ------------------------------------------------------------------ the log without a server
def _dead_writer(events_dir: Path, writer: str, segments: list[list[dict]], torn: bool = False) -> list[str]:
    """Segments as a process that died left them: its lock file no longer locked."""
    wal_dir = events_dir / "wal"
    wal_dir.mkdir(parents=True, exist_ok=True)
    lock = wal.WriterLock(wal_dir, writer)
    targets = []
    for seq, rows in enumerate(segments, start=1):
        target = f"impressions-2024030{seq}T000000000000-{writer.split('.')[0]}-{seq:06d}.parquet"
        seg = wal.Segment(wal_dir, writer, seq, target)
        seg.write(wal.record(encode_rows(rows)))
        if torn:
            seg.write(wal.record(encode_rows([_row(999)]))[:-5])  # died inside a write
        seg.close()
        targets.append(target)
    lock.release(remove=False)  # what the kernel does when the process dies
    return targets


def test_replay_publishes_dead_writers_segments_once(tmp_path: Path) -> None:
    events_dir = tmp_path / "events"
    segments = [[_row(i) for i in range(5)], [_row(i) for i in range(5, 8)]]
    targets = _dead_writer(events_dir, "101.aaaa", segments, torn=True)
    # it died after publishing its first segment and before deleting it
    write_events_file([_row(i) for i in range(5)], events_dir / targets[0])
    writer = EventWriter(events_dir, flush_seconds=60)
    try:
        assert writer.recovered.events == 3 and writer.recovered.segments == 2
        df = read_events(events_dir)
        assert df.height == 8  # the torn record is ignored
        assert df.select(C.REQUEST_ID, C.POSITION).unique().height == 8
        assert sorted(p.name for p in events_dir.glob("impressions-*.parquet")) == sorted(targets)
        assert not list((events_dir / "wal").glob("101.aaaa*"))
        # what was replayed counts for deduplication
        assert writer.append([_row(2), _row(100)]).accepted == 1
    finally:
        writer.close()
    assert read_events(events_dir).height == 9


def test_a_live_writers_log_is_left_alone(tmp_path: Path) -> None:
    first = EventWriter(tmp_path, flush_seconds=60, batch=1000)
    try:
        assert first.submit([_row(i) for i in range(4)]) == 4
        second = EventWriter(tmp_path, flush_seconds=60)  # another worker starting beside it
        assert second.recovered.segments == 0
        second.close()
        assert read_events(tmp_path).height == 0 and list((tmp_path / "wal").glob("*.wal"))
    finally:
        first.close()
    assert read_events(tmp_path).height == 4
    assert not list((tmp_path / "wal").iterdir())  # a clean close leaves no log and no lock


def test_concurrent_appends_share_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    syncs = []
    entered = threading.Event()
    release = threading.Event()
    real = os.fdatasync

    def slow_sync(fd: int) -> None:  # the first fsync waits until every append is queued
        syncs.append(fd)
        entered.set()
        release.wait(10)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", slow_sync)
    writer = EventWriter(tmp_path, flush_seconds=60, batch=10_000)
    try:
        first = writer.append([_row(0)])
        assert entered.wait(10)
        receipts = [writer.append([_row(i)]) for i in range(1, 50)]
        assert not any(r.durable.done() for r in receipts)  # none acknowledged before its fsync
        release.set()
        for r in [first, *receipts]:
            r.durable.result(10)
        assert len(syncs) == 2  # segment header + first append, then the 49 others together
    finally:
        release.set()
        writer.close()
    assert read_events(tmp_path).height == 50


def test_memory_durability_keeps_no_log(tmp_path: Path) -> None:
    writer = EventWriter(tmp_path, flush_seconds=60, durability="memory")
    assert writer.submit([_row(i) for i in range(3)]) == 3
    writer.close()
    assert read_events(tmp_path).height == 3 and not (tmp_path / "wal").exists()


def test_the_events_folder_imports_as_an_impressions_log(world, loader) -> None:
    """`recsys import impressions <events folder>`: what the server recorded becomes training data."""
    from recsys.data.tables import import_file, load_table

    before = load_table(world, "impressions").height
    with TestClient(create_app(make_settings(world.root), loader=loader)) as c:
        events = [_event(i, clicked=i % 3 == 0) for i in range(30)]
        assert c.post("/v1/events", json={"events": events}).json() == {"accepted": 30}
    assert list(world.events_dir.glob("impressions-*.parquet"))
    report = import_file(world, "impressions", world.events_dir)
    assert report.kept == 30 and report.quarantined == 0 and report.added == 30
    stored = load_table(world, "impressions")
    assert stored.height == before + 30
    posted = stored.filter(pl.col(C.REQUEST_ID).str.starts_with("req"))
    assert posted.height == 30 and posted[C.CLICKED].sum() == 10
