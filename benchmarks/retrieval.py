"""Two-tower training throughput and item-index search, each against a baseline in the same run.

Training (end to end: point-in-time examples built from a click frame with polars, then one
epoch of the real loop at batch 1024, progress bar off): samples/s of the shipped setup
(sparse id tables with SparseAdam, bf16 autocast, CLIP reduced to 128-d) against the plain
setup (dense id tables with AdamW, float32, 512-d CLIP inputs).

Index (one thread, one query at a time, k=100): build time, p50/p99 query latency and
Recall@100 against exact search for exact numpy, faiss HNSW and faiss IVF-Flat, on clustered
low-rank vectors (like learned item vectors; uniform random vectors are far harder for ANN).

    OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 RECSYS_PROGRESS=0 .venv/bin/python benchmarks/retrieval.py \
        [--clicks 200000] [--sizes 100000,1000000] [--hnsw-max 100000]
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import UTC, datetime, timedelta

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("RECSYS_PROGRESS", "0")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import torch  # noqa: E402

from recsys.data import columns as C  # noqa: E402
from recsys.retrieval.index import ItemIndex  # noqa: E402
from recsys.retrieval.model import ItemContent, TowerSpec, TwoTower  # noqa: E402
from recsys.retrieval.train import build_examples, fit, item_log_q  # noqa: E402


def synthetic_clicks(n_clicks: int, n_items: int, n_users: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    pop = rng.zipf(1.3, n_items).astype(float)
    items = rng.choice(n_items, n_clicks, p=pop / pop.sum())
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    return pl.DataFrame({
        C.USER_ID: [f"u{u}" for u in rng.integers(0, n_users, n_clicks)],
        C.ITEM_ID: [f"i{i}" for i in items],
        C.EVENT_TIMESTAMP: pl.Series([t0 + timedelta(seconds=int(s))
                                      for s in rng.integers(0, 28 * 86400, n_clicks)],
                                     dtype=pl.Datetime("us", "UTC")),
    })


def train_throughput(clicks: pl.DataFrame, n_items: int, clip_dim: int, fast: bool,
                     seed: int = 0) -> tuple[float, float]:
    """(samples per wall second, samples per CPU second of this process)."""
    rng = np.random.default_rng(seed)
    clip = rng.normal(size=(n_items + 1, clip_dim)).astype(np.float32)
    clip /= np.linalg.norm(clip, axis=1, keepdims=True)
    content = ItemContent(clip, rng.integers(0, 20, n_items + 1), rng.integers(0, 9, n_items + 1),
                          rng.integers(0, 4, n_items + 1), np.ones(n_items + 1, bool))
    spec = TowerSpec(n_items=n_items, clip_dim=clip_dim, n_user_features=10, n_categories=20,
                     n_price_buckets=9, n_image_sources=4)
    torch.manual_seed(seed)
    model = TwoTower(spec, content)
    if not fast:  # dense id tables: every step updates (and Adam-moments) the whole table
        model.user_id.sparse = False
        model.item_id.sparse = False
        model.sparse_parameters = lambda: []  # type: ignore[method-assign]
    index = {f"i{i}": i + 1 for i in range(n_items)}
    start, cpu = time.perf_counter(), time.process_time()
    feats = rng.normal(size=(clicks.height, 10)).astype(np.float32)
    examples = build_examples(clicks, index, 20, spec.user_buckets, feats)
    fit(model, examples, item_log_q(examples.item, n_items), epochs=1, batch_size=1024, learning_rate=3e-3,
        seed=seed, precision="bfloat16" if fast else "float32")
    return clicks.height / (time.perf_counter() - start), clicks.height / (time.process_time() - cpu)


def clustered_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(n // 200, 10), 16)) @ rng.normal(size=(16, dim))
    x = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.normal(size=(n, dim)) @ \
        rng.normal(size=(dim, dim)) / np.sqrt(dim)
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def time_queries(index: ItemIndex, queries: np.ndarray, k: int) -> tuple[float, float, np.ndarray]:
    lat, found = [], []
    for q in queries:
        t = time.perf_counter()
        pos, _ = index.search_positions(q[None, :], k)
        lat.append(time.perf_counter() - t)
        found.append(pos[0])
    lat_ms = np.array(lat) * 1e3
    return float(np.percentile(lat_ms, 50)), float(np.percentile(lat_ms, 99)), np.array(found)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, exact, strict=True)]))


def index_bench(n: int, dim: int, n_queries: int, k: int, hnsw_max: int) -> None:
    vecs = clustered_vectors(n, dim, seed=1)
    rng = np.random.default_rng(2)
    queries = vecs[rng.integers(0, n, n_queries)] + 0.3 * rng.normal(size=(n_queries, dim)).astype(np.float32)
    ids = [f"i{i}" for i in range(n)]
    t = time.perf_counter()
    exact = ItemIndex.build(ids, vecs, "bench", kind="exact")
    build = time.perf_counter() - t
    p50, p99, truth = time_queries(exact, queries, k)
    print(f"{n:>9,} x {dim}  exact       build {build:6.1f} s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  "
          f"recall@{k} 1.000")
    kinds = [("ivf", {"nprobe": p}) for p in (16, 32, 64)]
    if n <= hnsw_max:
        kinds = [("hnsw", {"ef_search": e}) for e in (128, 256, 512)] + kinds
    built: dict[str, tuple[ItemIndex, float]] = {}
    for kind, params in kinds:
        if kind not in built:
            t = time.perf_counter()
            built[kind] = (ItemIndex.build(ids, vecs, "bench", kind=kind), time.perf_counter() - t)
        index, build = built[kind]
        index.set_search_params(**params)
        a50, a99, found = time_queries(index, queries, k)
        label = f"{kind} {next(iter(params.values()))}"
        print(f"{n:>9,} x {dim}  {label:<11} build {build:6.1f} s  p50 {a50:7.2f} ms  p99 {a99:7.2f} ms  "
              f"recall@{k} {recall(found, truth):.3f}  speed-up x{p50 / a50:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clicks", type=int, default=200_000)
    ap.add_argument("--items", type=int, default=20_000, help="catalogue size for the training run")
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--sizes", default="100000,1000000", help="index sizes")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--hnsw-max", type=int, default=100_000,
                    help="largest catalogue to build HNSW for (1M takes minutes to build)")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print(f"threads {torch.get_num_threads()}")
    if not args.skip_train:
        clicks = synthetic_clicks(args.clicks, args.items, args.users)
        fast = train_throughput(clicks, args.items, 128, fast=True)
        slow = train_throughput(clicks, args.items, 512, fast=False)
        print(f"training, {args.clicks:,} clicks, batch 1024, end to end (wall / per CPU-second): shipped "
              f"{fast[0]:,.0f} / {fast[1]:,.0f} samples/s; baseline (dense AdamW, fp32, 512-d CLIP) "
              f"{slow[0]:,.0f} / {slow[1]:,.0f} samples/s: x{fast[1] / slow[1]:.1f} per CPU-second")
    for n in (int(s) for s in args.sizes.split(",") if s):
        index_bench(n, args.dim, args.queries, 100, args.hnsw_max)


if __name__ == "__main__":
    main()
