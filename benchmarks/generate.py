"""How fast the embedded world generates, against a per-request Python loop baseline.

    OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 RECSYS_PROGRESS=0 \
        .venv/bin/python benchmarks/generate.py [--scale 0.1]

`--scale 1` is the issue's target (100k items x 1M users x 20M impressions, --no-images).
Figures: seconds and rows/s of the vectorised chunked generator; rows/s of a baseline that
simulates the same logging policy one request at a time (same truth, same click model); peak
resident memory; images/s rendering with 1 and 2 processes.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from recsys.data.config import WorldConfig
from recsys.data.world import build_truth, generate_world, render_images
from recsys.workspace import Workspace


def baseline_rows_per_s(truth, n_requests: int = 2000) -> float:
    """The logging policy one request at a time (what a straightforward simulator does): draw
    the Plackett-Luce slate slot by slot, look up its propensities (the day's marginals, computed
    once a day as in the vectorised path), draw the clicks."""
    rng = np.random.default_rng(0)
    S = truth.slate_size
    start = time.perf_counter()
    t0 = int(truth.start.timestamp() * 1e6)
    span = int((truth.end - truth.start).total_seconds() * 1e6)
    rows = []
    cdf = np.cumsum(truth.user_activity)
    for t in np.sort(t0 + (rng.random(n_requests) * span).astype(np.int64)):  # in time order, as logged
        u = min(int(np.searchsorted(cdf, rng.random())), truth.n_users - 1)
        day = int(truth.day_index(int(t)))
        scores = truth.logging_scores(day)[truth.user_segment[u]]
        mu = truth.logging_marginals(day)[truth.user_segment[u]]
        weights = np.exp((scores - scores.max()) / truth.temperature)
        for k in range(S):
            i = int(rng.choice(len(weights), p=weights / weights.sum()))
            weights[i] = 0.0
            rel = float(truth.relevance_idx(np.array(u), np.array(i)))
            rows.append((u, i, k, t, rng.random() < truth.position_bias[k] * rel, mu[i, k], mu[i]))
    return len(rows) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--scale", type=float, default=0.1, help="fraction of 100k items x 1M users x 20M impressions"
    )
    ap.add_argument("--images", type=int, default=1000, help="pictures to render per process count")
    args = ap.parse_args()
    cfg = WorldConfig(
        items=int(100_000 * args.scale),
        users=int(1_000_000 * args.scale),
        impressions=int(20_000_000 * args.scale),
        images=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.at(Path(tmp) / "ws")
        result = generate_world(cfg, 0, ws)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        size = ws.table("impressions").stat().st_size / 2**20
        fast = result.impressions / result.seconds
        print(
            f"world {cfg.items:,} items x {cfg.users:,} users x {result.impressions:,} impressions "
            "(--no-images): "
            f"{result.seconds:.1f} s, {fast:,.0f} rows/s overall; impressions.parquet {size:,.0f} MiB; "
            f"peak RSS {rss:,.0f} MiB"
        )
        truth, _ = build_truth(cfg, 0)
        slow = baseline_rows_per_s(truth)
        print(
            f"baseline (one request at a time): {slow:,.0f} rows/s -> "
            f"vectorised/baseline = {fast / slow:,.0f}x"
        )

        import polars as pl

        img_cfg = WorldConfig(items=args.images, users=10, impressions=100)
        small, _ = build_truth(img_cfg, 0)
        uris = [str(ws.images_dir / f"bench{i}.png") for i in range(args.images)]
        items = pl.DataFrame({"image_uri": uris})
        rates = {}
        for procs in (1, 2):
            t = time.perf_counter()
            render_images(small, items, 128, 0, processes=procs)
            rates[procs] = args.images / (time.perf_counter() - t)
        print(
            f"images 128 px: {rates[1]:,.0f} img/s (1 process), {rates[2]:,.0f} img/s (2 processes), "
            f"ratio {rates[2] / rates[1]:.2f}x"
        )


if __name__ == "__main__":
    main()
