"""Recommendation quality on MovieLens 100K through the commands a user runs, against baselines
measured in the same run, on the same split, with the same metric code.

    .venv/bin/python -m benchmarks.quality --protocols recbole [--home DIR] [--out FILE]

Per protocol (every rating is a positive click):

1. Split the ratings: `recbole` = per-user random 80/10/10 (`recsys.data.splits`); `temporal` =
   each user's last 10% by time (at least one). known = train + valid, test = test.
2. In a fresh workspace run the `recsys` executable of this interpreter's environment, one
   subprocess per stage, each timed: `import movielens`, `import impressions known.parquet
   --replace` (the known clicks replace the rating log, as a plain click-only log: user_id, item_id,
   event_timestamp), `clip finetune`, `backfill`, `features build`, `features
   materialize`, `train retrieval`, `train ranker --promote`, `recommend --all --k 10`.
3. Score the recommendations on the test part with `recsys.retrieval.evaluate.evaluate_methods`
   (known items excluded; re-clicks of known items and users without truth left out), plus
   catalogue coverage@10 over the evaluated users and the number of recommended items the user
   already has in the known part (should be 0).
4. Baselines on the same split: most-popular over the known part, EASE (λ chosen on a
   per-user 90/10 split of the known part, then fitted on all of it), and the two candidate
   sources alone: the registered two-tower and CLIP-only (user = mean CLIP vector of their
   known items), from the workspace the commands filled.

Outputs go to the workspace (`<home>/<protocol>`; a new temp folder without `--home`); the
table is printed and written as JSON to `--out` (default `<home>/quality.json`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from recsys.data import columns as C  # noqa: E402
from recsys.data.splits import random_ratio_split  # noqa: E402
from recsys.evaluation.metrics import top_k  # noqa: E402
from recsys.retrieval.evaluate import Scorer, evaluate_methods, popularity_scorer  # noqa: E402

K = 10
METRICS = ("recall", "ndcg", "hit", "mrr")
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k"
PUBLISHED = {"recbole": "RecBole 1.2.1 on this protocol (NDCG@10): Pop 0.1005, ItemKNN 0.2834, BPR 0.2928, "
                        "LightGCN 0.3038; tuned LightGCN 0.3142"}


# ---------------------------------------------------------------- splits (pure)

def last_fraction_split(clicks: pl.DataFrame, fraction: float,
                        seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(known, test): each user's last floor(fraction * n) clicks by time (at least one, none for
    users with a single click) are the test; equal timestamps are ordered by a seeded random key."""
    key = np.random.default_rng(seed).random(clicks.height)
    n = pl.len().over(C.USER_ID)
    ranked = (clicks.with_columns(pl.Series("__key", key))
              .sort([C.USER_ID, C.EVENT_TIMESTAMP, "__key"])
              .with_columns((n - pl.int_range(pl.len()).over(C.USER_ID)).alias("__from_end"),
                            pl.when(n > 1).then(pl.max_horizontal((n * fraction).floor().cast(pl.Int64),
                                                                  pl.lit(1)))
                            .otherwise(0).alias("__n_test")))
    is_test = pl.col("__from_end") <= pl.col("__n_test")
    drop = ["__key", "__from_end", "__n_test"]
    return ranked.filter(~is_test).drop(drop), ranked.filter(is_test).drop(drop)


def split_protocol(clicks: pl.DataFrame, protocol: str, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(known, test) of a protocol: the user gives the system everything except the test."""
    if protocol == "recbole":
        s = random_ratio_split(clicks, (0.8, 0.1, 0.1), seed=seed)
        return pl.concat([s.train, s.valid]), s.test
    if protocol == "temporal":
        return last_fraction_split(clicks, 0.1, seed)
    raise ValueError(f"unknown protocol '{protocol}'; expected recbole or temporal")


# ---------------------------------------------------------------- scoring (pure)

def recs_scorer(recs: pl.DataFrame, item_ids: Sequence[str]) -> Scorer:
    """A scorer over all items from a (user_id, item_id, rank) list: recommended items score by
    rank (best highest), every other item -inf (never ranked)."""
    pos = {item: i for i, item in enumerate(item_ids)}
    by_user: dict[str, list[str]] = {}
    for u, item in recs.sort([C.USER_ID, "rank"]).select(C.USER_ID, C.ITEM_ID).iter_rows():
        by_user.setdefault(u, []).append(item)

    def score(users: Sequence[str]) -> np.ndarray:
        out = np.full((len(users), len(item_ids)), -np.inf)
        for r, u in enumerate(users):
            items = by_user.get(u, [])
            for rank, item in enumerate(items):
                if item in pos:  # an item outside the catalogue cannot be a hit
                    out[r, pos[item]] = len(items) - rank
        return out

    return score


def coverage(scorer: Scorer, users: Sequence[str], known: pl.DataFrame, item_ids: Sequence[str],
             k: int = K) -> float:
    """Distinct items in the users' top k (known items excluded) / catalogue items."""
    uidx = {u: i for i, u in enumerate(users)}
    pos = {item: i for i, item in enumerate(item_ids)}
    seen = known.filter(pl.col(C.USER_ID).is_in(list(users)) & pl.col(C.ITEM_ID).is_in(list(item_ids)))
    rows = np.array([uidx[u] for u in seen[C.USER_ID].to_list()], dtype=np.int64)
    cols = np.array([pos[i] for i in seen[C.ITEM_ID].to_list()], dtype=np.int64)
    ranked = top_k(np.asarray(scorer(users), dtype=np.float64), k, rows, cols)
    return len(np.unique(ranked[ranked >= 0])) / len(item_ids)


def known_in_recs(recs: pl.DataFrame, known: pl.DataFrame) -> int:
    """Recommended (user, item) pairs the user already has in the known part."""
    return recs.join(known.select(C.USER_ID, C.ITEM_ID).unique(), on=[C.USER_ID, C.ITEM_ID]).height


def score_methods(methods: dict[str, Scorer], known: pl.DataFrame, test: pl.DataFrame,
                  item_ids: Sequence[str], k: int = K, segments: Sequence[str] = ("all",),
                  available: np.ndarray | None = None) -> list[dict]:
    """One row per (segment, method): users, Recall/NDCG/Hit/MRR@k, and coverage@k on `all`,
    by one code path (`evaluate_methods`; cold items are ranked among the cold items)."""
    result = evaluate_methods(methods, known, test, item_ids, ks=(k,), segments=segments, available=available)
    rows = []
    for segment in segments:
        users = result.users[segment]
        for name, scorer in methods.items():
            row = {"segment": segment, "method": name, "users": len(users)}
            row.update({f"{m}@{k}": result.value(name, segment, f"{m}@{k}") for m in METRICS})
            row[f"coverage@{k}"] = coverage(scorer, users, known, item_ids, k) if segment == "all" else \
                float("nan")
            rows.append(row)
    return rows


def ease_baseline(known: pl.DataFrame, item_ids: Sequence[str], lambdas: Sequence[float],
                  seed: int) -> tuple[Scorer, float, dict[float, float]]:
    """EASE with λ chosen on a per-user 90/10 split of the known part, fitted on all of it.
    Returns (scorer, λ, {λ: validation NDCG@10})."""
    from recsys.retrieval.ease import EaseModel, choose_lambda
    from training.ease import ease_scorer

    inner = random_ratio_split(known, (0.9, 0.1, 0.0), seed=seed + 1)
    lam, table = choose_lambda(inner.train, inner.valid, lambdas, k=K)
    return ease_scorer(EaseModel.fit(known, lam), known, item_ids), lam, table


def source_scorers(ws: Path, known: pl.DataFrame, item_ids: Sequence[str]) -> dict[str, Scorer]:
    """The registered two-tower and CLIP-only over `item_ids`, from the filled workspace."""
    from recsys import tracking
    from recsys.config import load_settings
    from recsys.data.tables import load_table
    from recsys.retrieval.artifact import RetrievalModel
    from recsys.retrieval.data import stack_vectors
    from recsys.retrieval.evaluate import clip_scorer, recent_histories
    from recsys.workspace import Workspace

    model = RetrievalModel.load(tracking.download_model(load_settings(home=ws),
                                                        "models:/retrieval@champion")[0])
    pos = {item: i for i, item in enumerate(item_ids)}
    cols = np.array([pos.get(i, -1) for i in model.item_ids], dtype=np.int64)

    def two_tower(users: Sequence[str]) -> np.ndarray:
        out = np.full((len(users), len(item_ids)), -np.inf)
        vecs = model.user_vectors(list(users), recent_histories(known, users, model.history))
        out[:, cols[cols >= 0]] = (vecs @ model.item_vectors.T)[:, cols >= 0]
        return out

    emb = load_table(Workspace.at(ws), "item_embeddings").select(C.ITEM_ID, C.EMBEDDING)
    aligned = pl.DataFrame({C.ITEM_ID: list(item_ids)}).join(emb, on=C.ITEM_ID, how="left",
                                                             maintain_order="left")
    return {"two-tower only": two_tower,
            "CLIP-content only": clip_scorer(known, item_ids, stack_vectors(aligned[C.EMBEDDING].to_list()))}


def markdown(rows: list[dict], k: int = K) -> str:
    cols = [f"{m}@{k}" for m in (*METRICS, "coverage")]
    head = ["method", *(c.replace("recall", "Recall").replace("ndcg", "NDCG").replace("hit", "Hit")
                        .replace("mrr", "MRR") for c in cols)]
    segmented = len({r["segment"] for r in rows}) > 1
    if segmented:
        head = ["segment", *head]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join([*([r["segment"]] if segmented else []), r["method"],
                                 *(f"{r[c]:.4f}" if r[c] == r[c] else "" for c in cols)]) + " |"
              for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- the user's commands (side effects)

def run_stage(name: str, args: list[str], ws: Path, env: dict[str, str], timings: dict[str, float]) -> None:
    """Run `recsys ARGS` in `ws`; print one timed line; on failure print the stderr tail and exit."""
    exe = Path(sys.executable).parent / "recsys"
    t = time.perf_counter()
    proc = subprocess.run([str(exe), *args], cwd=ws, env=env, capture_output=True, text=True)
    timings[name] = time.perf_counter() - t
    logs = ws / "logs"
    logs.mkdir(exist_ok=True)
    (logs / f"{len(timings):02d}-{name.replace(' ', '-')}.log").write_text(proc.stdout + proc.stderr)
    done = [line.strip() for line in proc.stderr.splitlines() if line.lstrip().startswith("✓")]
    print(f"  {name:<22} {timings[name]:7.1f} s  {done[-1] if done else ''}", flush=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        print(f"\n`recsys {' '.join(args)}` failed (exit {proc.returncode}):\n{tail}", file=sys.stderr)
        raise SystemExit(1)


def run_pipeline(ws: Path, env: dict[str, str], timings: dict[str, float], recommend: list[str]) -> None:
    """The user's commands from CLIP to batch recommendations, with default settings."""
    for name, args in (("clip finetune", ["clip", "finetune"]), ("backfill", ["backfill"]),
                       ("features build", ["features", "build"]),
                       ("features materialize", ["features", "materialize"]),
                       ("train retrieval", ["train", "retrieval"]),
                       ("train ranker", ["train", "ranker", "--promote"]),
                       ("recommend", ["recommend", "--all", "--k", str(K), *recommend])):
        run_stage(name, args, ws, env, timings)


def run_protocol(protocol: str, data: Path, ws: Path, seed: int, lambdas: Sequence[float],
                 env: dict[str, str]) -> dict:
    from recsys.data.tables import load_table
    from recsys.workspace import Workspace

    ws.mkdir(parents=True, exist_ok=True)
    if any(ws.iterdir()):
        raise SystemExit(f"{ws} is not empty: the benchmark needs a fresh workspace")
    env = {**env, "RECSYS_HOME": str(ws)}
    timings: dict[str, float] = {}
    print(f"\n== {protocol}: workspace {ws}", flush=True)
    run_stage("import movielens", ["import", "movielens", str(data)], ws, env, timings)

    workspace = Workspace.at(ws)
    clicks = load_table(workspace, "impressions").select(C.USER_ID, C.ITEM_ID, C.EVENT_TIMESTAMP)
    item_ids = load_table(workspace, "items", columns=[C.ITEM_ID])[C.ITEM_ID].to_list()
    known, test = split_protocol(clicks, protocol, seed)
    known.write_parquet(ws / "known.parquet")
    print(f"  split: {known.height:,} known, {test.height:,} test ratings; {len(item_ids):,} items",
          flush=True)

    recs_path = ws / "recs.parquet"
    known_args = ["import", "impressions", str(ws / "known.parquet"), "--replace"]
    run_stage("import impressions", known_args, ws, env, timings)
    run_pipeline(ws, env, timings, ["--out", str(recs_path)])
    t = time.perf_counter()
    recs = pl.read_parquet(recs_path)
    ease, lam, lam_table = ease_baseline(known, item_ids, lambdas, seed)
    print("  EASE λ (NDCG@10 on a 90/10 split of the known part): "
          + ", ".join(f"{lm:g} {v:.4f}" for lm, v in lam_table.items()) + f"; chosen {lam:g}", flush=True)
    methods = {"popularity": popularity_scorer(known, item_ids), "ease": ease,
               **source_scorers(ws, known, item_ids), "recsys (recommend --all)": recs_scorer(recs, item_ids)}
    rows = score_methods(methods, known, test, item_ids)
    leaked = known_in_recs(recs, known)
    print(f"  {'baselines + scoring':<22} {time.perf_counter() - t:7.1f} s", flush=True)

    by = {r["method"]: r for r in rows}
    ratio = by["recsys (recommend --all)"][f"ndcg@{K}"] / by["ease"][f"ndcg@{K}"]
    print(f"\n{protocol}: {rows[0]['users']:,} users with test items; {recs.height:,} recommendations for "
          f"{recs[C.USER_ID].n_unique():,} users\n\n{markdown(rows)}\n\n"
          f"recsys / EASE NDCG@{K}: {ratio:.3f}; recommended items already in the user's known part: "
          f"{leaked}\n{PUBLISHED.get(protocol, '')}", flush=True)
    return {"workspace": str(ws),
            "sizes": {"known": known.height, "test": test.height, "items": len(item_ids)},
            "stages_s": timings, "ease_lambda": lam,
            "ease_lambdas": {str(lm): v for lm, v in lam_table.items()},
            "rows": rows, "ndcg_ratio_vs_ease": ratio, "known_in_recs": leaked,
            "recommendations": recs.height}


def run_world(ws: Path, seed: int, lambdas: Sequence[float], env: dict[str, str],
              window_days: float = 7.0) -> dict:
    """The embedded world: the last `window_days` of its log are the test (every command runs
    with `evaluation.holdout_days` = window_days, so no model trains on them); recommendations
    as of the window's start; all items, warm items and cold items (no click before the window)."""
    from recsys.data.splits import before_holdout
    from recsys.data.tables import load_table
    from recsys.retrieval.evaluate import SEGMENTS
    from recsys.workspace import Workspace

    ws.mkdir(parents=True, exist_ok=True)
    if any(ws.iterdir()):
        raise SystemExit(f"{ws} is not empty: the benchmark needs a fresh workspace")
    env = {**env, "RECSYS_HOME": str(ws), "RECSYS_EVALUATION__HOLDOUT_DAYS": f"{window_days:g}"}
    timings: dict[str, float] = {}
    print(f"\n== world: workspace {ws}", flush=True)
    run_stage("generate", ["generate"], ws, env, timings)
    workspace = Workspace.at(ws)
    log = load_table(workspace, "impressions")
    clicks = log.filter(pl.col(C.CLICKED)).select(C.USER_ID, C.ITEM_ID, C.EVENT_TIMESTAMP)
    known, start = before_holdout(clicks, window_days)
    test = clicks.filter(pl.col(C.EVENT_TIMESTAMP) >= start)
    items = load_table(workspace, "items", columns=[C.ITEM_ID, C.CREATED_AT])
    item_ids = items[C.ITEM_ID].to_list()
    end = test[C.EVENT_TIMESTAMP].max()
    available = (items[C.CREATED_AT].is_null() | (items[C.CREATED_AT] <= end)).to_numpy()
    print(f"  window from {start:%Y-%m-%d %H:%M}: {known.height:,} known, {test.height:,} test clicks",
          flush=True)
    recs_path = ws / "recs.parquet"
    run_pipeline(ws, env, timings, ["--as-of", start.isoformat(), "--out", str(recs_path)])
    recs = pl.read_parquet(recs_path)
    ease, lam, _ = ease_baseline(known, item_ids, lambdas, seed)
    methods = {"popularity": popularity_scorer(known, item_ids), "ease": ease,
               **source_scorers(ws, known, item_ids), "recsys (recommend --all)": recs_scorer(recs, item_ids)}
    segments = [s for s in SEGMENTS if s != "cold_users"]
    rows = score_methods(methods, known, test, item_ids, segments=segments, available=available)
    # `cold_items` ranks the cold items among themselves, which recsys's top 10 cannot do: the
    # same clicks against each method's top 10 of every item are what a user is shown
    cold_test = test.join(known.select(C.ITEM_ID).unique(), on=C.ITEM_ID, how="anti")
    rows += [{**r, "segment": "cold items, top 10 of all", f"coverage@{K}": float("nan")}
             for r in score_methods(methods, known, cold_test, item_ids, available=available)]
    print(f"\nworld (EASE λ {lam:g}):\n\n{markdown(rows)}\n", flush=True)
    return {"workspace": str(ws), "stages_s": timings, "ease_lambda": lam, "rows": rows,
            "sizes": {"known": known.height, "test": test.height, "items": len(item_ids)},
            "known_in_recs": known_in_recs(recs, known)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="ml-100k folder")
    ap.add_argument("--protocols", default="recbole,temporal",
                    help="comma list of recbole, temporal (ml-100k) and world (the embedded world)")
    ap.add_argument("--home", type=Path, help="workspace root (one fresh folder per protocol)")
    ap.add_argument("--out", type=Path, help="JSON results [default <home>/quality.json]")
    ap.add_argument("--seed", type=int, default=42, help="split seed, also RECSYS_SEED of every command")
    ap.add_argument("--lambdas", default="50,100,200,400,800,1600", help="EASE λ grid")
    ap.add_argument("--device", help="RECSYS_DEVICE of every command (default: the config's)")
    args = ap.parse_args()
    data = args.data.resolve()
    if not (data / "u.data").exists():
        raise SystemExit(f"{data}: no u.data (expected the ml-100k folder)")
    home = (args.home or Path(tempfile.mkdtemp(prefix="recsys-quality-"))).resolve()
    out = args.out or home / "quality.json"
    # the workspace's own settings only: no RECSYS_* of the caller's shell, no recsys.toml (cwd = ws)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.update({"RECSYS_PROGRESS": "0", "OMP_WAIT_POLICY": "passive", "MLFLOW_DISABLE_TELEMETRY": "true",
                "RECSYS_SEED": str(args.seed), "COLUMNS": "1000"})
    if args.device:
        env["RECSYS_DEVICE"] = args.device
    lambdas = [float(x) for x in args.lambdas.split(",")]
    results = {p: run_world(home / p, args.seed, lambdas, env) if p == "world" else
               run_protocol(p, data, home / p, args.seed, lambdas, env) for p in args.protocols.split(",")}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"data": str(data), "seed": args.seed, "k": K, "protocols": results}, indent=2))
    print(f"\nresults -> {out}")


if __name__ == "__main__":
    main()
