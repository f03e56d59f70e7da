"""EASE fit time and memory at catalogue size n: our Cholesky path against the textbook inverse.

    OMP_WAIT_POLICY=passive RECSYS_PROGRESS=0 .venv/bin/python benchmarks/ease.py --items 10000

1. A synthetic click log: `--users` users, `--items` items, Zipf-like item popularity, about
   `--clicks-per-user` distinct clicks each.
2. `recsys.retrieval.ease.EaseModel.fit` (Gram matrix XᵀX, LAPACK `spotrf` + `spotri`, B from P),
   timed, with the peak of memory allocated through numpy (tracemalloc) and the process's peak RSS.
3. Baseline in the same run: the formula as usually written, `P = np.linalg.inv(G + λI)` in
   float64, B = I − P / diag(P); checked equal to ours (max |ΔB|) and timed the same way.
Goal (issue 14): a 10k-item fit within 30 s on 2 cores; memory about 8 n² bytes (G, then P, then
B in one float32 buffer, plus one temporary).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from recsys.data import columns as C  # noqa: E402
from recsys.retrieval.ease import EaseModel, click_matrix  # noqa: E402


def synthetic_clicks(users: int, items: int, per_user: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, items + 1) ** 0.8
    p /= p.sum()
    u = np.repeat(np.arange(users), per_user)
    i = rng.choice(items, size=len(u), p=p)
    return pl.DataFrame({C.USER_ID: [f"u{x}" for x in u], C.ITEM_ID: [f"i{x}" for x in i]}).unique()


def textbook(x, lam: float) -> np.ndarray:
    g = (x.T @ x).toarray().astype(np.float64)
    p = np.linalg.inv(g + lam * np.eye(g.shape[0]))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


def measure(fn) -> tuple[object, float, float]:
    tracemalloc.start()
    t = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, seconds, peak / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--clicks-per-user", type=int, default=30)
    ap.add_argument("--lam", type=float, default=400.0)
    args = ap.parse_args()
    clicks = synthetic_clicks(args.users, args.items, args.clicks_per_user)
    threads = os.environ.get("OMP_NUM_THREADS", "all")
    print(f"{clicks.height:,} distinct clicks, {args.users:,} users, "
          f"{clicks[C.ITEM_ID].n_unique():,} items clicked; OMP threads: {threads}")
    model, ours_s, ours_mib = measure(lambda: EaseModel.fit(clicks, args.lam, max_items=args.items))
    n = len(model.item_ids)
    print(f"recsys EaseModel.fit: {ours_s:.1f} s, numpy peak {ours_mib:,.0f} MiB "
          f"(8 n² bytes = {8 * n * n / 2**20:,.0f} MiB at n = {n:,})")
    x, _ = click_matrix(clicks, model.item_ids)
    base, base_s, base_mib = measure(lambda: textbook(x, args.lam))
    diff = float(np.abs(base - model.weights).max())
    print(f"baseline np.linalg.inv (float64): {base_s:.1f} s, numpy peak {base_mib:,.0f} MiB; "
          f"max |ΔB| {diff:.1e}")
    print(f"ratio: {base_s / ours_s:.2f}x faster, {base_mib / ours_mib:.2f}x less memory; "
          f"process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
