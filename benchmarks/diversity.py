"""What diversity costs: NDCG@10 against intra-list diversity and coverage, per `diversity` value.

    .venv/bin/python -m benchmarks.quality --protocols world --home <folder>   # fills a workspace
    RECSYS_HOME=<folder>/world .venv/bin/python benchmarks/diversity.py --window-days 7

On a workspace whose models never saw the last `--window-days` of the log (the quality
benchmark's `world` protocol trains with `evaluation.holdout_days = 7`), every user is
recommended k items as of the window's start through `Recommender.recommend` with
`Rules(diversity=λ)` (maximal marginal relevance over the CLIP item vectors, `recsys.rules`).
Per λ: NDCG@10 on the window's clicks (`recsys.evaluation.metrics`, items clicked before
excluded), intra-list diversity (mean pairwise 1 − cosine of the items' CLIP vectors within a
list), distinct categories per list, and catalogue coverage. The baseline is λ = 0 (the
ranker's order), measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("RECSYS_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from recsys.config import load_settings  # noqa: E402
from recsys.data import columns as C  # noqa: E402
from recsys.data.splits import before_holdout  # noqa: E402
from recsys.data.tables import load_table  # noqa: E402
from recsys.evaluation.metrics import ranking_metrics_from_sets  # noqa: E402
from recsys.recommender import Recommender, user_state  # noqa: E402
from recsys.rules import Rules  # noqa: E402
from recsys.workspace import Workspace  # noqa: E402


def intra_list_diversity(rows: np.ndarray, emb: np.ndarray) -> float:
    """Mean over pairs of 1 − cos(v_i, v_j) of a list's item vectors (L2-normalised)."""
    v = emb[rows]
    if len(v) < 2:
        return float("nan")
    sims = v @ v.T
    iu = np.triu_indices(len(v), 1)
    return float(np.mean(1.0 - sims[iu]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window-days", type=float, default=7.0)
    ap.add_argument("--values", default="0,0.1,0.3,0.5,0.7,0.9")
    ap.add_argument("--users", type=int, default=2000, help="a seeded sample of the window's users")
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()
    settings = load_settings()
    ws = Workspace.at(settings.home)
    log = load_table(ws, "impressions", columns=[C.USER_ID, C.ITEM_ID, C.EVENT_TIMESTAMP, C.CLICKED])
    history, start = before_holdout(log, args.window_days)
    if start is None:
        raise SystemExit("--window-days must be > 0")
    window = log.filter(pl.col(C.CLICKED) & (pl.col(C.EVENT_TIMESTAMP) >= start))
    rec = Recommender.load(settings, as_of=start)
    state = user_state(history, start, rec.history)
    truth = window.group_by(C.USER_ID).agg(pl.col(C.ITEM_ID).unique())
    truth_by = dict(zip(truth[C.USER_ID].to_list(), truth[C.ITEM_ID].to_list(), strict=True))
    users = sorted(u for u in truth_by if u in state)
    users = list(np.random.default_rng(settings.seed).permutation(users)[:args.users])
    emb = rec.items.emb
    print(f"{len(users):,} users with clicks in the window from {start:%Y-%m-%d %H:%M}; k = {args.k}")
    print("| diversity | NDCG@10 | vs 0 | intra-list diversity | categories per list | coverage |")
    print("| --- | --- | --- | --- | --- | --- |")
    base = None
    for value in (float(v) for v in args.values.split(",")):
        rules = Rules(diversity=value)
        lists, relevant, ild, cats, shown = [], [], [], [], set()
        for u in users:
            recent, seen = state[u]
            out = rec.recommend(u, args.k, as_of=start, history=recent, seen=seen, rules=rules)
            ids = [i for i, _, _ in out.items]
            rows = rec.items.rows(ids)
            lists.append(ids)
            relevant.append(set(truth_by[u]) - seen)
            ild.append(intra_list_diversity(rows, emb))
            cats.append(len(set(rec.items.category[rows].tolist())))
            shown.update(ids)
        ndcg = float(np.nanmean(ranking_metrics_from_sets(lists, relevant, ks=(10,))["ndcg@10"]))
        base = ndcg if base is None else base
        print(f"| {value:g} | {ndcg:.4f} | {ndcg / base:.3f} | {np.nanmean(ild):.3f} | {np.mean(cats):.2f} | "
              f"{len(shown) / len(rec.items):.3f} |", flush=True)


if __name__ == "__main__":
    main()
