"""Click-to-visible latency of the streaming user features (issue 17: p99 <= 100 ms), with the
batch path it replaces measured in the same run.

    OMP_WAIT_POLICY=passive .venv/bin/python benchmarks/streaming.py --rates 20,100,300 --seconds 5

A seeded log (`--users` users, `--items` items, `--impressions` impressions over the 30 days
before today) is written to a fresh workspace; the batch path (`build_features` +
`materialize`, what a click waited for before the stream) is timed on it. Then, in process, the
server's own parts: the `EventWriter` (write-ahead log, fsync, group commit) hands every durable
batch to a `UserFeatureStream` (seeded from the log), which pushes the touched users' rows
through Feast into the online store. A sender appends one click at a time at each `--rates`
(clicks/s, open loop, random users); the clock starts when the click is durable (the moment the
server answers 202) and stops when a Feast online read of that user (`OnlineFeatures.user`, what
a request reads) shows the clicked item at the head of `last_clicked_items`. A poller re-reads
every pending user about every millisecond, in a process of its own (as a serving worker would
read; in the writer's process it would take the GIL from the stream). HTTP is not in the loop
(about 1-2 ms a request on this machine, see benchmarks/serving.py).

Baselines in the same run: the batch path above, and the floor of the store itself (one
precomputed row pushed through Feast and read back). `--redis` runs the same against a
redis-server it starts on 127.0.0.1 (needs `redis-server` on PATH).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("RECSYS_PROGRESS", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_world(ws, users: int, items: int, impressions: int, seed: int = 0) -> None:  # noqa: ANN001
    import polars as pl

    from recsys.data import columns as C
    from recsys.data.tables import save_table

    rng = np.random.default_rng(seed)
    cats = ["shoes", "bags", "hats", "coats", "toys"]
    item_ids = [f"i{i}" for i in range(items)]
    save_table(
        ws,
        "items",
        pl.DataFrame(
            {
                C.ITEM_ID: item_ids,
                C.TITLE: item_ids,
                C.DESCRIPTION: item_ids,
                C.CATEGORY: [cats[i % len(cats)] for i in range(items)],
                C.PRICE: rng.uniform(5, 50, items),
                C.IMAGE_URI: [None] * items,
                C.CREATED_AT: [datetime(2024, 1, 1, tzinfo=UTC)] * items,
            },
            schema_overrides={C.IMAGE_URI: pl.String},
        ),
    )
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    secs = np.sort(rng.integers(0, 30 * 86_400, impressions))
    save_table(
        ws,
        "impressions",
        pl.DataFrame(
            {
                C.REQUEST_ID: [f"r{i // 5}" for i in range(impressions)],
                C.USER_ID: [f"u{u}" for u in rng.integers(0, users, impressions)],
                C.ITEM_ID: [f"i{i}" for i in rng.zipf(1.3, impressions) % items],
                C.POSITION: (np.arange(impressions) % 5).astype(np.int32),
                C.EVENT_TIMESTAMP: [today - timedelta(days=30) + timedelta(seconds=int(s)) for s in secs],
                C.CLICKED: rng.random(impressions) < 0.1,
                C.PROPENSITY: np.full(impressions, 0.2),
                C.POLICY: ["bench"] * impressions,
            },
            schema_overrides={C.EVENT_TIMESTAMP: pl.Datetime("us", "UTC")},
        ),
    )


def start_redis() -> tuple[subprocess.Popen, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("--redis: redis-server is not on PATH")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


def store_floor(settings, user: str, n: int = 50) -> np.ndarray:  # noqa: ANN001
    """ms to push one precomputed user row through Feast and read it back (the store's floor)."""
    from feast.data_source import PushMode

    from features.definitions import USER_PUSH_SOURCE
    from features.jobs import BehaviourParams, latest_user_rows
    from features.online import OnlineFeatures
    from features.store import feature_store
    from recsys.data import columns as C
    from recsys.data.tables import load_table
    from recsys.workspace import Workspace

    ws = Workspace.at(settings.home)
    import polars as pl

    log = load_table(ws, "impressions").filter(pl.col(C.USER_ID) == user)
    row = latest_user_rows(log, None, BehaviourParams.from_settings(settings))
    store, online = feature_store(settings), OnlineFeatures(settings)
    out = []
    for k in range(n):
        item = f"floor-{k}"
        df = row.with_columns(
            pl.lit("floor-user").alias(C.USER_ID),
            pl.lit([item]).alias("last_clicked_items"),
            pl.lit(datetime.now(UTC) + timedelta(days=2)).alias(C.EVENT_TIMESTAMP),
        )
        t = time.perf_counter()
        store.push(USER_PUSH_SOURCE, df.to_pandas(), to=PushMode.ONLINE)
        assert online.user("floor-user")["user_behaviour__last_clicked_items"][0] == item
        out.append((time.perf_counter() - t) * 1000)
    return np.asarray(out)


def poll_visible(overrides: dict[str, object], clicks, results) -> None:  # noqa: ANN001
    """The reader, in its own process (a serving worker's view, and no GIL shared with the
    writer): re-reads every pending user about every millisecond; puts (user, ms from durable
    to visible) on `results`; `None` on `clicks` ends it (pending clicks get 10 s more)."""
    import queue

    from features.online import OnlineFeatures
    from recsys.config import load_settings

    online = OnlineFeatures(load_settings(**overrides))
    online.user("u0")
    results.put("ready")
    pending: dict[str, tuple[str, float]] = {}
    give_up = float("inf")
    while pending or give_up == float("inf"):
        while True:
            try:
                click = clicks.get_nowait()
            except queue.Empty:
                break
            if click is None:
                give_up = time.monotonic() + 10
            else:
                pending[click[0]] = (click[1], click[2])
        if time.monotonic() > give_up:
            break
        for user, (item, t0) in list(pending.items()):
            head = (online.user(user)["user_behaviour__last_clicked_items"] or [None])[0]
            if head == item:
                results.put((user, (time.monotonic() - t0) * 1000))
                del pending[user]
        time.sleep(0.001)
    results.put(("lost", len(pending)))


def measure(
    settings, overrides: dict[str, object], rate: float, seconds: float, users: int
) -> dict[str, float]:  # noqa: ANN001
    """Open-loop clicks at `rate`/s through the writer and the stream; ms from durable to visible
    (time.monotonic: one clock for both processes)."""
    import multiprocessing as mp
    import queue

    from recsys.data import columns as C
    from recsys.workspace import Workspace
    from serving.events import COLUMNS, EventWriter
    from serving.stream import UserFeatureStream

    ws = Workspace.at(settings.home)
    ctx = mp.get_context("spawn")  # the writer's threads make fork unsafe
    clicks, results = ctx.Queue(), ctx.Queue()
    reader = ctx.Process(target=poll_visible, args=(overrides, clicks, results), daemon=True)
    reader.start()
    assert results.get(timeout=300) == "ready"
    stream = UserFeatureStream(settings)
    assert stream.wait_ready(300), stream.stats
    writer = EventWriter(ws.events_dir / f"rate-{rate:g}", flush_seconds=1.0, on_durable=stream.submit)
    in_flight: set[str] = set()
    latencies: list[float] = []

    def drain(block: float | None = None) -> object:
        while True:
            try:
                got = results.get(timeout=block) if block else results.get_nowait()
            except queue.Empty:
                return None
            if got[0] == "lost":
                return got[1]
            in_flight.discard(got[0])
            latencies.append(got[1])

    rng = random.Random(int(rate))
    start = time.perf_counter()
    n = 0
    while (now := time.perf_counter()) < start + seconds:
        due = start + n / rate
        if now < due:
            time.sleep(due - now)
        n += 1
        drain()
        user = f"u{rng.randrange(users)}"
        if user in in_flight:  # one click in flight per user: its latency stays unambiguous
            continue
        item = f"new-{uuid.uuid4().hex[:8]}"  # never clicked before: visible means this click
        row = {
            **dict.fromkeys(COLUMNS),
            C.REQUEST_ID: uuid.uuid4().hex,
            C.USER_ID: user,
            C.ITEM_ID: item,
            C.POSITION: 0,
            C.EVENT_TIMESTAMP: datetime.now(UTC),
            C.CLICKED: True,
            C.POLICY: "bench",
        }
        writer.append([row]).durable.result()
        clicks.put((user, item, time.monotonic()))  # the moment the server would answer 202
        in_flight.add(user)
    sent = time.perf_counter() - start
    clicks.put(None)
    lost = None
    while lost is None:
        lost = drain(block=30)
    reader.join(30)
    writer.close()
    stream.close()
    lat = np.asarray(latencies)
    return {
        "rate": rate,
        "clicks": len(lat),
        "lost": lost,
        "achieved": len(lat) / sent,
        "p50": float(np.percentile(lat, 50)),
        "p90": float(np.percentile(lat, 90)),
        "p99": float(np.percentile(lat, 99)),
        "max": float(lat.max()),
        "pushes": stream.stats.pushes,
        "rows": stream.stats.pushed_rows,
        "failures": stream.stats.failures,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="20,100,300", help="clicks per second, comma-separated")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--impressions", type=int, default=100_000)
    ap.add_argument("--redis", action="store_true", help="use a redis-server started here as online store")
    ap.add_argument("--home", type=Path, default=None)
    args = ap.parse_args()

    from features.jobs import build_features, materialize
    from recsys.config import load_settings
    from recsys.runtime import configure_threads
    from recsys.workspace import Workspace

    configure_threads(1)
    home = args.home or Path(tempfile.mkdtemp(prefix="bench-stream-")) / "ws"
    redis = None
    overrides: dict[str, object] = {"home": str(home)}
    if args.redis:
        redis, url = start_redis()
        overrides.update({"features.online_store": "redis", "features.redis_url": url})
    settings = load_settings(**overrides)
    ws = Workspace.at(settings.home)
    try:
        write_world(ws, args.users, args.items, args.impressions)
        t = time.perf_counter()
        build_features(settings, ws)
        built = time.perf_counter() - t
        t = time.perf_counter()
        materialize(settings, ws, track=False)
        loaded = time.perf_counter() - t
        floor = store_floor(settings, "u1")
        rows = [
            measure(settings, overrides, float(r), args.seconds, args.users) for r in args.rates.split(",")
        ]
    finally:
        if redis is not None:
            redis.kill()
    store = settings.features.online_store
    print(
        f"\nlog: {args.impressions:,} impressions, {args.users:,} users, {args.items:,} items over 30 days; "
        f"online store {store}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(
        f"baseline, batch path (a click waits for the next job): features build {built:.1f} s + "
        f"materialize {loaded:.1f} s = {built + loaded:.1f} s"
    )
    print(
        f"baseline, store floor (push one precomputed row + read it): p50 {np.percentile(floor, 50):.1f} ms, "
        f"p99 {np.percentile(floor, 99):.1f} ms"
    )
    print(
        "\n| clicks/s asked | achieved | clicks | p50 ms | p90 ms | p99 ms | max ms | pushes | rows pushed |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['rate']:g} | {r['achieved']:.0f} | {r['clicks']} | {r['p50']:.1f} | {r['p90']:.1f} | "
            f"{r['p99']:.1f} | {r['max']:.1f} | {r['pushes']} | {r['rows']} |"
        )
    if any(r["failures"] or r["lost"] for r in rows):
        print(
            "push failures:",
            [r["failures"] for r in rows],
            "clicks never visible:",
            [r["lost"] for r in rows],
        )


if __name__ == "__main__":
    main()
