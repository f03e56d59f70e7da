"""The Ray engine against the local path: backfill, batch recommendations and the feature build,
with 1 and 2 Ray workers, on a 100k-item embedded world, in one run.

For each job: local (this process, one thread) and Ray with `ray.workers` 1 and 2 on one local
Ray instance (2 CPUs, started once, its start timed apart: on a cluster it is already up). A
job's Ray time includes its actors' start (imports, model loads) and moving its data, which
is the overhead the ratio `ray1 / local` measures; `ray1 / ray2` is the scaling. The load
average is printed before and after each measurement: the machine has 2 cores shared with
other work, and a busy second core caps the scaling.

* world: `--items` items (no pictures), `--users` users, `--impressions` impressions;
* backfill: the first `--backfill-items` items with pictures rendered (128 px PNG), random
  `recsys-clip-tiny` weights, `--force`; local = one process (`clip.workers` 0, one core);
* recommend: a ranker trained on the world (clip-profile retrieval over synthetic 64-d item
  vectors), top 10 for the first `--rec-users` users;
* features: `build_features` vs `build_features_on_ray` over the whole log;
* `--memory`: the resident memory of one encoder actor (after a batch) and of one `RankUsers`
  actor (its `Recommender` over the whole catalogue, after ranking 200 users).

    OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 RECSYS_PROGRESS=0 .venv/bin/python benchmarks/ray.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# this file is named ray.py: without its folder on the path, `import ray` finds the library
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("RECSYS_PROGRESS", "0")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from recsys.config import Settings, load_settings  # noqa: E402
from recsys.data import columns as C  # noqa: E402
from recsys.data.config import WorldConfig  # noqa: E402
from recsys.data.tables import load_table, save_table  # noqa: E402
from recsys.data.world import build_truth, generate_world, render_images  # noqa: E402
from recsys.distributed.cluster import ray_session  # noqa: E402
from recsys.workspace import Workspace  # noqa: E402


def load() -> str:
    return "{:.1f}/{:.1f}/{:.1f}".format(*os.getloadavg())


def timed(fn: Callable[[], object]) -> tuple[float, str, str]:
    before = load()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t, before, load()


def with_ray(settings: Settings, workers: int) -> Settings:
    return settings.model_copy(update={"ray": settings.ray.model_copy(update={"workers": workers})})


def synthetic_vectors(items: pl.DataFrame, dim: int = 64, seed: int = 0) -> pl.DataFrame:
    """Unit item vectors clustered by category (the ranker's clip-profile candidates)."""
    rng = np.random.default_rng(seed)
    cats = items[C.CATEGORY].to_numpy()
    names = sorted(set(cats))
    centers = rng.normal(size=(len(names), dim))
    vecs = centers[np.searchsorted(names, cats)] + 0.7 * rng.normal(size=(items.height, dim))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    n = items.height
    return pl.DataFrame({C.ITEM_ID: items[C.ITEM_ID], C.EMBEDDING: vecs.astype(np.float32).tolist(),
                         C.IMAGE_SOURCE: ["none"] * n, C.MODEL_VERSION: ["synthetic"] * n})


def _actor_rss_mib(actor) -> float:
    import psutil
    import ray

    pid = ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))
    return psutil.Process(pid).memory_info().rss / 2**20


def worker_memory(settings: Settings, ws: Workspace, backfill_settings: Settings | None) -> None:
    """Print the RSS of one encoder actor and one RankUsers actor after some work."""
    from datetime import UTC, datetime

    import ray

    from recsys.embeddings.encoder import load_trained_encoder
    from training.backfill_ray import EncodeItems
    from training.recommend_ray import RankUsers

    if backfill_settings is not None:
        bws = Workspace.at(backfill_settings.home)
        items = load_table(bws, "items").head(64)
        version = load_trained_encoder(backfill_settings).version
        actor = ray.remote(num_cpus=1)(EncodeItems).remote(backfill_settings, version, datetime.now(UTC))
        batch = pl.DataFrame({"id": items[C.ITEM_ID], "text": items[C.DESCRIPTION], "uri": items[C.IMAGE_URI],
                              "source": items[C.IMAGE_SOURCE], "hash": items[C.ITEM_ID]}).to_arrow()
        ray.get(actor.__call__.remote(batch))
        print(f"memory: encoder actor (recsys-clip-tiny, float32) {_actor_rss_mib(actor):,.0f} MiB RSS")
        ray.kill(actor)
    log_df = load_table(ws, "impressions", columns=[C.USER_ID, C.ITEM_ID, C.EVENT_TIMESTAMP, C.CLICKED])
    as_of = datetime.now(UTC)
    actor = ray.remote(num_cpus=1)(RankUsers).remote(settings, log_df, as_of, None)
    users = log_df[C.USER_ID].unique().head(200).to_list()
    ray.get(actor.rank.remote(users, {}, {}, 10, as_of, None))
    n_items = load_table(ws, "items", columns=[C.ITEM_ID]).height
    print(f"memory: RankUsers actor ({n_items:,} items, {log_df.height:,} log rows) "
          f"{_actor_rss_mib(actor):,.0f} MiB RSS")
    ray.kill(actor)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--impressions", type=int, default=300_000)
    ap.add_argument("--backfill-items", type=int, default=3_000)
    ap.add_argument("--rec-users", type=int, default=2_000)
    ap.add_argument("--skip", default="", help="comma list of backfill,recommend,features")
    ap.add_argument("--memory", action="store_true", help="measure one actor of each kind's RSS")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    from recsys.embeddings.config import ClipConfig
    from recsys.embeddings.encoder import ClipEncoder

    root = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    base = {"tracking.tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
            "tracking.artifact_root": (root / "artifacts").as_uri(), "device": "cpu", "threads": 1,
            "ray.num_cpus": 2, "ray.object_store_mb": 1024}
    os.environ["RECSYS_CONFIG"] = str(root / "none.toml")
    world_cfg = WorldConfig(items=args.items, users=args.users, impressions=args.impressions, images=False)
    ws = Workspace.at(root / "world")
    t = time.perf_counter()
    generate_world(world_cfg, 42, ws)
    print(f"world: {args.items:,} items, {args.users:,} users, "
          f"{load_table(ws, 'impressions', columns=[C.USER_ID]).height:,} impressions "
          f"({time.perf_counter() - t:.1f} s); load average {load()} on {os.cpu_count()} cores")
    settings = load_settings(home=str(ws.root), **base)
    results: dict[str, dict[str, tuple[float, str, str]]] = {}

    # one local Ray instance for every Ray measurement
    t = time.perf_counter()
    with ray_session(settings.ray):
        print(f"local Ray instance (2 CPUs) started in {time.perf_counter() - t:.1f} s")

        if "backfill" not in skip:
            from training.backfill import backfill
            from training.backfill_ray import backfill_on_ray

            bws = Workspace.at(root / "backfill")
            items = load_table(ws, "items").head(args.backfill_items)
            uris = [str(bws.images_dir / f"{i}.png") for i in items[C.ITEM_ID].to_list()]
            items = items.with_columns(pl.Series(C.IMAGE_URI, uris), pl.lit("original").alias(C.IMAGE_SOURCE))
            render_images(build_truth(world_cfg, 42)[0], items, 128, 42, processes=1)
            save_table(bws, "items", items)
            ckpt = ClipEncoder(ClipConfig()).save_checkpoint(root / "clip.pt")
            bs = load_settings(home=str(bws.root), **base,
                               **{"clip.pretrained": str(ckpt), "clip.workers": 0})
            results["backfill"] = {
                "local": timed(lambda: backfill(bs, bws, force=True, push_to_feast=False)),
                "ray1": timed(lambda: backfill_on_ray(with_ray(bs, 1), bws, force=True, push_to_feast=False)),
                "ray2": timed(lambda: backfill_on_ray(with_ray(bs, 2), bws, force=True, push_to_feast=False)),
            }
            print(f"backfill ({args.backfill_items:,} items): {results['backfill']}")

        if "features" not in skip:
            from features.jobs import build_features
            from features.jobs_ray import build_features_on_ray
            from features.store import apply

            apply(settings)  # warm: Feast's import and first registry write are not the job's
            results["features"] = {
                "local": timed(lambda: build_features(settings, ws)),
                "ray1": timed(lambda: build_features_on_ray(with_ray(settings, 1), ws)),
                "ray2": timed(lambda: build_features_on_ray(with_ray(settings, 2), ws)),
            }
            print(f"features: {results['features']}")

        if "recommend" not in skip:
            from training.ranker import train_ranker
            from training.recommend import recommend_batch
            from training.recommend_ray import recommend_on_ray

            save_table(ws, "item_embeddings", synthetic_vectors(load_table(ws, "items")))
            t = time.perf_counter()
            train_ranker(settings, ws, None, promote=True, retrieval_uri="clip-profile")
            print(f"ranker trained in {time.perf_counter() - t:.1f} s")
            users = load_table(ws, "users", columns=[C.USER_ID])[C.USER_ID].head(args.rec_users).to_list()
            out = root / "recs"
            results["recommend"] = {
                "local": timed(lambda: recommend_batch(settings, ws, users, 10, None, out / "local.parquet")),
                "ray1": timed(lambda: recommend_on_ray(with_ray(settings, 1), ws, users, 10, None,
                                                       out / "ray1.parquet")),
                "ray2": timed(lambda: recommend_on_ray(with_ray(settings, 2), ws, users, 10, None,
                                                       out / "ray2.parquet")),
            }
            same = all(pl.read_parquet(out / f"{n}.parquet").equals(pl.read_parquet(out / "local.parquet"))
                       for n in ("ray1", "ray2"))
            print(f"recommend ({args.rec_users:,} users; identical output: {same}): {results['recommend']}")

        if args.memory:
            worker_memory(settings, ws, bs if "backfill" not in skip else None)

    sizes = {"backfill": f"{args.backfill_items:,} items", "features": "whole log",
             "recommend": f"{args.rec_users:,} users"}
    print("\n| job | size | local s | Ray 1 worker s | Ray 2 workers s | ray1 / local (overhead) | "
          "ray1 / ray2 (scaling) | load avg before local / ray1 / ray2 |")
    print("|---|---|---|---|---|---|---|---|")
    for job, r in results.items():
        loc, r1, r2 = r["local"][0], r["ray1"][0], r["ray2"][0]
        print(f"| {job} | {sizes[job]} | {loc:.1f} | {r1:.1f} | {r2:.1f} | {r1 / loc:.2f}x | "
              f"{r1 / r2:.2f}x | {r['local'][1]} / {r['ray1'][1]} / {r['ray2'][1]} |")
    print(f"\nload average at the end {load()} (1/5/15 min) on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
