"""The Ray engine against the local path: backfill, batch recommendations and the feature build,
local and with 1 and 2 Ray workers, on a 100k-item world, in one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ray.py --home /tmp/bench-ray [--memory]

What is timed (like with like): every run is a fresh Python process, as a `recsys` command is,
timed around the job's function (`backfill`, `build_features`, `recommend_batch` and their Ray
twins), so both sides pay their cold imports and one-off loads: local loads the Recommender /
the encoder in its process; Ray joins the cluster and starts its actors (a process each, their
imports and loads); the driver reads the log in both. `process` adds the interpreter's start and
the job's module imports. The cluster is already up (`ray start --head --num-cpus 2` on
127.0.0.1, started once here and timed apart): with `ray.address` empty a job starts its own
local instance and pays that start on top. `features (behaviour)` is the feature build without
its item_content, `feast apply` and MLflow steps, which both engines run alike in the driver.

Every process gets `OMP_NUM_THREADS=1` and `POLARS_MAX_THREADS=1` (`--polars-threads`): local
then runs on one core and each Ray worker on one, so `ray1 / local` is the engine's overhead and
`ray1 / ray2` its scaling (2 CPUs: two workers scale only where two cores are free: the load
average is printed before each run). `cpu s` sums the run's process and the Ray cluster's
processes (actors, raylet, GCS; sampled every 0.25 s), which a busy machine inflates less than
wall time.

Sizes (defaults) and why: a job on Ray pays a fixed few seconds (joining the cluster ~1 s, then
per actor a process start and its imports: LightGBM with scikit-learn and MLflow for a
Recommender ~4-8 s, torch and open_clip for an encoder, polars for the feature parts ~1.5 s),
partly hidden behind the driver's own reading. So: recommend every user of a 100,000-user world
(`--rec-users 0`, about a minute of ranking on one core); the backfill of 6,000 items (128 px
PNGs, random `recsys-clip-tiny`, ~20 s on one core); the feature build over 2,000,000
impressions (~8 s of behaviour jobs on one core beside ~2.5 s of steps both engines share; a
larger log makes the world's generation and every job's log reading longer too).
`--feature-log-copies K` gives the feature build alone a K times larger shop: the world's users
and log K times over, the users renamed in each copy (prepared once in `features-xK/`).

`--home DIR` keeps the prepared world (generated once: items, users, log, synthetic item vectors,
the feature sources, a ranker trained on the first `--train-impressions` impressions with 10 hard
negatives, the backfill's pictures and encoder checkpoint) and reuses it when the sizes match;
the first run prepares it in about 2.5 min on a loaded 2-core machine. The runs take about 6 min
on a quiet 2-core machine (their CPU seconds), 10-15 min at a load average of 4-7. `--memory`
adds one actor of each kind's resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# this file is named ray.py: without its folder on the path, `import ray` finds the library
HERE = Path(__file__).resolve().parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("RECSYS_PROGRESS", "0")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from recsys.config import Settings, load_settings  # noqa: E402
from recsys.data import columns as C  # noqa: E402
from recsys.distributed.cluster import start_head, stop_head  # noqa: E402
from recsys.workspace import Workspace  # noqa: E402

JOBS = ("backfill", "features", "recommend")
RUNS = (("local", 0), ("ray1", 1), ("ray2", 2))
LOOPBACK = "127.0.0.1"
BEHAVIOUR_COMMON = ("content_and_apply", "log_build")  # the build's steps outside the behaviour jobs


def load() -> str:
    return "{:.1f}/{:.1f}/{:.1f}".format(*os.getloadavg())


def base_settings(home: Path) -> dict[str, Any]:
    return {"tracking.tracking_uri": f"sqlite:///{home / 'mlflow.db'}",
            "tracking.artifact_root": (home / "artifacts").as_uri(), "device": "cpu", "threads": 1}


def world_settings(home: Path, workers: int = 0, **extra: Any) -> Settings:
    return load_settings(home=str(home / "world"), **base_settings(home), **extra,
                         **({"ray.workers": workers} if workers else {}))


def features_settings(home: Path, workers: int, copies: int) -> Settings:
    """The feature build's workspace: the world, or with `copies` > 1 its tiled log (`tiled_log`)."""
    if copies == 1:
        return world_settings(home, workers)
    return load_settings(home=str(home / f"features-x{copies}"), **base_settings(home),
                         **({"ray.workers": workers} if workers else {}))


def tiled_log(world: Workspace, target: Workspace, copies: int) -> None:
    """A shop `copies` times the world's: its users and log repeated, the users renamed in each
    copy (`<id>~<copy>`), the same items and times; the log in copy order, 500k-row row groups."""
    from recsys.data.tables import load_table, save_table

    for name in ("items", "item_embeddings"):
        save_table(target, name, load_table(world, name))

    def tiled(df: pl.DataFrame) -> pl.DataFrame:
        return pl.concat(df.with_columns(pl.col(C.USER_ID) + (f"~{k}" if k else "")) for k in range(copies))

    save_table(target, "users", tiled(load_table(world, "users")))
    save_table(target, "impressions", tiled(load_table(world, "impressions")))
    log = target.table("impressions")
    pl.read_parquet(log).write_parquet(log, row_group_size=500_000)


def backfill_settings(home: Path, workers: int = 0) -> Settings:
    return load_settings(home=str(home / "backfill"), **base_settings(home),
                         **{"clip.pretrained": str(home / "clip.pt"), "clip.workers": 0},
                         **({"ray.workers": workers} if workers else {}))


def synthetic_vectors(items: pl.DataFrame, dim: int = 64, seed: int = 0) -> pl.DataFrame:
    """Unit item vectors clustered by category (the ranker's clip-profile candidates), as an
    item_embeddings table (the same vector as image, text and combined embedding)."""
    rng = np.random.default_rng(seed)
    cats = items[C.CATEGORY].to_numpy()
    names = sorted(set(cats))
    centers = rng.normal(size=(len(names), dim))
    vecs = centers[np.searchsorted(names, cats)] + 0.7 * rng.normal(size=(items.height, dim))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    n = items.height
    vecs = pl.Series(C.EMBEDDING, vecs.astype(np.float32))
    stamp = datetime(2024, 1, 1, tzinfo=UTC)
    return pl.DataFrame({C.ITEM_ID: items[C.ITEM_ID], C.EMBEDDING: vecs, C.IMAGE_EMBEDDING: vecs,
                         C.TEXT_EMBEDDING: vecs, C.IMAGE_SOURCE: ["none"] * n,
                         C.MODEL_VERSION: ["synthetic"] * n, C.EVENT_TIMESTAMP: [stamp] * n})


# ---------------------------------------------------------------- the world, prepared once


def prepare(home: Path, args: argparse.Namespace, jobs: list[str]) -> None:
    """Generate what the jobs need under `home`, each step once (`prepared.json` records them
    with their sizes; a step whose sizes changed is redone)."""
    from recsys.data.config import WorldConfig
    from recsys.data.tables import load_table, save_table
    from recsys.data.world import build_truth, generate_world, render_images

    marker = home / "prepared.json"
    done: dict[str, Any] = json.loads(marker.read_text()) if marker.exists() else {}
    world = {"items": args.items, "users": args.users, "impressions": args.impressions, "seed": 42}
    if done.get("world") != world:
        done = {}
        shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True, exist_ok=True)
    (home / "none.toml").touch()

    def step(name: str, key: Any, fn) -> None:
        if done.get(name) == key:
            return
        t = time.perf_counter()
        fn()
        done[name] = key
        marker.write_text(json.dumps(done, indent=1))
        print(f"prepared {name} in {time.perf_counter() - t:.1f} s (load average {load()})", flush=True)

    world_cfg = WorldConfig(items=args.items, users=args.users, impressions=args.impressions, images=False)
    ws = Workspace.at(home / "world")
    settings = world_settings(home)
    step("world", world, lambda: generate_world(world_cfg, 42, ws))
    if "features" in jobs or "recommend" in jobs:
        step("vectors", 64,
             lambda: save_table(ws, "item_embeddings", synthetic_vectors(load_table(ws, "items"))))
        from features.jobs import build_features

        step("features", 1, lambda: build_features(settings, ws))  # the ranker trains with them
    if "features" in jobs and args.feature_log_copies > 1:
        copies = args.feature_log_copies
        step("tiled log", copies, lambda: tiled_log(ws, Workspace.at(features_settings(home, 0, copies).home),
                                                    copies))
    if "recommend" in jobs:
        from training.ranker import train_ranker

        def ranker() -> None:
            # the ranker's quality does not matter here, only its features and retrieval: a
            # slice of the log and 10 hard negatives per request keep its training short
            log_slice = home / "train-log.parquet"
            load_table(ws, "impressions").head(args.train_impressions).write_parquet(log_slice)
            train_ranker(world_settings(home, **{"ranker.candidates": 10}), ws, log_slice, promote=True,
                         retrieval_uri="clip-profile")

        step("ranker", args.train_impressions, ranker)
    if "backfill" in jobs:
        def pictures() -> None:
            from recsys.embeddings.config import ClipConfig
            from recsys.embeddings.encoder import ClipEncoder

            bws = Workspace.at(home / "backfill")
            items = load_table(ws, "items").head(args.backfill_items)
            uris = [str(bws.images_dir / f"{i}.png") for i in items[C.ITEM_ID].to_list()]
            items = items.with_columns(pl.Series(C.IMAGE_URI, uris), pl.lit("original").alias(C.IMAGE_SOURCE))
            render_images(build_truth(world_cfg, 42)[0], items, 128, 42, processes=2)
            save_table(bws, "items", items)
            ClipEncoder(ClipConfig()).save_checkpoint(home / "clip.pt")

        step("backfill", args.backfill_items, pictures)


# ---------------------------------------------------------------- one run, in its own process


def run_one(home: Path, job: str, workers: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Run one job (`workers` 0: local) in this fresh process; its timings."""
    from recsys.data.tables import load_table

    timings: dict[str, float] = {}
    if job == "backfill":
        settings = backfill_settings(home, workers)
        ws = Workspace.at(settings.home)
        if workers:
            from training.backfill_ray import backfill_on_ray as run
        else:
            from training.backfill import backfill as run
        t = time.perf_counter()
        result = run(settings, ws, force=True, push_to_feast=False)
        timings["job"] = time.perf_counter() - t
        load_table(ws, "item_embeddings").write_parquet(out / "item_embeddings.parquet")
        timings["units"] = result.embedded
    elif job == "features":
        import features.jobs as jobs
        import features.jobs_ray as jobs_ray

        settings = features_settings(home, workers, args.feature_log_copies)
        common = [0.0]
        for module in (jobs, jobs_ray):  # time the steps both engines run alike
            for name in BEHAVIOUR_COMMON:
                fn = getattr(module, name)

                def timed(*a: Any, _fn: Any = fn, **k: Any) -> Any:
                    t0 = time.perf_counter()
                    try:
                        return _fn(*a, **k)
                    finally:
                        common[0] += time.perf_counter() - t0

                setattr(module, name, timed)
        run = jobs_ray.build_features_on_ray if workers else jobs.build_features
        t = time.perf_counter()
        result = run(settings, Workspace.at(settings.home))
        timings["job"] = time.perf_counter() - t
        timings["behaviour"] = timings["job"] - common[0]
        for view, path in result.paths.items():
            if view != "item_content":  # the Ray build's sources are folders of parts
                (shutil.copytree if path.is_dir() else shutil.copy)(path, out / f"{view}.parquet")
        timings["units"] = load_table(Workspace.at(settings.home), "impressions", columns=[C.USER_ID]).height
    else:
        settings = world_settings(home, workers)
        ws = Workspace.at(settings.home)
        users = load_table(ws, "users", columns=[C.USER_ID])[C.USER_ID].to_list()
        users = users[:args.rec_users] if args.rec_users else None
        if workers:
            from training.recommend_ray import recommend_on_ray as run
        else:
            from training.recommend import recommend_batch as run
        t = time.perf_counter()
        result = run(settings, ws, users, 10, None, out / "recs.parquet")
        timings["job"] = time.perf_counter() - t
        timings["units"] = result.users
    return timings


# ---------------------------------------------------------------- the driver of the runs


class TreeCpu:
    """CPU seconds a process tree (the Ray cluster) uses while a run lasts, sampled every
    `interval` s: the raylet does not reap its workers into its own children's times, so each
    process is read while it lives (a worker's last < `interval` s before it exits are missed)."""

    def __init__(self, root_pid: int, interval: float = 0.25) -> None:
        import threading

        self.root_pid, self.interval = root_pid, interval
        self.base = self._read()
        self.last = dict(self.base)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _read(self) -> dict[tuple[int, float], float]:
        import psutil

        out = {}
        try:
            root = psutil.Process(self.root_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return out
        for p in procs:
            try:
                c = p.cpu_times()
                out[(p.pid, p.create_time())] = c.user + c.system
            except psutil.Error:
                pass
        return out

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.last.update(self._read())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self.last.update(self._read())
        return sum(v - self.base.get(k, 0.0) for k, v in self.last.items())


def start_cluster(env: dict[str, str], object_store_mb: int) -> tuple[subprocess.Popen, str, float]:
    """A 2-CPU cluster on 127.0.0.1 (`start_head`), returned once a driver can join it."""
    t = time.perf_counter()
    try:
        proc, address = start_head({**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}, object_store_mb,
                                   timeout=180)
    except (FileNotFoundError, RuntimeError) as exc:
        raise SystemExit(str(exc)) from None
    try:
        # the raylet comes up after the GCS port opens: wait until a driver joins as the jobs do
        probe = subprocess.run(
            [sys.executable, "-c", "from recsys.distributed.cluster import ray_session\n"
             "from recsys.distributed.config import RayConfig\n"
             f"with ray_session(RayConfig(address='{address}')): pass"],
            env=env, capture_output=True, text=True, timeout=180, cwd=HERE.parent)
        if probe.returncode:
            raise SystemExit(f"cannot join the Ray cluster: {probe.stderr[-2000:]}")
    except BaseException:
        stop_head(proc)
        raise
    return proc, address, time.perf_counter() - t


def measure(home: Path, job: str, label: str, workers: int, args: argparse.Namespace, env: dict[str, str],
            cluster: subprocess.Popen) -> dict[str, Any]:
    out = home / "out" / job / label
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    before = load()
    cpu = TreeCpu(cluster.pid)
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--home", str(home), "--one", job, str(workers),
                             "--rec-users", str(args.rec_users), "--out", str(out),
                             "--feature-log-copies", str(args.feature_log_copies)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"{job} {label} failed:\n{stderr[-4000:]}")
    time.sleep(1.0)  # the job's Ray workers exit after the driver
    result = json.loads(stdout.strip().splitlines()[-1])
    result.update(proc=wall, load=before, cluster_cpu=cpu.stop())
    result["cpu"] = result.pop("self_cpu") + result["cluster_cpu"]
    extra = f", behaviour {result['behaviour']:.1f} s" if "behaviour" in result else ""
    print(f"{job} {label}: job {result['job']:.1f} s{extra} (process {wall:.1f} s), "
          f"cpu {result['cpu']:.1f} s "
          f"({result['cluster_cpu']:.1f} on Ray), {result['units']:,} units, load average before {before}",
          flush=True)
    return result


def same_output(home: Path, job: str) -> str:
    base = home / "out" / job
    if job == "recommend":
        a = pl.read_parquet(base / "local" / "recs.parquet")
        ok = all(pl.read_parquet(base / r / "recs.parquet").equals(a) for r in ("ray1", "ray2"))
        return "identical parquet" if ok else "DIFFERENT parquet"
    if job == "features":
        ok = True
        for view in ("item_behaviour", "user_behaviour"):
            key = C.USER_ID if view.startswith("user") else C.ITEM_ID
            a = pl.read_parquet(base / "local" / f"{view}.parquet").sort(key, C.EVENT_TIMESTAMP)
            for r in ("ray1", "ray2"):
                ok &= pl.read_parquet(base / r / f"{view}.parquet").sort(key, C.EVENT_TIMESTAMP).equals(a)
        return "identical rows" if ok else "DIFFERENT rows"
    a = pl.read_parquet(base / "local" / "item_embeddings.parquet").sort(C.ITEM_ID)
    worst = 0.0
    for r in ("ray1", "ray2"):
        b = pl.read_parquet(base / r / "item_embeddings.parquet").sort(C.ITEM_ID)
        if not a[C.ITEM_ID].equals(b[C.ITEM_ID]):
            return "DIFFERENT items"
        diff = np.array(a[C.EMBEDDING].to_list()) - np.array(b[C.EMBEDDING].to_list())
        worst = max(worst, float(np.abs(diff).max()))
    return f"embeddings within {worst:.1e}"


def worker_memory(home: Path, jobs: list[str]) -> None:
    """Print the RSS of one encoder actor and one RankUsers actor after some work (joins the
    cluster of RAY_ADDRESS)."""
    import psutil
    import ray

    from recsys.data.tables import load_table
    from recsys.distributed.cluster import ray_session

    def rss(actor: Any) -> float:
        pid = ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))
        return psutil.Process(pid).memory_info().rss / 2**20

    settings = world_settings(home)
    with ray_session(settings.ray):
        if "backfill" in jobs:
            from training.backfill_ray import EncodeItems

            bs = backfill_settings(home)
            items = load_table(Workspace.at(bs.home), "items").head(64)
            actor = ray.remote(num_cpus=1)(EncodeItems).remote(bs)
            batch = pl.DataFrame({"id": items[C.ITEM_ID], "text": items[C.DESCRIPTION],
                                  "uri": items[C.IMAGE_URI], "source": items[C.IMAGE_SOURCE],
                                  "hash": items[C.ITEM_ID]}).to_arrow()
            ray.get(actor.__call__.remote(batch, datetime.now(UTC)))
            print(f"memory: encoder actor (recsys-clip-tiny, float32) {rss(actor):,.0f} MiB RSS")
            ray.kill(actor)
        if "recommend" in jobs:
            from training.recommend_ray import RankUsers

            ws = Workspace.at(settings.home)
            log_df = load_table(ws, "impressions",
                                columns=[C.USER_ID, C.ITEM_ID, C.EVENT_TIMESTAMP, C.CLICKED])
            as_of = datetime.now(UTC)
            actor = ray.remote(num_cpus=1)(RankUsers).remote(settings.threads)
            ray.get(actor.load.remote(settings, log_df, as_of, None))
            users = log_df[C.USER_ID].unique().head(200).to_list()
            ray.get(actor.rank.remote(users, {}, {}, 10, as_of, None))
            n_items = load_table(ws, "items", columns=[C.ITEM_ID]).height
            print(f"memory: RankUsers actor ({n_items:,} items, {log_df.height:,} log rows) "
                  f"{rss(actor):,.0f} MiB RSS")
            ray.kill(actor)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path,
                    help="keep the prepared world here and reuse it (default: a temp dir)")
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--impressions", type=int, default=2_000_000)
    ap.add_argument("--train-impressions", type=int, default=100_000, help="the ranker's training log slice")
    ap.add_argument("--backfill-items", type=int, default=6_000)
    ap.add_argument("--rec-users", type=int, default=0, help="users to recommend for (0: all)")
    ap.add_argument("--feature-log-copies", type=int, default=1,
                    help="the feature build reads the world's log this many times over (users renamed)")
    ap.add_argument("--skip", default="", help="comma list of backfill,features,recommend")
    ap.add_argument("--polars-threads", type=int, default=1, help="POLARS_MAX_THREADS of every process")
    ap.add_argument("--memory", action="store_true", help="measure one actor of each kind's RSS")
    ap.add_argument("--prepare-only", action="store_true")
    ap.add_argument("--one", nargs=2, metavar=("JOB", "WORKERS"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.one:  # a single measurement, in the fresh process the driver below started
        home = args.home.resolve()
        os.environ["RECSYS_CONFIG"] = str(home / "none.toml")
        timings = run_one(home, args.one[0], int(args.one[1]), args, args.out)
        timings["self_cpu"] = time.process_time()
        print(json.dumps(timings))
        return

    jobs = [j for j in JOBS if j not in set(filter(None, args.skip.split(",")))]
    home = (args.home or Path(tempfile.mkdtemp(prefix="bench-ray-"))).resolve()
    os.environ["RECSYS_CONFIG"] = str(home / "none.toml")
    began = time.perf_counter()
    print(f"home {home}; load average {load()} on {os.cpu_count()} cores", flush=True)
    prepare(home, args, jobs)
    if args.prepare_only:
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "POLARS_MAX_THREADS": str(args.polars_threads),
           "RECSYS_CONFIG": str(home / "none.toml"), "RECSYS_PROGRESS": "0", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    cluster, address, started = start_cluster(env, 1024)
    print(f"Ray cluster (2 CPUs, 127.0.0.1) started in {started:.1f} s: what a job on a local instance "
          "(ray.address empty) pays on top", flush=True)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    checks: dict[str, str] = {}
    try:
        for job in jobs:
            results[job] = {}
            for label, workers in RUNS:
                run_env = {**env, "RAY_ADDRESS": address} if workers else env
                results[job][label] = measure(home, job, label, workers, args, run_env, cluster)
            checks[job] = same_output(home, job)
            print(f"{job}: {checks[job]}", flush=True)
        if args.memory:
            os.environ.update({"RAY_ADDRESS": address, "RAY_AUTH_MODE": "token"})
            worker_memory(home, jobs)
    finally:
        stop_head(cluster)

    sizes = {"backfill": f"{args.backfill_items:,} items",
             "features": f"{args.impressions * args.feature_log_copies:,} impressions",
             "recommend": f"{results.get('recommend', {}).get('local', {}).get('units', 0):,} users"}
    print("\n| job | size | local s | Ray 1 worker s | Ray 2 workers s | ray1 / local (overhead) | "
          "ray1 / ray2 (scaling) | cpu s local / ray1 / ray2 | load avg before local / ray1 / ray2 |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = [(job, job, "job") for job in results]
    if "features" in results:
        rows.insert(rows.index(("features", "features", "job")) + 1,
                    ("features (behaviour)", "features", "behaviour"))
    for name, job, key in rows:
        r = results[job]
        loc, r1, r2 = (r[label][key] for label in ("local", "ray1", "ray2"))
        labels = ("local", "ray1", "ray2") if key == "job" else ()
        cpu = " / ".join(f"{r[label]['cpu']:.0f}" for label in labels)
        loads = " / ".join(r[label]["load"] for label in labels)
        print(f"| {name} | {sizes[job]} | {loc:.1f} | {r1:.1f} | {r2:.1f} | {r1 / loc:.2f}x | "
              f"{r1 / r2:.2f}x | {cpu} | {loads} |")
    unit = {"backfill": "items", "features": "impressions", "recommend": "users"}
    rates = []
    for job, r in results.items():
        key = "behaviour" if job == "features" else "job"
        labels = ("local", "ray1", "ray2")
        per = " / ".join(f"{r[label]['units'] / r[label][key]:,.0f}" for label in labels)
        per_cpu = " / ".join(f"{r[label]['units'] / r[label]['cpu']:,.0f}" for label in labels)
        rates.append(f"{job} {per} {unit[job]}/s ({per_cpu} per CPU s)")
    print("\nrates local / ray1 / ray2 (features: its behaviour part): " + "; ".join(rates))
    print("outputs: " + "; ".join(f"{j} {c}" for j, c in checks.items()))
    print(f"load average at the end {load()} (1/5/15 min) on {os.cpu_count()} cores; "
          f"the whole run took {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
