"""What the server's softmax exploration costs: expected NDCG@10 and CPU per request.

    .venv/bin/python -m benchmarks.exploration --home <trained workspace> [--temperatures 0.25,0.5,1,2]

On a workspace the user's commands trained (e.g. `make demo`'s, whose last
`evaluation.holdout_days` no model saw), each held-out user gets the champion ranker's top
`--pool` (the server's candidates for k = 10: 30) as of the window's start. The expected NDCG@10
of a softmax (Plackett-Luce) slate over them is exact from its marginals:
E[DCG] = sum_i sum_k mu(i, k) rel_i / log2(k + 2); rel_i = 1 for the user's held-out clicks. It
is compared with the deterministic top 10 (`serving.exploration = none`) on the same users, and
`choose_slate`'s CPU time per request with each policy is measured in the same run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import polars as pl

from recsys.config import load_settings
from recsys.data import columns as C
from recsys.evaluation import plackett_luce as PL
from recsys.workspace import Workspace
from serving.exploration import choose_slate
from training.evaluate import load_log, resolve_policy, split_log

K = 10


def expected_ndcg(mu: np.ndarray, relevant: np.ndarray) -> float:
    """E[NDCG@K] of a slate with marginals mu (pool, K) and binary relevance (pool,), given the
    user's number of relevant items for the ideal DCG (held-out clicks outside the pool count)."""
    discount = 1.0 / np.log2(np.arange(K) + 2)
    return float((mu * relevant[:, None]).sum(axis=0) @ discount)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--temperatures", default="0.25,0.5,1,2")
    ap.add_argument("--pool", type=int, default=30)
    ap.add_argument("--users", type=int, default=1000)
    args = ap.parse_args()
    settings = load_settings(home=str(args.home))
    ws = Workspace.at(settings.home)
    events = load_log(ws, None)
    days = settings.evaluation.holdout_days or 7.0
    history, holdout, split = split_log(events, days)
    seen = history.filter(pl.col(C.CLICKED)).select(C.USER_ID, C.ITEM_ID).unique()
    truth = (holdout.filter(pl.col(C.CLICKED)).select(C.USER_ID, C.ITEM_ID).unique()
             .join(seen, on=[C.USER_ID, C.ITEM_ID], how="anti"))
    users = np.sort(truth[C.USER_ID].unique().to_numpy().astype(str))
    users = np.random.default_rng(0).choice(users, min(args.users, len(users)), replace=False)
    relevant = {u: set(g[C.ITEM_ID].to_list()) for (u,), g in truth.group_by(C.USER_ID)}
    policy, label = resolve_policy(settings, "models:/ranker@champion", history)
    t = time.perf_counter()
    pools = policy.scored(users, split, args.pool)
    print(f"{label}: top {args.pool} of {len(users):,} held-out users ({days:g} days) in "
          f"{time.perf_counter() - t:.0f} s")
    temps = [float(x) for x in args.temperatures.split(",")]
    ndcg = {T: [] for T in ["none", *temps]}
    idcg_of = 1.0 / np.log2(np.arange(K) + 2)
    for user, pool in zip(users, pools, strict=True):
        if len(pool) < K:
            continue
        rel = np.array([item in relevant[user] for item, _ in pool], dtype=np.float64)
        idcg = idcg_of[: min(K, len(relevant[user]))].sum()
        ndcg["none"].append(float(rel[:K] @ idcg_of) / idcg)
        scores = np.array([[s for _, s in pool]])
        for T in temps:
            ndcg[T].append(expected_ndcg(PL.marginals(scores, T, K)[0], rel) / idcg)
    base = float(np.mean(ndcg["none"]))
    spread = np.array([[s for _, s in p][0] - [s for _, s in p][K - 1] for p in pools if len(p) >= K])
    print(f"ranker score gap between ranks 1 and {K}: median {np.median(spread):.2f}")
    print(f"{'exploration':<16} {'NDCG@10':>8} {'vs none':>8} {'CPU ms/request':>15}")
    sample = pools[0]
    for T in ["none", *temps]:
        mode = "none" if T == "none" else "softmax"
        temp = 1.0 if T == "none" else T
        rng = np.random.default_rng(0)
        t = time.process_time()
        for _ in range(200):
            choose_slate(sample, K, mode, temp, rng)
        ms = (time.process_time() - t) / 200 * 1000
        value = float(np.mean(ndcg[T]))
        name = "none" if T == "none" else f"softmax T={T:g}"
        print(f"{name:<16} {value:>8.4f} {value / base:>7.1%} {ms:>15.2f}")


if __name__ == "__main__":
    main()
