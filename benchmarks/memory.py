"""Peak memory and time of every default command on a long-span, click-only log (issue 21).

    .venv/bin/python -m benchmarks.memory [--home DIR] [--clicks 100000] [--items 10000]
    .venv/bin/python -m benchmarks.memory --cases 100000x10000,1000000x100000 --retrieval-epochs 2

1. Generate a seeded click-only log shaped like a real one: `--users` users (default 600 per
   100k clicks; activity
   log-normal), `--items` items with title, description and category (Zipf-like popularity,
   exponent `--zipf`), `--pictures` of them with a small generated PNG, `--clicks` clicks spread
   uniformly over `--years` years. Only CLIP looks at the pictures.
2. In a fresh workspace run the user's commands, one subprocess each: `import items / users /
   impressions`, `clip finetune` (with `RECSYS_CLIP__EPOCHS=2`, to keep it short), `backfill`,
   `features build`, `features materialize`, `train retrieval`, `train ranker --promote`,
   `recommend --all --k 10`.
3. Each command's peak resident memory comes from `/usr/bin/time -f %M` (the largest RSS of the
   process and its children) where it exists, else from polling the process tree with psutil
   every 50 ms (which can miss a short spike). A poller also kills a command whose tree passes
   `--kill-above` GiB, so a blow-up is reported instead of taking the machine down. The same
   poller sums the tree's PSS every 0.25 s: the figure for a command of several processes that
   share pages (`features build --engine ray`, a step run only when `--steps` names it: its
   local Ray instance and workers are the command's children, and their RSS counts the object
   store's shared pages in every process that maps them).

Prints a markdown table (step, peak RSS, the command's own planned peak from its `memory plan:`
line (`recsys.memory`), measured / planned, seconds, status) and writes it as JSON to
`<home>/memory.json`. Logs of each command are under `<home>/ws/logs/`. With `--cases`, one
log after another (each in `<home>/CLICKSxITEMS/`), then a growth table: each step's peak as a
ratio of the first case with the same catalogue.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import psutil

GIB = 1024**3
TIME = "/usr/bin/time"
CATEGORIES = [f"category {c:02d}" for c in range(20)]
WORDS = ["red", "blue", "green", "soft", "warm", "light", "dark", "small", "large", "classic", "modern",
         "cotton", "wool", "leather", "steel", "wooden", "round", "square", "striped", "plain"]


# ---------------------------------------------------------------- the synthetic log


def _png(path: Path, rgb: tuple[int, int, int], size: int = 32) -> None:
    """A tiny solid-colour PNG written by hand (zlib + CRCs): no imaging library needed."""
    row = b"\x00" + bytes(rgb) * size
    raw = zlib.compress(row * size, 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = size.to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    body = chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def generate_log(folder: Path, users: int, items: int, clicks: int, years: float, pictures: int,
                 zipf: float, seed: int) -> dict[str, Path]:
    """items.parquet, users.parquet, clicks.parquet (user_id, item_id, event_timestamp) and
    `images/` under `folder`; returns the three table paths."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    item_ids = [f"i{i:06d}" for i in range(items)]
    cats = rng.integers(0, len(CATEGORIES), items)
    words = rng.integers(0, len(WORDS), (items, 4))
    pairs = list(zip(words, cats, strict=True))
    titles = [f"{WORDS[w[0]]} {WORDS[w[1]]} {CATEGORIES[c]}" for w, c in pairs]
    descriptions = [f"a {WORDS[w[2]]}, {WORDS[w[3]]} {CATEGORIES[c]} item" for w, c in pairs]
    with_picture = set(rng.choice(items, size=min(pictures, items), replace=False).tolist())
    (folder / "images").mkdir(exist_ok=True)
    uris: list[str | None] = []
    for i in range(items):
        if i in with_picture:
            rel = f"images/{item_ids[i]}.png"
            _png(folder / rel, tuple(int(x) for x in rng.integers(0, 256, 3)))  # type: ignore[arg-type]
            uris.append(rel)
        else:
            uris.append(None)
    end = datetime(2026, 1, 1, tzinfo=UTC)
    start = end - timedelta(days=365.25 * years)
    pl.DataFrame(
        {"item_id": item_ids, "title": titles, "description": descriptions,
         "category": [CATEGORIES[c] for c in cats], "image_uri": uris,
         "created_at": [start - timedelta(days=1)] * items},
        schema_overrides={"image_uri": pl.String, "created_at": pl.Datetime("us", "UTC")},
    ).write_parquet(folder / "items.parquet")
    user_ids = [f"u{u:05d}" for u in range(users)]
    pl.DataFrame({"user_id": user_ids, "created_at": [start - timedelta(days=1)] * users},
                 schema_overrides={"created_at": pl.Datetime("us", "UTC")}
                 ).write_parquet(folder / "users.parquet")
    # Zipf-like item popularity over a random order of the catalogue; log-normal user activity
    weight = 1.0 / np.arange(1, items + 1) ** zipf
    order = rng.permutation(items)
    item_p = np.empty(items)
    item_p[order] = weight / weight.sum()
    activity = rng.lognormal(0.0, 1.0, users)
    span_us = int((end - start).total_seconds() * 1e6)
    offsets = np.sort(rng.integers(0, span_us, clicks))
    pl.DataFrame({
        "user_id": np.array(user_ids)[rng.choice(users, clicks, p=activity / activity.sum())],
        "item_id": np.array(item_ids)[rng.choice(items, clicks, p=item_p)],
        "event_timestamp": pl.Series(offsets + int(start.timestamp() * 1e6)).cast(pl.Datetime("us", "UTC")),
    }).write_parquet(folder / "clicks.parquet")
    return {n: folder / f"{n}.parquet" for n in ("items", "users", "clicks")}


# ---------------------------------------------------------------- running a command


@dataclass
class Step:
    step: str
    command: str
    peak_mib: float | None
    seconds: float
    status: str  # ok, failed (exit N), killed above X GiB
    planned_mib: float | None = None  # the command's own memory plan (recsys.memory), when it states one
    peak_pss_mib: float | None = None  # the process tree's summed PSS, polled every 0.25 s


PLAN_LINE = re.compile(r"memory plan: ([\d.]+) GiB peak")


def planned_mib(log_text: str) -> float | None:
    """The planned peak a command printed (`memory plan: X GiB peak of ...`), in MiB."""
    found = PLAN_LINE.findall(log_text)
    return float(found[-1]) * 1024 if found else None


def _tree_sum(proc: psutil.Process, of: Callable[[psutil.Process], int]) -> int:
    """`of` summed over `proc` and its descendants (RSS: `memory_info().rss`; PSS, which reads
    smaps and costs more: `memory_full_info().pss`)."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a child that just ended
            total += of(p)
    return total


def run_step(name: str, args: list[str], ws: Path, env: dict[str, str], kill_above: float) -> Step:
    """Run `recsys ARGS` in `ws` under the RSS measurement; one printed line per step."""
    exe = Path(sys.executable).parent / "recsys"
    logs = ws / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name.replace(' ', '-').replace('/', '-')}.log"
    timed = Path(TIME).exists()
    rss_file = logs / f".{log_path.stem}.rss"
    cmd = [TIME, "-f", "%M", "-o", str(rss_file), str(exe), *args] if timed else [str(exe), *args]
    peak = peak_pss = 0
    killed = False
    t = time.perf_counter()
    with log_path.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ws, env=env, stdout=out, stderr=subprocess.STDOUT)
        ps = psutil.Process(proc.pid)
        stop = threading.Event()

        def poll() -> None:
            nonlocal peak, peak_pss, killed
            ticks = 0
            while not stop.wait(0.05):
                ticks += 1
                try:
                    rss = _tree_sum(ps, lambda p: p.memory_info().rss)
                    pss = _tree_sum(ps, lambda p: p.memory_full_info().pss) if ticks % 5 == 0 else 0  # 0.25 s
                except psutil.Error:
                    return
                peak, peak_pss = max(peak, rss), max(peak_pss, pss)
                if rss > kill_above * GIB:
                    killed = True
                    for p in [*ps.children(recursive=True), ps]:
                        with contextlib.suppress(psutil.Error):
                            p.kill()
                    return

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        rc = proc.wait()
        stop.set()
        poller.join()
    seconds = time.perf_counter() - t
    peak_mib: float | None = peak / 2**20 if peak else None
    if timed and rss_file.exists():
        lines = rss_file.read_text().split()
        if lines and lines[-1].isdigit():
            peak_mib = int(lines[-1]) / 1024  # GNU time: KiB
    status = f"killed above {kill_above:g} GiB" if killed else ("ok" if rc == 0 else f"failed (exit {rc})")
    plan = planned_mib(log_path.read_text(errors="replace"))
    pss_mib = peak_pss / 2**20 if peak_pss else None
    step = Step(name, "recsys " + " ".join(args), peak_mib, seconds, status, plan, pss_mib)
    planned = f"  (planned {_fmt_mib(plan)})" if plan else ""
    print(f"  {name:<24} {_fmt_mib(peak_mib):>10} (PSS {_fmt_mib(pss_mib)}) {seconds:8.1f} s  "
          f"{status}{planned}", flush=True)
    if rc != 0 and not killed:
        tail = "\n".join(log_path.read_text().splitlines()[-15:])
        print(f"    --- last lines of {log_path.name}:\n{tail}", flush=True)
    return step


def _fmt_mib(mib: float | None) -> str:
    if mib is None:
        return "?"
    return f"{mib / 1024:.2f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"


OPT_IN = {"features build --engine ray"}  # run only when `--steps` names them
STEPS = (
    ("import items", ["import", "items", "{data}/items.parquet"]),
    ("import users", ["import", "users", "{data}/users.parquet"]),
    ("import impressions", ["import", "impressions", "{data}/clicks.parquet"]),
    ("clip finetune", ["clip", "finetune"]),
    ("backfill", ["backfill"]),
    ("features build", ["features", "build"]),
    ("features build --engine ray", ["features", "build", "--engine", "ray"]),
    ("features materialize", ["features", "materialize"]),
    ("train retrieval", ["train", "retrieval"]),
    ("train ranker --promote", ["train", "ranker", "--promote"]),
    ("recommend --all", ["recommend", "--all", "--k", "10", "--out", "{home}/recommendations.parquet"]),
)


def table(steps: list[Step]) -> str:
    lines = ["| step | peak RSS | peak PSS (tree) | planned | measured / planned | seconds | status |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for s in steps:
        ratio = f"{s.peak_mib / s.planned_mib:.2f}" if s.peak_mib and s.planned_mib else ""
        planned = _fmt_mib(s.planned_mib) if s.planned_mib else ""
        lines.append(f"| {s.step} | {_fmt_mib(s.peak_mib)} | {_fmt_mib(s.peak_pss_mib)} | {planned} "
                     f"| {ratio} | {s.seconds:.1f} | {s.status} |")
    return "\n".join(lines)


def growth_table(cases: list[dict]) -> str:
    """Peak RSS per step and case, and each case's peak as a ratio of the first case with the
    same catalogue (growth with clicks)."""
    names = [n for n, _ in STEPS if any(st["step"] == n for c in cases for st in c["steps"])]
    head = [f"{c['log']['clicks']:,} clicks / {c['log']['items']:,} items" for c in cases]
    lines = ["| step | " + " | ".join(head) + " |", "| --- |" + " --- |" * len(cases)]
    for name in names:
        cells = []
        for c in cases:
            st = next((x for x in c["steps"] if x["step"] == name), None)
            base_case = next(b for b in cases if b["log"]["items"] == c["log"]["items"])
            base = next((x for x in base_case["steps"] if x["step"] == name), None)
            if st is None or st["peak_mib"] is None:
                cells.append("")
                continue
            cell = _fmt_mib(st["peak_mib"])
            if base is not None and base is not st and base["peak_mib"]:
                ratio = st["peak_mib"] / base["peak_mib"]
                clicks = c["log"]["clicks"] / base_case["log"]["clicks"]
                cell += f" ({ratio:.2f}x for {clicks:g}x clicks)"
            if st["status"] != "ok":
                cell += f", {st['status']}"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_case(home: Path, args: argparse.Namespace, clicks: int, items: int) -> dict:
    """Generate one log in `home` (which must be empty) and run every wanted step on it."""
    users = args.users or max(1, round(600 * clicks / 100_000))
    home.mkdir(parents=True, exist_ok=True)
    if any(home.iterdir()):
        raise SystemExit(f"{home} is not empty: the benchmark needs a fresh folder")
    t = time.perf_counter()
    generate_log(home / "data", users, items, clicks, args.years, args.pictures, args.zipf, args.seed)
    print(f"log: {users} users, {items} items ({args.pictures} with a picture), "
          f"{clicks} clicks over {args.years:g} years, Zipf {args.zipf:g} (seed {args.seed}); "
          f"generated in {time.perf_counter() - t:.1f} s -> {home / 'data'}", flush=True)
    ws = home / "ws"
    ws.mkdir()
    # the workspace's own settings only: no RECSYS_* of the caller's shell, no recsys.toml (cwd = ws)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.update({"RECSYS_HOME": str(ws), "RECSYS_PROGRESS": "0", "RECSYS_SEED": str(args.seed),
                "RECSYS_CLIP__EPOCHS": str(args.clip_epochs), "OMP_WAIT_POLICY": "passive",
                "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "COLUMNS": "1000"})
    if args.retrieval_epochs:
        env["RECSYS_RETRIEVAL__EPOCHS"] = str(args.retrieval_epochs)
    if args.memory_gib:
        env["RECSYS_MEMORY_GIB"] = str(args.memory_gib)
    wanted = set(args.steps.split(",")) if args.steps else None
    steps = []
    for name, template in STEPS:
        if name not in wanted if wanted is not None else name in OPT_IN:
            continue
        cmd = [a.format(data=home / "data", home=home) for a in template]
        steps.append(run_step(name, cmd, ws, env, args.kill_above))
    print("\n" + table(steps), flush=True)
    case = {"log": {"users": users, "items": items, "clicks": clicks,
                    **{k: getattr(args, k) for k in ("years", "pictures", "zipf", "seed")}},
            "clip_epochs": args.clip_epochs, "retrieval_epochs": args.retrieval_epochs,
            "memory_gib": args.memory_gib, "rss_source": "time" if Path(TIME).exists() else "psutil",
            "steps": [asdict(s) for s in steps]}
    (home / "memory.json").write_text(json.dumps(case, indent=2))
    return case


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path, help="benchmark folder (default: a new temp folder); must be empty")
    ap.add_argument("--users", type=int, help="default: 600 per 100k clicks")
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--clicks", type=int, default=100_000)
    ap.add_argument("--cases", help="several logs, one after another, as a CLICKSxITEMS list "
                    "(e.g. 100000x10000,1000000x100000), each in <home>/CLICKSxITEMS; then a growth table")
    ap.add_argument("--years", type=float, default=20.0)
    ap.add_argument("--pictures", type=int, default=2_000, help="items with a generated PNG")
    ap.add_argument("--zipf", type=float, default=1.0, help="popularity exponent")
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--clip-epochs", type=int, default=2, help="RECSYS_CLIP__EPOCHS of `clip finetune`")
    ap.add_argument("--retrieval-epochs", type=int, help="RECSYS_RETRIEVAL__EPOCHS of `train retrieval` "
                    "(default: the setting's; the peak is reached in the first epoch)")
    ap.add_argument("--memory-gib", type=float, help="RECSYS_MEMORY_GIB of every command (default: unset)")
    ap.add_argument("--steps", help="comma list of step names to run (default: all, in order)")
    ap.add_argument("--kill-above", type=float, default=8.0, help="GiB: kill a command whose tree passes it")
    args = ap.parse_args()

    home = (args.home or Path(tempfile.mkdtemp(prefix="recsys-memory-"))).resolve()
    print(f"peak RSS from {'/usr/bin/time -f %M' if Path(TIME).exists() else 'psutil polling (50 ms)'}; "
          f"clip finetune with RECSYS_CLIP__EPOCHS={args.clip_epochs}", flush=True)
    if not args.cases:
        run_case(home, args, args.clicks, args.items)
        print(f"\nresults -> {home / 'memory.json'}")
        return
    cases = []
    for spec in args.cases.split(","):
        clicks, items = (int(float(x)) for x in spec.lower().split("x"))
        print(f"\n## {clicks:,} clicks, {items:,} items", flush=True)
        cases.append(run_case(home / f"{clicks}x{items}", args, clicks, items))
        (home / "memory.json").write_text(json.dumps(cases, indent=2))
    print("\n" + growth_table(cases))
    print(f"\nresults -> {home / 'memory.json'}")


if __name__ == "__main__":
    main()
