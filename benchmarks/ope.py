"""Off-policy estimates against the simulator's online truth over many embedded worlds.

    .venv/bin/python -m benchmarks.ope --seeds 20 [--home DIR] [--out FILE]

Per seed, in a fresh workspace, the commands a user runs (`recsys` of this environment):
`generate --no-images` with `RECSYS_SEED=S` (the default world otherwise), `train ease` (the last
`--holdout-days` of the log left out), `evaluate ab --control popular --treatment
models:/ease@champion --no-track`. The report's `summary.json` holds every estimator's lift
with its interval, the effective sample sizes, the primary estimator the support diagnostics
chose, and the simulator's true CTR of both policies on the held-out requests.

Printed: per estimator, over the seeds, the bias and RMSE of the estimated lift against the true
lift, how often its interval covers the true lift, how often its interval has the true lift's
sign (excludes 0 on that side); the same for the primary estimator of each run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RECSYS = str(Path(sys.executable).with_name("recsys"))


def run_seed(home: Path, seed: int, holdout_days: float) -> dict:
    """The three commands for one world; returns the A/B summary."""
    env = {**os.environ, "RECSYS_HOME": str(home), "RECSYS_EVALUATION__HOLDOUT_DAYS": str(holdout_days),
           "RECSYS_SEED": str(seed), "RECSYS_PROGRESS": "0"}
    for cmd in (["generate", "--no-images"], ["train", "ease"],
                ["evaluate", "ab", "--control", "popular", "--treatment", "models:/ease@champion",
                 "--no-track"]):
        done = subprocess.run([RECSYS, *cmd], env=env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"seed {seed}: recsys {' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    report = max((home / "reports").glob("ab-*"), key=lambda p: p.stat().st_mtime)
    return json.loads((report / "summary.json").read_text())


def score(runs: list[dict]) -> list[dict]:
    """Per estimator (and 'primary'): bias, RMSE, coverage and sign of the lift over the runs."""
    rows: dict[str, list[tuple[float, float, float, float]]] = {}
    for run in runs:
        truth = run["truth_ctr"]["treatment"] / run["truth_ctr"]["control"] - 1
        for o in run["offline"]:
            d = o["delta"]
            entry = (d["lift"], d["lift_low"], d["lift_high"], truth)
            rows.setdefault(o["estimator"], []).append(entry)
            if o["estimator"] == run.get("offline_primary"):
                rows.setdefault("primary", []).append(entry)
    out = []
    for name, values in rows.items():
        lift, low, high, truth = map(np.asarray, zip(*values, strict=True))
        err = lift - truth
        sign = np.where(truth > 0, low > 0, high < 0)
        covered = (low <= truth) & (truth <= high)
        out.append({"estimator": name, "runs": len(values), "bias": float(err.mean()),
                    "rmse": float(np.sqrt((err**2).mean())), "covered": int(covered.sum()),
                    "sign_right": int(sign.sum())})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--holdout-days", type=float, default=7.0)
    ap.add_argument("--home", type=Path, default=None, help="workspaces go to <home>/seed-<S>")
    ap.add_argument("--out", type=Path, default=None, help="JSON of the runs and the table")
    args = ap.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="recsys-ope-"))
    runs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        t = time.perf_counter()
        summary = run_seed(home / f"seed-{seed}", seed, args.holdout_days)
        truth = summary["truth_ctr"]["treatment"] / summary["truth_ctr"]["control"] - 1
        chosen = [o for o in summary["offline"] if o["estimator"] == summary.get("offline_primary")]
        est = "no primary"
        if chosen:
            d = chosen[0]["delta"]
            est = f"{chosen[0]['estimator']} {d['lift']:+.1%} [{d['lift_low']:+.1%}, {d['lift_high']:+.1%}]"
        ess = summary.get("ess", {})
        print(f"seed {seed}: true lift {truth:+.1%}; {est}; ESS {ess.get('control', 0):,.0f} / "
              f"{ess.get('treatment', 0):,.0f} ({time.perf_counter() - t:.0f} s)", flush=True)
        runs.append(summary)
    table = score(runs)
    print(f"\n{len(runs)} worlds; lift of models:/ease@champion over popular, "
          f"{args.holdout_days:g} held-out days")
    print(f"{'estimator':<12} {'bias':>8} {'RMSE':>8} {'covered':>8} {'sign right':>10}")
    for row in sorted(table, key=lambda r: r["rmse"]):
        print(f"{row['estimator']:<12} {row['bias']:>+8.3f} {row['rmse']:>8.3f} "
              f"{row['covered']:>4}/{row['runs']:<3} {row['sign_right']:>6}/{row['runs']}")
    out = args.out or home / "ope.json"
    out.write_text(json.dumps({"runs": runs, "table": table}, indent=1, default=str))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
