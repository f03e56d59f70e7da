"""Serving throughput and latency: the recommendation endpoint against a no-op endpoint (the
ceiling of FastAPI + uvicorn on this machine), in the same run, at 1, 8 and 32 connections.

    OMP_WAIT_POLICY=passive .venv/bin/python benchmarks/serving.py --items 100000 --users 50000 \
        --impressions 500000 --seconds 5 --connections 1,8,32,64 --workers 1

`--runs N` repeats the HTTP measurement N times against one server (one summary row per run, and
how many runs met p99 <= 20 ms at 500/s offered); `--in-process N` first measures N requests in
this process without HTTP (CPU per request, stage medians, the parts alone), `--in-process-only`
only that.

Builds (or reuses, by `--home`) a world with real models: the embedded world without pictures,
behaviour features built and materialized into the Feast online store, the two-tower and the
LightGBM ranker trained and promoted. Item vectors stand in for the CLIP backfill (seeded
per-category directions plus noise, contract-shaped), because CLIP on 100k items does not fit the
minutes this benchmark may take on 2 shared cores; serving reads them exactly as it would
CLIP's. The server runs as its own uvicorn process (`--workers`, 1 torch thread each) on 127.0.0.1; the
load generator is wrk (one thread, `--client wrk`, apt's `wrk`) or, without it, a bounded async httpx
client (one coroutine per connection); both are closed loops: each connection sends its next request
when the last one answered. Errors: non-2xx answers plus socket errors.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("RECSYS_PROGRESS", "0")
sys.path.insert(0, str(ROOT))
BENCH_APP = "benchmarks.serving:bench_app"


def bench_app():  # noqa: ANN201 (FastAPI is imported in the server process only)
    """The production app plus `GET /v1/noop`, the ceiling of FastAPI + uvicorn that the
    recommendation endpoint is compared against; a uvicorn factory like `serving.app:app_from_env`.
    The no-op lives here, not in the production app."""
    from serving.app import app_from_env

    app = app_from_env()

    @app.get("/v1/noop", include_in_schema=False)
    async def noop() -> dict[str, bool]:
        return {"ok": True}

    return app


def build_world(home: Path, items: int, users: int, impressions: int, seed: int = 7) -> None:
    """World + stand-in item vectors + features + two-tower + ranker, all promoted to champion."""
    import polars as pl

    from features.jobs import build_features, materialize
    from recsys.data import columns as C
    from recsys.data.tables import load_table, save_table
    from recsys.data.world import generate_world
    from recsys.workspace import Workspace
    from training.ranker import train_ranker
    from training.retrieval import train_retrieval

    settings = bench_settings(home, items, users, impressions)
    ws = Workspace.at(home)
    steps = [("world", lambda: generate_world(settings.world, settings.seed, ws))]

    def vectors() -> str:
        df = load_table(ws, "items", columns=[C.ITEM_ID, C.CATEGORY])
        rng = np.random.default_rng(seed)
        cats = {c: rng.normal(size=64) for c in df[C.CATEGORY].unique().to_list()}
        v = np.stack([cats[c] for c in df[C.CATEGORY].to_list()]) + rng.normal(size=(df.height, 64))
        v = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
        emb = pl.DataFrame({
            C.ITEM_ID: df[C.ITEM_ID], C.IMAGE_EMBEDDING: [None] * df.height, C.TEXT_EMBEDDING: v.tolist(),
            C.EMBEDDING: v.tolist(), C.IMAGE_SOURCE: ["none"] * df.height,
            C.MODEL_VERSION: ["bench-vectors"] * df.height, C.CONTENT_HASH: [""] * df.height,
            C.EVENT_TIMESTAMP: [datetime(2024, 1, 1, tzinfo=UTC)] * df.height,
        }, schema_overrides={C.IMAGE_EMBEDDING: pl.List(pl.Float32), C.TEXT_EMBEDDING: pl.List(pl.Float32),
                             C.EMBEDDING: pl.List(pl.Float32), C.EVENT_TIMESTAMP: pl.Datetime("us", "UTC")})
        save_table(ws, "item_embeddings", emb)
        return f"{df.height} stand-in item vectors"

    steps += [("item vectors", vectors),
              ("features", lambda: [build_features(settings, ws), materialize(settings, ws)]),
              ("two-tower", lambda: train_retrieval(settings, ws)),
              ("ranker", lambda: train_ranker(settings, ws, promote=True))]
    for name, run in steps:
        t = time.perf_counter()
        result = run()
        text = "; ".join(r.summary() if hasattr(r, "summary") else str(r)
                         for r in (result if isinstance(result, list) else [result]))
        print(f"  {name}: {text[:160]} ({time.perf_counter() - t:.1f} s)", flush=True)


def bench_settings(home: Path, items: int, users: int, impressions: int,  # noqa: ANN201
                   exact_below: int = 50_000):
    from recsys.config import load_settings

    return load_settings(**{"home": str(home), "world.items": items, "world.users": users,
                            "world.impressions": impressions, "world.images": False,
                            "retrieval.epochs": 2, "serving.event_flush_seconds": 5.0,
                            # IVF stage 1 at 100k items: exact search alone was ~1.8 ms of the ~4 ms a
                            # request may cost at 500 req/s on 2 cores (see benchmarks/README.md)
                            "retrieval.exact_below": exact_below})


async def load(url_of, connections: int, seconds: float) -> dict[str, float]:  # noqa: ANN001
    """Closed loop: `connections` clients, each sending its next request when the last answered."""
    import httpx

    latencies: list[float] = []
    errors = {"5xx": 0, "other": 0}
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits, timeout=10.0) as client:
        stop = time.perf_counter() + seconds

        async def worker(n: int) -> None:
            rng = random.Random(n)
            while time.perf_counter() < stop:
                t = time.perf_counter()
                try:
                    r = await client.get(url_of(rng))
                    if r.status_code >= 500:
                        errors["5xx"] += 1
                    elif r.status_code != 200:
                        errors["other"] += 1
                except httpx.HTTPError:
                    errors["other"] += 1
                latencies.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(connections)))
        wall = time.perf_counter() - t0
    lat = np.asarray(latencies) * 1000
    return {"rps": len(lat) / wall, "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99)), "n": len(lat), **errors}


WRK_SCRIPT = """
local users = {}
for line in io.lines(os.getenv("BENCH_USERS")) do users[#users + 1] = line end
local path = os.getenv("BENCH_PATH")
math.randomseed(os.time())
-- users in a shuffled order, each once per pass over the file: within a run a user names one
-- request, so an answer (its body echoes user_id) is matched to the time its request was sent
for i = #users, 2, -1 do local j = math.random(i); users[i], users[j] = users[j], users[i] end
local next_user = 0
local ffi = require("ffi")
ffi.cdef[[ typedef struct { long tv_sec; long tv_usec; } bench_timeval;
           int gettimeofday(bench_timeval *tv, void *tz); ]]
local tv = ffi.new("bench_timeval")
local function now_ms()
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) * 1000 + tonumber(tv.tv_usec) / 1000
end
local sent = {}
request = function()
  if path == "rec" then
    next_user = next_user % #users + 1
    local user = users[next_user]
    sent[user] = now_ms()
    return wrk.format("GET", "/v1/users/" .. user .. "/recommendations?k=10")
  end
  return wrk.format("GET", "/v1/noop")
end
-- offered load (--rate): one schedule shared by the connections of wrk's single thread; a slot
-- missed while every connection is busy is dropped, not caught up (the client cannot queue)
local rate = tonumber(os.getenv("BENCH_RATE") or "0")
if rate > 0 then
  local next_t = nil
  delay = function()
    local now = now_ms()
    if next_t == nil or next_t < now then next_t = now end
    local wait = next_t - now
    next_t = next_t + 1000 / rate
    return wait
  end
end
-- shed answers (503) counted, served answers timed from their send (ms), per thread
local threads = {}
setup = function(thread) table.insert(threads, thread) end
shed = 0
served_ms = {}
response = function(status, headers, body)
  if status == 503 then shed = shed + 1 return end
  if status == 200 and path == "rec" then
    local user = string.match(body, '"user_id":"([^"]+)"')
    if user and sent[user] then
      served_ms[#served_ms + 1] = now_ms() - sent[user]
      sent[user] = nil
    end
  end
end
done = function(summary, latency, requests)
  local n_shed, served = 0, {}
  for _, t in ipairs(threads) do
    n_shed = n_shed + t:get("shed")
    for _, ms in ipairs(t:get("served_ms")) do served[#served + 1] = ms end
  end
  table.sort(served)
  local p99 = -1
  if #served > 0 then p99 = served[math.max(1, math.ceil(0.99 * #served))] end
  io.write(string.format("BENCH %d %d %d %d %f %f %d %f %d\\n", summary.requests, summary.duration,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout, latency:percentile(50) / 1000, latency:percentile(99) / 1000, n_shed,
    p99, #served))
end
"""


def load_wrk(base: str, which: str, connections: int, seconds: float, users_file: Path,
             script: Path, rate: float = 0.0) -> dict[str, float]:
    """wrk (C, one thread) as the client: far lighter than any Python client on 2 shared cores.
    `rate` > 0: offered load in requests/s (paced sends) instead of a closed loop."""
    import subprocess

    env = {**os.environ, "BENCH_USERS": str(users_file), "BENCH_PATH": which, "BENCH_RATE": str(rate)}
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
           "-s", str(script), base]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("BENCH "))
    n, micros, status_errors, socket_errors, p50, p99, shed, served_p99, timed = line.split()[1:]
    served = int(n) - int(shed)
    return {"rps": int(n) / (int(micros) / 1e6), "p50": float(p50), "p99": float(p99), "n": int(n),
            "5xx": int(status_errors), "other": int(socket_errors), "shed": int(shed),
            "served_rps": served / (int(micros) / 1e6),
            "served_p99": float(served_p99) if float(served_p99) >= 0 else float("nan"), "timed": int(timed)}


def process_cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU seconds so far of the server and each of its worker processes, by pid:
    their sum per request is the cost, which (unlike req/s) does not depend on how busy the
    shared cores are; the split shows how evenly the workers share the load."""
    import psutil

    root = psutil.Process(pid)
    out = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            out[proc.pid] = t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return out


def cpu_split(before: dict[int, float], after: dict[int, float]) -> str:
    """CPU seconds each process used between two readings, largest first ("2.9/2.8/0.0")."""
    used = sorted((after[p] - before.get(p, 0.0) for p in after), reverse=True)
    return "/".join(f"{u:.1f}" for u in used)


def in_process(settings, users: list[str], n: int, seed: int = 0, rounds: int = 3) -> dict[str, float]:  # noqa: ANN001
    """CPU time per request of the whole request path in one process, no HTTP: the serving state
    loaded as the server loads it, then `n` sequential `RecommendService.recommend` calls for
    random known users (online-store read, recommender, exploration, response model), after 30
    warm-up calls. Prints medians of the CPU time per request (`time.process_time`) and of each
    stage's wall time as the response reports it, and the same for the parts alone where both
    variants exist in this code (Feast's read against the direct one, all of the pool's
    marginals against the truncated pool).

    The baseline, in the same run on the same users: the request path in the reference forms
    that this code's shortcuts are tested against (`reference_state`). The two alternate in
    `rounds` blocks, so a change in the machine's speed reaches both. Returns the medians in ms."""
    import gc
    import statistics
    from collections import defaultdict

    from serving.schemas import RecommendationRequest
    from serving.service import RecommendService
    from serving.state import load_state

    t = time.perf_counter()
    state = load_state(settings)
    assert state.ready, state.problems
    reference = reference_state(settings, state)
    services = {}
    for name, s in (("fast", state), ("reference", reference)):
        services[name] = RecommendService(settings, loader=lambda _settings, previous=None, s=s: s)
        services[name].swap_in(s)
    gc.collect()
    gc.freeze()  # as the server does after loading
    print(f"in process: state loaded in {time.perf_counter() - t:.1f} s; {n} requests in {rounds} "
          f"rounds against the reference path, exploration {settings.serving.exploration} "
          f"(T {settings.serving.temperature})", flush=True)
    rng = random.Random(seed)
    picks = [rng.choice(users) for _ in range(n + 30)]
    for user in picks[:30]:
        for service in services.values():
            service.recommend(RecommendationRequest(user_id=user, k=10))
    cpu: dict[str, list[float]] = defaultdict(list)
    stages = defaultdict(list)
    for block in np.array_split(np.array(picks[30:]), rounds):
        for name, service in services.items():
            for user in block.tolist():
                t0 = time.process_time()
                out = service.recommend(RecommendationRequest(user_id=user, k=10))
                cpu[name].append(time.process_time() - t0)
                assert not out.degraded and out.fallback is None or out.fallback == "popular", out
                if name == "fast":
                    for stage, ms in out.timings_ms.items():
                        stages[stage].append(ms)
    med = {k: statistics.median(v) for k, v in stages.items()}
    med["cpu"], med["cpu_reference"] = (statistics.median(cpu[name]) * 1000 for name in services)
    print(f"  CPU per request: median {med['cpu']:.3f} ms, p90 {np.percentile(cpu['fast'], 90) * 1000:.3f} "
          "ms; stage medians (wall ms): " + ", ".join(f"{k} {med[k]:.3f}" for k in stages), flush=True)
    print(f"  baseline, the reference path in the same run: median {med['cpu_reference']:.3f} ms, p90 "
          f"{np.percentile(cpu['reference'], 90) * 1000:.3f} ms: {med['cpu_reference'] / med['cpu']:.2f}x "
          "the CPU per request", flush=True)

    def cpu_of(fn, args: list) -> float:  # noqa: ANN001
        for a in args[:20]:
            fn(a)
        times = []
        for a in args:
            t0 = time.process_time()
            fn(a)
            times.append(time.process_time() - t0)
        return statistics.median(times) * 1000

    features = state.features
    sample = picks[30:]
    med["user_read_direct"] = cpu_of(features.user, sample)
    med["user_read_feast"] = cpu_of(reference.features.user, sample)  # the reference path's Feast read
    print(f"  user read alone (CPU ms, median): direct {med['user_read_direct']:.3f}, "
          f"Feast get_online_features {med['user_read_feast']:.3f}", flush=True)
    from serving.exploration import choose_slate

    pools = []
    for user in sample[:100]:
        f = features.user(user)
        pool = min(max(3 * 10, 20), 300)
        pools.append(state.rank(user, pool, f, rules_of_none(), datetime.now(UTC)).items)
    temperature = settings.serving.temperature
    med["explore"] = cpu_of(lambda r: choose_slate(r, 10, "softmax", temperature,
                                                   np.random.default_rng(0)), pools)
    line = f"  exploration alone (CPU ms, median over {len(pools)} ranked pools): {med['explore']:.3f}"
    from recsys.evaluation import plackett_luce as PL

    if hasattr(PL, "marginals_of"):  # the whole pool's marginals, as exploration computed them before
        med["explore_whole_pool"] = cpu_of(
            lambda r: PL.marginals(np.asarray([[x for _, x in r]]), temperature, min(10, len(r))), pools)
        line += f" (the whole pool's marginals alone: {med['explore_whole_pool']:.3f})"
    print(line, flush=True)
    return med


def reference_state(settings, state):  # noqa: ANN001, ANN201
    """`state` with the request path in the reference forms its shortcuts are tested against:
    the user read through Feast's `get_online_features`, the recommender's `fast = False` forms
    (the torch user tower, EASE over the whole catalogue, the dict merge, reasons item by item) and
    LightGBM's own predictor instead of the compiled trees. Exploration is the same in both (its
    reference, the whole pool's marginals, is timed alone). Shares the loaded arrays."""
    import copy
    from dataclasses import replace

    from features.online import OnlineFeatures
    from recsys.ranking.compiled import LightGBMTrees

    recommender = copy.copy(state.recommender)
    recommender.fast = False
    recommender.ranker = replace(recommender.ranker, trees=LightGBMTrees(recommender.ranker.booster))
    return replace(state, recommender=recommender, features=OnlineFeatures(settings, direct=False))


def rules_of_none():  # noqa: ANN201
    from recsys.rules import Rules

    return Rules()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=Path("benchmarks/out/serving-world"),
                    help="workspace of the benchmark world (built once, reused)")
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--impressions", type=int, default=300_000)
    ap.add_argument("--seconds", type=float, default=8.0, help="per endpoint and concurrency level")
    ap.add_argument("--connections", default="1,8,32", help="e.g. 1,8,32,64 (64: twice the target load)")
    ap.add_argument("--workers", type=int, default=1,
                    help="server processes (several: one SO_REUSEPORT socket each, see serving/process.py)")
    ap.add_argument("--rates", default="",
                    help="also offer these loads (req/s, e.g. 500,1000) to the recommendations endpoint "
                         "at --rate-connections connections (wrk only): the issue's goal is p99 at 500 "
                         "req/s over 32 connections, which a closed loop cannot show (32 busy "
                         "connections at 500 req/s wait 64 ms each by Little's law)")
    ap.add_argument("--rate-connections", type=int, default=32)
    ap.add_argument("--overload", type=float, default=0.0,
                    help="also offer this multiple (e.g. 2) of the capacity measured by the closed loop "
                         "(most recommendations served a second) over --overload-connections connections "
                         "(wrk only): served req/s, served p99 (each served answer timed from its send: "
                         "its body names its user, one user a request within a run) and the share shed "
                         "(503 + Retry-After past serving.max_in_flight)")
    ap.add_argument("--overload-connections", type=int, default=256)
    ap.add_argument("--max-in-flight", type=int, default=None,
                    help="serving.max_in_flight per worker (default: the setting's; 0: no shedding)")
    ap.add_argument("--exact-below", type=int, default=50_000,
                    help="retrieval.exact_below at serving: catalogues this size or larger use the IVF "
                         "index in stage 1 (200000, the library default, serves 100k items exactly)")
    ap.add_argument("--client", choices=["auto", "wrk", "httpx"], default="auto",
                    help="load generator: wrk (apt install wrk) when present, else async httpx")
    ap.add_argument("--runs", type=int, default=1,
                    help="repeat the whole HTTP measurement this many times against the same server "
                         "(world built once); one summary row per run at the end")
    ap.add_argument("--in-process", type=int, default=0, metavar="N",
                    help="first measure N requests in this process without HTTP (CPU per request, "
                         "stage medians; see `in_process`)")
    ap.add_argument("--in-process-only", action="store_true", help="only the in-process measurement")
    args = ap.parse_args()

    import polars as pl

    from recsys.data import columns as C

    home = args.home.resolve()
    # the server processes import `benchmarks.serving:bench_app` from the repository, wherever this runs
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    if not (home / "bench-world.built").exists():
        print(f"building the world in {home} ({args.items:,} items, {args.users:,} users, "
              f"{args.impressions:,} impressions)", flush=True)
        build_world(home, args.items, args.users, args.impressions)
        (home / "bench-world.built").write_text("ok")
    settings = bench_settings(home, args.items, args.users, args.impressions, args.exact_below)
    if args.max_in_flight is not None:
        settings.serving.max_in_flight = args.max_in_flight
    users = (pl.read_parquet(home / "data" / "impressions.parquet", columns=[C.USER_ID])[C.USER_ID]
             .unique().sort().to_list())
    if args.in_process or args.in_process_only:
        in_process(settings, users, args.in_process or 300)
        if args.in_process_only:
            return
    http_runs(args, settings, home, users)


def http_runs(args: argparse.Namespace, settings, home: Path, users: list[str]) -> None:  # noqa: ANN001
    """Start the server once, run the HTTP measurement `args.runs` times, print the tables."""
    import polars as pl

    from recsys.data import columns as C
    from serving.process import start_server

    n_items = pl.read_parquet(home / "data" / "items.parquet", columns=[C.ITEM_ID]).height
    t = time.perf_counter()
    server = start_server(settings, workers=args.workers, log_path=home / "bench-server.log", wait=300,
                          ready=True, app=BENCH_APP)
    print(f"server ({args.workers} worker) ready in {time.perf_counter() - t:.1f} s at {server.url}: "
          f"{n_items:,} items, "
          f"{len(users):,} users with clicks; k=10 from {settings.retrieval.candidates} ranked candidates; "
          f"max_in_flight {settings.serving.max_in_flight} per worker", flush=True)
    runs = []
    try:
        import httpx

        probe = httpx.get(f"{server.url}/v1/users/{users[0]}/recommendations", params={"k": 10}).json()
        assert probe["fallback"] is None and not probe["degraded"], probe
        print(f"models: ranker {probe['ranker_version']}, retrieval {probe['retrieval_version']}; "
              f"stages (ms) {probe['timings_ms']}", flush=True)
        client = args.client
        if client == "auto":
            import shutil

            client = "wrk" if shutil.which("wrk") else "httpx"
        users_file, script = home / "bench-users.txt", home / "bench.lua"
        users_file.write_text("\n".join(users) + "\n")
        script.write_text(WRK_SCRIPT)
        print(f"client: {client}", flush=True)
        for run in range(1, args.runs + 1):
            if args.runs > 1:
                print(f"run {run} of {args.runs}", flush=True)
            runs.append(one_run(args, server, users, client, users_file, script))
    finally:
        server.stop()
    for run, (rows, overload) in enumerate(runs, start=1):
        if args.runs > 1:
            print(f"\nrun {run}:")
        print_tables(args, settings, rows, overload)
    print_summary(runs)


def one_run(args: argparse.Namespace, server, users: list[str], client: str, users_file: Path,  # noqa: ANN001
            script: Path) -> tuple[list, tuple | None]:
    """Closed loops at each connection count (no-op and recommendations), offered rates, overload."""
    endpoints = {
        "no-op": lambda rng: f"{server.url}/v1/noop",
        "recommendations": lambda rng: f"{server.url}/v1/users/{rng.choice(users)}/recommendations?k=10",
    }
    rows = []
    overload = None
    for conns in [int(c) for c in args.connections.split(",") if c]:
        for name, url_of in endpoints.items():
            cpu0, load0 = process_cpu_seconds(server.process.pid), os.getloadavg()[0]
            if client == "wrk":
                which = "rec" if name == "recommendations" else "noop"
                r = load_wrk(server.url, which, conns, args.seconds, users_file, script)
            else:
                r = asyncio.run(load(url_of, conns, args.seconds))
            cpu1 = process_cpu_seconds(server.process.pid)
            r["cpu_ms"] = (sum(cpu1.values()) - sum(cpu0.values())) / max(r["n"], 1) * 1000
            r["load"] = max(load0, os.getloadavg()[0])
            rows.append((name, conns, r))
            print(f"  {name:16s} conns={conns:3d}  {r['rps']:8.0f} req/s  p50 {r['p50']:6.2f} ms  "
                  f"p99 {r['p99']:6.2f} ms  n={r['n']}  5xx={r['5xx']} other={r['other']}  "
                  f"server CPU {r['cpu_ms']:.2f} ms/req (s by process {cpu_split(cpu0, cpu1)})  "
                  f"load {r['load']:.1f}", flush=True)
    for rate in [float(x) for x in args.rates.split(",") if x] if client == "wrk" else []:
        cpu0, load0 = process_cpu_seconds(server.process.pid), os.getloadavg()[0]
        r = load_wrk(server.url, "rec", args.rate_connections, args.seconds, users_file, script, rate)
        cpu1 = process_cpu_seconds(server.process.pid)
        r["cpu_ms"] = (sum(cpu1.values()) - sum(cpu0.values())) / max(r["n"], 1) * 1000
        r["load"] = max(load0, os.getloadavg()[0])
        r["offered"] = rate
        rows.append((f"recommendations @ {rate:.0f}/s offered", args.rate_connections, r))
        print(f"  offered {rate:5.0f}/s conns={args.rate_connections:3d}  {r['rps']:8.0f} req/s  "
              f"p50 {r['p50']:6.2f} ms  p99 {r['p99']:6.2f} ms  n={r['n']}  5xx={r['5xx']} "
              f"other={r['other']}  server CPU {r['cpu_ms']:.2f} ms/req (s by process "
              f"{cpu_split(cpu0, cpu1)})  load {r['load']:.1f}",
              flush=True)
    if args.overload > 0 and client == "wrk":
        # capacity: the most requests the closed loop had *served* (a shed answer is no capacity)
        capacity = max(r.get("served_rps", r["rps"]) for n, _, r in rows if n == "recommendations")
        rate = args.overload * capacity
        conns = args.overload_connections
        cpu0, load0 = process_cpu_seconds(server.process.pid), os.getloadavg()[0]
        r = load_wrk(server.url, "rec", conns, args.seconds, users_file, script, rate)
        cpu1 = process_cpu_seconds(server.process.pid)
        r["cpu_ms"] = (sum(cpu1.values()) - sum(cpu0.values())) / max(r["n"], 1) * 1000
        r["load"] = max(load0, os.getloadavg()[0])
        overload = (args.overload, capacity, rate, conns, r)
        print(f"  overload {args.overload:g}x {capacity:.0f} = {rate:.0f}/s offered, conns={conns}: "
              f"answered {r['rps']:.0f}/s, served {r['served_rps']:.0f}/s, served p99 "
              f"{r['served_p99']:.2f} ms (of {r['timed']} timed), shed {r['shed'] / max(r['n'], 1):.1%}, "
              f"p50 (all) {r['p50']:.2f} ms, "
              f"other 5xx {r['5xx'] - r['shed']}, socket errors {r['other']}, server CPU "
              f"{r['cpu_ms']:.2f} ms/answer  load {r['load']:.1f}", flush=True)
    return rows, overload


def print_tables(args: argparse.Namespace, settings, rows: list, overload: tuple | None) -> None:  # noqa: ANN001
    if overload is not None:
        times, capacity, rate, conns, r = overload
        print(f"\n| offered | connections | served req/s | served p99 ms | shed | other errors "
              f"| max_in_flight/worker | workers |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
              f"| {times:g}x {capacity:.0f} = {rate:.0f}/s | {conns} | {r['served_rps']:.0f} | "
              f"{r['served_p99']:.2f} | {r['shed'] / max(r['n'], 1):.1%} | "
              f"{r['5xx'] - r['shed'] + r['other']} "
              f"| {settings.serving.max_in_flight} | {args.workers} |")
    print("\n| endpoint | connections | req/s | p50 ms | p99 ms | errors | vs no-op (req/s) "
          "| server CPU ms/req | load avg |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    ceiling = {c: r["rps"] for n, c, r in rows if n == "no-op"}
    for name, conns, r in rows:
        print(f"| {name} | {conns} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['5xx']} | "
              f"{r['rps'] / ceiling.get(conns, np.nan):.2f}x | {r['cpu_ms']:.2f} | {r['load']:.1f} |")


GOAL_P99_MS, GOAL_RATE, OVERLOAD_P99_MS = 20.0, 500.0, 100.0


def print_summary(runs: list[tuple[list, tuple | None]]) -> None:
    """One row per run: the recommendations rows side by side, the no-op of the same run, and
    whether the goal held (at the 500/s offered row: all offered served, none shed, no errors,
    p99 <= 20 ms). Server CPU is per answer: a shed answer (503) costs far less than a served one."""
    print("\n| run | no-op req/s (1 / most conns) | recs 1 conn req/s (p50 ms) | recs most conns req/s "
          "(p50 / p99 ms) | offered: served req/s (p50 / p99 ms of all answers), shed / other errors "
          "| recs server CPU ms/answer | load avg | p99 <= 20 ms at 500/s | overload: served p99 ms, shed |")
    print("|---:|---|---|---|---|---|---|---|---|")
    met = held = 0
    for run, (rows, overload) in enumerate(runs, start=1):
        noop = [r for n, _, r in rows if n == "no-op"]
        closed = [(c, r) for n, c, r in rows if n == "recommendations"]
        offered = [r for n, _, r in rows if "offered" in n]
        noop_txt = "/".join(f"{r['rps']:.0f}" for r in noop[:1] + noop[-1:]) or "-"
        first_txt = most_txt = "-"
        if closed:
            (_, a), (c, b) = closed[0], closed[-1]
            first_txt = f"{a['rps']:.0f} ({a['p50']:.2f})"
            most_txt = f"{b['rps']:.0f} at {c} ({b['p50']:.1f} / {b['p99']:.1f})"
        offered_txt = "; ".join(
            f"{r['offered']:.0f}/s: {r.get('served_rps', r['rps']):.0f} ({r['p50']:.1f} / {r['p99']:.1f}), "
            f"{r.get('shed', 0)} / {r['5xx'] - r.get('shed', 0) + r['other']}" for r in offered) or "-"
        goal = [r for r in offered if r["offered"] == GOAL_RATE]
        ok = bool(goal) and all(r["p99"] <= GOAL_P99_MS and r["5xx"] + r["other"] == 0
                                and r["rps"] >= 0.98 * GOAL_RATE for r in goal)
        met += ok
        cpu = [r["cpu_ms"] for n, _, r in rows if n != "no-op"] or [float("nan")]
        verdict = "yes" if ok else ("no" if goal else "-")
        over_txt = "-"
        if overload is not None:
            r = overload[-1]
            held += r["served_p99"] <= OVERLOAD_P99_MS
            over_txt = f"{r['served_p99']:.1f}, {r['shed'] / max(r['n'], 1):.1%}"
        print(f"| {run} | {noop_txt} | {first_txt} | {most_txt} | {offered_txt} "
              f"| {min(cpu):.2f}-{max(cpu):.2f} | {max(r['load'] for _, _, r in rows):.1f} | {verdict} "
              f"| {over_txt} |")
    if any(r.get("offered") == GOAL_RATE for rows, _ in runs for _, _, r in rows):
        print(f"\ngoal (p99 <= {GOAL_P99_MS:g} ms at {GOAL_RATE:g}/s offered, all served, no errors) met in "
              f"{met} of {len(runs)} runs")
    if any(overload is not None for _, overload in runs):
        print(f"overload goal (served p99 <= {OVERLOAD_P99_MS:g} ms) met in {held} of {len(runs)} runs")


if __name__ == "__main__":
    main()
