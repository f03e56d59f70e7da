"""Feature store benchmarks: the polars feature job vs pandas, online reads, historical retrieval.

    OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 RECSYS_PROGRESS=0 .venv/bin/python benchmarks/features.py \
        [--impressions 2000000] [--historical 100000,1000000] [--reads 300]

1. Windowed behaviour counts (impressions, clicks, CTR over 1/7/30 days on daily snapshots, per
   user) from N synthetic impressions: `features.jobs` (polars) against the same aggregation in
   pandas; the results are checked equal. Peak memory is the largest RSS growth during the call.
2. Online reads, 1 user + 300 items, sqlite vs Redis (a redis-server started on 127.0.0.1):
   the serving path (`OnlineFeatures`: one Feast read for the user, items from the in-process
   cache) against plain Feast `get_online_features` for the user and the 300 items.
3. Historical retrieval (`build_training_set`, Feast + duckdb) at 100k and 1M entity rows.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from features.jobs import BehaviourParams, _windowed_counts, normalize_events, user_behaviour  # noqa: E402

START = datetime(2024, 1, 1, tzinfo=UTC)
WINDOWS = (1, 7, 30)


def synthetic_impressions(n: int, users: int, items: int, days: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    micros = np.sort(rng.integers(0, days * 86_400_000_000, n))
    return pl.DataFrame(
        {
            "user_id": pl.Series(rng.integers(0, users, n)).cast(pl.String),
            "item_id": pl.Series(rng.zipf(1.3, n) % items).cast(pl.String),
            "event_timestamp": pl.Series(micros).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
            + (START - datetime(1970, 1, 1, tzinfo=UTC)),
            "clicked": rng.random(n) < 0.08,
        }
    )


class PeakRSS:
    """Largest RSS growth of this process while the block runs (sampled every 5 ms)."""

    def __enter__(self) -> PeakRSS:
        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def pandas_windowed_counts(
    imps: pd.DataFrame, key: str, last_stamp: pd.Timestamp, params: BehaviourParams
) -> pd.DataFrame:
    """The same aggregation as `features.jobs._windowed_counts`, written in idiomatic pandas."""
    df = imps[imps["event_timestamp"] < last_stamp]
    df = df.assign(day=df["event_timestamp"].dt.floor("D"))
    daily = (
        df.groupby([key, "day"], sort=False)
        .agg(impressions=("clicked", "size"), clicks=("clicked", "sum"))
        .reset_index()
    )
    first = daily.groupby(key)["day"].min()
    last_day = last_stamp - pd.Timedelta(days=1)
    lengths = ((last_day - first) // pd.Timedelta(days=1)).astype(int) + 1
    offsets = np.concatenate([np.arange(n) for n in lengths.to_numpy()]).astype("timedelta64[D]")
    days = np.repeat(first.dt.tz_localize(None).to_numpy(), lengths.to_numpy()) + offsets
    grid = pd.DataFrame(
        {
            key: np.repeat(first.index.to_numpy(), lengths.to_numpy()),
            "day": pd.DatetimeIndex(days).tz_localize("UTC").astype(daily["day"].dtype),
        }
    )
    frame = grid.merge(daily, on=[key, "day"], how="left").fillna({"impressions": 0, "clicks": 0})
    frame = frame.sort_values([key, "day"], kind="stable").reset_index(drop=True)
    g = frame.groupby(key, sort=False)
    for kind in ("impressions", "clicks"):
        frame[f"cum_{kind}"] = g[kind].cumsum()
    g = frame.groupby(key, sort=False)
    for d in WINDOWS:
        for kind in ("impressions", "clicks"):
            frame[f"{kind}_{d}d"] = (frame[f"cum_{kind}"] - g[f"cum_{kind}"].shift(d).fillna(0)).astype(
                "int64"
            )
        frame[f"ctr_{d}d"] = (frame[f"clicks_{d}d"] + params.prior_clicks) / (
            frame[f"impressions_{d}d"] + params.prior_impressions
        )
    frame["event_timestamp"] = frame["day"] + pd.Timedelta(days=1)
    return frame.drop(columns=["impressions", "clicks", "cum_impressions", "cum_clicks"])


def bench_job(n: int) -> None:
    users, items, days = max(1000, n // 100), max(500, n // 500), 30
    print(f"\n== 1. windowed behaviour counts: {n:,} impressions, {users:,} users, {days} days ==")
    imps = synthetic_impressions(n, users, items, days)
    params = BehaviourParams()
    events = normalize_events(imps)
    last = START + timedelta(days=days)
    gc.collect()
    with PeakRSS() as mem_pl:
        t, c = time.perf_counter(), time.process_time()
        out_pl = _windowed_counts(events, "user_id", last, params)
        t_pl, c_pl = time.perf_counter() - t, time.process_time() - c
    pdf = imps.to_pandas()
    gc.collect()
    with PeakRSS() as mem_pd:
        t, c = time.perf_counter(), time.process_time()
        out_pd = pandas_windowed_counts(pdf, "user_id", pd.Timestamp(last), params)
        t_pd, c_pd = time.perf_counter() - t, time.process_time() - c
    cols = [f"{k}_{d}d" for d in WINDOWS for k in ("impressions", "clicks")]
    a = out_pl.sort("user_id", "event_timestamp").select(cols).to_numpy()
    b = out_pd.sort_values(["user_id", "event_timestamp"])[cols].to_numpy()
    assert a.shape == b.shape and (a == b).all(), "polars and pandas disagree"
    print(f"snapshot rows {out_pl.height:,} (results equal)")
    print(f"polars  wall {t_pl:6.2f} s  cpu {c_pl:6.2f} s  peak +{mem_pl.mib:6.0f} MiB")
    print(f"pandas  wall {t_pd:6.2f} s  cpu {c_pd:6.2f} s  peak +{mem_pd.mib:6.0f} MiB")
    print(
        f"polars vs pandas: {t_pd / t_pl:.1f}x faster (wall), {c_pd / c_pl:.1f}x less CPU; "
        f"peak memory pandas/polars {mem_pd.mib / max(mem_pl.mib, 1):.1f}x"
    )
    with PeakRSS() as mem:
        t = time.perf_counter()
        full = user_behaviour(imps, None, params)
        took = time.perf_counter() - t
    print(
        f"whole user_behaviour job (windows + last clicked + recency): {full.height:,} rows in "
        f"{took:.2f} s, peak +{mem.mib:.0f} MiB"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentiles(samples: list[float]) -> str:
    ms = np.array(samples) * 1000
    return f"p50 {np.percentile(ms, 50):6.2f} ms  p99 {np.percentile(ms, 99):6.2f} ms"


def _world_workspace(root: Path, n_items: int, n_users: int, n_imps: int, dim: int) -> Path:
    """A workspace with a synthetic world's tables (items with categories, 512-d vectors)."""
    from recsys.data.tables import save_table
    from recsys.workspace import Workspace

    ws = Workspace.at(root)
    rng = np.random.default_rng(1)
    imps = synthetic_impressions(n_imps, n_users, n_items, 28, seed=2)
    ids = [str(i) for i in range(n_items)]
    save_table(ws, "impressions", imps)
    save_table(
        ws, "items", pl.DataFrame({"item_id": ids, "category": [f"c{i % 12}" for i in range(n_items)]})
    )
    vec = rng.normal(size=(n_items, dim)).astype(np.float32)
    save_table(
        ws,
        "item_embeddings",
        pl.DataFrame(
            {
                "item_id": ids,
                "embedding": vec,
                "image_embedding": vec,
                "text_embedding": vec,
                "image_source": ["original"] * n_items,
                "model_version": ["clip/v1"] * n_items,
                "event_timestamp": [START + timedelta(days=40)] * n_items,
            },
            schema_overrides={"event_timestamp": pl.Datetime("us", "UTC")},
        ).with_columns(pl.col("embedding", "image_embedding", "text_embedding").cast(pl.List(pl.Float32))),
    )
    return root


def bench_online(root: Path, reads: int, n_items: int) -> None:
    from features.jobs import build_features, materialize
    from features.online import OnlineFeatures, feature_refs
    from recsys.config import load_settings

    print(
        f"\n== 2. online reads: 1 user + 300 items ({n_items:,} items with 3x512-d vectors), {reads} reads =="
    )
    server = None
    stores = {"sqlite": {}}
    binary = shutil.which("redis-server")
    if binary:
        port = _free_port()
        server = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        stores["redis"] = {"features.online_store": "redis", "features.redis_url": f"127.0.0.1:{port}"}
    else:
        print("redis-server not found: Redis skipped")
    try:
        base = load_settings(home=str(root))
        build_features(base, until=None)
        rng = np.random.default_rng(3)
        for name, overrides in stores.items():
            settings = load_settings(home=str(root), **overrides)
            t = time.perf_counter()
            materialize(settings, track=False)
            print(f"[{name}] materialize {time.perf_counter() - t:.1f} s")
            online = OnlineFeatures(settings)
            t = time.perf_counter()
            online.items(["0"])
            print(f"[{name}] item cache fill {time.perf_counter() - t:.2f} s")
            t = time.perf_counter()
            OnlineFeatures(settings, item_cache="offline").items(["0"])
            print(
                f"[{name}] item cache fill from the offline sources (item_cache='offline') "
                f"{time.perf_counter() - t:.2f} s"
            )
            refs = feature_refs(["item_behaviour", "item_content"])
            gc.collect()
            gc.freeze()
            samples = []
            for _ in range(reads):
                user = str(rng.integers(0, 1000))
                samples.append((user, [str(i) for i in rng.choice(n_items, 300, replace=False)]))
            cached, raw = [], []
            for user, items in samples:
                t = time.perf_counter()
                online.user(user)
                online.items(items)
                cached.append(time.perf_counter() - t)
            for user, items in samples:
                t = time.perf_counter()
                online.user(user)
                online.store.get_online_features(
                    features=refs, entity_rows=[{"item_id": i} for i in items], full_feature_names=True
                ).to_dict()
                raw.append(time.perf_counter() - t)
            gc.unfreeze()
            print(f"[{name}] serving path (user read + cached items): {_percentiles(cached)}")
            print(
                f"[{name}] plain Feast (user + 300 items online):  {_percentiles(raw)}   "
                f"ratio p50 {np.median(raw) / np.median(cached):.0f}x"
            )
    finally:
        if server is not None:
            server.kill()
            server.wait()


def bench_historical(root: Path, sizes: list[int], engines: list[str]) -> None:
    from features.training_set import build_training_set
    from recsys.config import load_settings

    settings = load_settings(home=str(root))
    imps = pl.read_parquet(root / "data" / "impressions.parquet")
    for n in sizes:
        print(f"\n== 3. historical retrieval: {n:,} entity rows, user_behaviour + item_behaviour ==")
        rows = imps.sample(n, with_replacement=n > imps.height, seed=4).select(
            "user_id", "item_id", "event_timestamp", pl.col("clicked").alias("label")
        )
        took = {}
        for engine in engines:
            gc.collect()
            with PeakRSS() as mem:
                t = time.perf_counter()
                out = build_training_set(settings, rows, ["user_behaviour", "item_behaviour"], engine=engine)
                took[engine] = time.perf_counter() - t
            print(
                f"[{engine}] {out.height:,} rows x {out.width} columns in {took[engine]:.1f} s "
                f"({n / took[engine]:,.0f} rows/s), peak +{mem.mib:.0f} MiB"
            )
        if len(took) == 2:
            print(f"polars as-of join vs Feast: {took['feast'] / took['polars']:.0f}x faster")
        with PeakRSS() as mem:
            t = time.perf_counter()
            out = build_training_set(settings, rows, ["item_content:embedding"])
            took_vec = time.perf_counter() - t
        print(f"+ 512-d item vectors joined by item id: {took_vec:.1f} s, peak +{mem.mib:.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impressions", type=int, default=2_000_000)
    ap.add_argument("--historical", default="100000", help="comma-separated entity row counts")
    ap.add_argument("--reads", type=int, default=200)
    ap.add_argument("--engines", default="feast,polars", help="historical retrieval engines to time")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: job,online,historical")
    args = ap.parse_args()
    os.environ.setdefault("RECSYS_PROGRESS", "0")
    skip = set(filter(None, args.skip.split(",")))
    print(
        f"polars {pl.__version__}, pandas {pd.__version__}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    if "job" not in skip:
        bench_job(args.impressions)
    if skip >= {"online", "historical"}:
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = _world_workspace(Path(tmp) / "ws", n_items=2000, n_users=5000, n_imps=500_000, dim=512)
        if "online" not in skip:
            bench_online(root, args.reads, 2000)
        else:
            from features.jobs import build_features
            from recsys.config import load_settings

            build_features(load_settings(home=str(root)))
        if "historical" not in skip:
            bench_historical(root, [int(x) for x in args.historical.split(",")], args.engines.split(","))


if __name__ == "__main__":
    main()
