"""The end-to-end demo: every pipeline step in order, on the embedded world or on MovieLens.

Each stage has a fingerprint: its own settings, the data source, and the fingerprint of the
stage before it. A stage whose fingerprint matches the stamp left by its last successful run
(and whose outputs still exist) is skipped, so re-running the demo reuses what is up to date
and a change of settings re-runs that stage and everything after it (as does any stage that
re-ran before it).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys.config import Settings
from recsys.io import write_json
from recsys.workspace import Workspace


@dataclass(frozen=True)
class Stage:
    name: str
    sections: tuple[str, ...]  # settings sections the stage depends on
    run: Callable[[], Any]  # returns a result with .summary()
    done: Callable[[], bool] = lambda: True  # its outputs still exist


@dataclass
class StageReport:
    name: str
    summary: str
    seconds: float
    skipped: bool


def _fingerprint(settings: Settings, stage: Stage, upstream: str, source: str) -> str:
    dump = settings.model_dump(mode="json")
    payload = {
        "stage": stage.name,
        "source": source,
        "upstream": upstream,
        "seed": dump["seed"],
        "settings": {s: dump[s] for s in stage.sections},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _registered(settings: Settings, name: str) -> Callable[[], bool]:
    def check() -> bool:
        from recsys import tracking

        try:
            tracking.resolve(settings, f"models:/{name}@champion")
        except LookupError:
            return False
        return True

    return check


def _summary(result: Any) -> str:
    if isinstance(result, list | tuple):
        return "; ".join(_summary(r) for r in result)
    return result.summary() if hasattr(result, "summary") else str(result)


def demo_stages(settings: Settings, ws: Workspace, data: str = "world",
                path: Path | None = None) -> list[Stage]:
    """The pipeline of the README, as stages (imports are lazy: each stage pays for its own)."""

    def load_data() -> Any:
        if data == "movielens":
            from recsys.data.movielens import import_movielens

            return import_movielens(path, ws, min_rating=settings.imports.min_rating, replace=True)
        from recsys.data.world import generate_world

        return generate_world(settings.world, settings.seed, ws)

    def clip() -> Any:
        from training.clip import finetune_clip

        return finetune_clip(settings, ws)

    def thumbnails_train() -> Any:
        from training.thumbnails import train_thumbnails

        return train_thumbnails(settings, ws)

    def thumbnails_generate() -> Any:
        from training.thumbnails import generate_thumbnails

        return generate_thumbnails(settings, ws)

    def backfill() -> Any:
        from training.backfill import backfill as run

        return run(settings, ws)

    def features() -> Any:
        from features.jobs import build_features, materialize

        return [build_features(settings, ws), materialize(settings, ws)]

    def retrieval() -> Any:
        from training.retrieval import train_retrieval

        return train_retrieval(settings, ws)

    def ranker() -> Any:
        from training.ranker import train_ranker

        return train_ranker(settings, ws, promote=True)

    def evaluate() -> Any:
        from training.evaluate import evaluate_ab

        return evaluate_ab(settings, control="popular", treatment="models:/ranker@champion")

    data_sections = ("imports",) if data == "movielens" else ("world",)
    return [
        Stage("data", data_sections, load_data, lambda: ws.table("impressions").exists()),
        Stage("clip finetune", ("clip",), clip, _registered(settings, "clip")),
        Stage("thumbnails train", ("thumbnails",), thumbnails_train, _registered(settings, "thumbnails")),
        Stage("thumbnails generate", ("thumbnails",), thumbnails_generate),
        Stage("backfill", ("clip",), backfill, lambda: ws.table("item_embeddings").exists()),
        Stage("features", ("features",), features),
        Stage("train retrieval", ("retrieval",), retrieval, _registered(settings, "retrieval")),
        Stage("train ranker", ("ranker",), ranker, _registered(settings, "ranker")),
        Stage("evaluate ab", ("evaluation",), evaluate),
    ]


def run_demo(
    settings: Settings,
    data: str = "world",
    path: Path | None = None,
    on_stage: Callable[[StageReport], None] | None = None,
) -> list[StageReport]:
    """Run (or reuse) every stage; `on_stage` is called after each with its one-line report."""
    if data not in ("world", "movielens"):
        raise ValueError(f"--data must be 'world' or 'movielens', got '{data}'")
    if data == "movielens" and path is None:
        raise ValueError("--data movielens needs the path of the MovieLens folder")
    ws = Workspace.at(settings.home)
    stamps = ws.demo_dir
    source = f"{data}:{Path(path).resolve() if path else ''}"
    upstream, reports, ran = "", [], False
    for i, stage in enumerate(demo_stages(settings, ws, data, path)):
        fp = _fingerprint(settings, stage, upstream, source)
        stamp = stamps / f"{i:02d}-{stage.name.replace(' ', '-')}.json"
        t0 = time.perf_counter()
        previous = json.loads(stamp.read_text()) if stamp.exists() else {}
        if not ran and previous.get("fingerprint") == fp and stage.done():
            report = StageReport(stage.name, f"up to date ({previous.get('summary', '')})", 0.0, True)
        else:
            summary, ran = _summary(stage.run()), True
            report = StageReport(stage.name, summary, time.perf_counter() - t0, False)
            write_json({"fingerprint": fp, "summary": summary, "seconds": report.seconds}, stamp)
        upstream = fp
        reports.append(report)
        if on_stage:
            on_stage(report)
    return reports
