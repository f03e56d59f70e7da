"""Offline A/B evaluation at scale: 1M logged impressions over 100k users, 1000 bootstrap replicates.

Times the two halves of `recsys evaluate ab` on synthetic arrays (policy ranking excluded):
- off-policy: estimator inputs for two deterministic slate policies + 5 estimators, each with
  per-arm intervals and a paired delta (users resampled);
- ranking: Recall/NDCG/Hit/MRR/MAP@10 + novelty per user and catalogue coverage, paired deltas.
Baseline, same run: the usual per-replicate loop (`idx = rng.integers(0, n, n)`; each statistic
recomputed on the resample), timed on a few replicates and scaled to the same count.

    OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 RECSYS_PROGRESS=0 .venv/bin/python benchmarks/evaluation.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from recsys.evaluation.ab import RankingData, Segment, compare_offline, compare_rankings
from recsys.evaluation.ope import build_slate_input, default_estimators, fit_position_based_model


def synthetic_log(n_users: int, n_items: int, slate: int, eps: float, seed: int):
    """One request per user, epsilon-greedy logging with exact marginal propensities."""
    rng = np.random.default_rng(seed)
    base = np.arange(slate)
    explore = rng.random((n_users, slate)) < eps
    random_items = rng.integers(slate, n_items, (n_users, slate))  # items outside the base slate
    items = np.where(explore, random_items, base[None, :])
    prop = np.where(explore, eps / (n_items - slate), 1 - eps)
    positions = np.broadcast_to(np.arange(slate), items.shape)
    theta = 1 / (1 + positions) ** 0.8
    rel = 0.05 + 0.3 * ((items * 2654435761 % 997) / 997.0)
    clicks = rng.random(items.shape) < theta * rel
    users = np.broadcast_to(np.arange(n_users)[:, None], items.shape)
    return users.ravel(), items.ravel(), positions.ravel(), clicks.ravel(), prop.ravel()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--slate", type=int, default=10)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--baseline-reps", type=int, default=20)
    args = ap.parse_args()
    n, m_items, slate, B = args.users, args.items, args.slate, args.bootstrap

    t0 = time.perf_counter()
    u, i, k, c, p = synthetic_log(n, m_items, slate, eps=0.3, seed=0)
    vocab = np.array([f"i{j:06d}" for j in range(m_items)])
    user_ids = np.array([f"u{j:07d}" for j in range(n)])
    item_ids = vocab[i]
    control = np.broadcast_to(vocab[:slate], (n, slate))
    treatment = vocab[(np.arange(n)[:, None] * 7 + np.arange(slate)[None, :] * 13) % m_items]
    t_data = time.perf_counter() - t0
    print(f"data: {len(c):,} impressions, {n:,} users, {m_items:,} items ({t_data:.1f} s to synthesise)")

    # --- off-policy ------------------------------------------------------------------------
    t0 = time.perf_counter()
    model = fit_position_based_model(i, k, c, m_items)
    ic, _ = build_slate_input(user_ids[u], item_ids, k, c, p, user_ids, control, model, vocab)
    it, _ = build_slate_input(user_ids[u], item_ids, k, c, p, user_ids, treatment, model, vocab)
    t_inputs = time.perf_counter() - t0
    t0 = time.perf_counter()
    offline = compare_offline(ic, it, default_estimators(), n_boot=B, seed=0)
    t_ope = time.perf_counter() - t0
    for o in offline:
        print(
            f"  {o.estimator:12s} control {o.control.estimate:.4f} "
            f"[{o.control.low:.4f}, {o.control.high:.4f}]"
            f"  treatment {o.treatment.estimate:.4f}  lift {o.delta.lift:+.1%} p={o.delta.p_value:.3g}"
        )
    print(
        f"off-policy: inputs (PBM fit + 2 policies) {t_inputs:.1f} s; 5 estimators x 2 arms, {B} replicates, "
        f"paired: {t_ope:.1f} s"
    )

    # --- ranking ---------------------------------------------------------------------------
    rng = np.random.default_rng(1)
    truth_items = rng.integers(0, m_items, n)
    ranked_c = np.broadcast_to(np.arange(10), (n, 10)).copy()
    ranked_t = (np.arange(n)[:, None] * 7 + np.arange(10)[None, :] * 13) % m_items
    hit = rng.random(n) < 0.2
    ranked_t[hit, rng.integers(0, 10, hit.sum())] = truth_items[hit]
    data = RankingData(
        np.arange(n), truth_items, n, m_items, click_counts=rng.poisson(5, m_items).astype(float)
    )
    t0 = time.perf_counter()
    ranking = compare_rankings(ranked_c, ranked_t, data, [Segment("all")], k=10, n_boot=B, seed=0)
    t_rank = time.perf_counter() - t0
    n_stats = len(ranking["all"])
    print(f"ranking: {n_stats} metrics (incl. coverage), {B} replicates, paired: {t_rank:.1f} s")
    total = t_inputs + t_ope + t_rank
    print(f"TOTAL evaluation (excl. synthesis): {total:.1f} s")

    # --- baseline: a loop over replicates --------------------------------------------------
    r = args.baseline_reps
    est_terms = [(e.terms(ic), e.terms(it)) for e in default_estimators()]
    metric_arrays = [(np.nan_to_num(ranked_c[:, 0] * 0.0), np.nan_to_num(ranked_t[:, 0] * 0.0))] * (
        n_stats - 1
    )
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    cluster_rows = np.argsort(ic.cluster, kind="stable").reshape(n, slate)  # rows of each user
    for _ in range(r):
        idx = rng.integers(0, n, n)
        rows = cluster_rows[idx].ravel()
        for (nc, dc), (nt, dt) in est_terms:
            _ = nc[rows].sum() / dc[rows].sum(), nt[rows].sum() / dt[rows].sum()
        for a, b in metric_arrays:
            _ = a[idx].mean(), b[idx].mean()
        _ = np.unique(ranked_c[idx]).size, np.unique(ranked_t[idx]).size
    t_loop = (time.perf_counter() - t0) / r * B
    print(
        f"baseline loop over replicates (timed on {r}, scaled to {B}): {t_loop:.1f} s  "
        f"-> vectorised is {t_loop / (t_ope + t_rank):.1f}x faster (bootstrap parts)"
    )


if __name__ == "__main__":
    main()
