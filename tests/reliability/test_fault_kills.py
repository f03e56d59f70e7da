"""kill -9 at random points of `recsys import`, `recsys backfill`, `recsys features build` and
`recsys train ranker`: nothing stored is lost or half-written, and a rerun resumes and succeeds.

Each fault first runs its command to the end on one copy of the trained workspace (what a
finished run leaves, and how long it takes), then per trial, on a fresh copy: the command is
started and its process group SIGKILLed after a random delay within that time; every stored
table, version and feature source must read whole and hold the rows it held before or the
finished run's rows; the same command is run again and must succeed and leave exactly what the
finished run left, with no temporary file behind. The short version (one trial per command)
runs by default; `-m slow` runs the long one (several trials each).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest
from fault_helpers import (
    check_history,
    kill_delays,
    lost_rows,
    result,
    run,
    run_killed,
    source_rows,
    stale_temps,
    table_rows,
)

from recsys.data import columns as C
from recsys.data.tables import TABLES, import_file, load_table, save_table

pytestmark = pytest.mark.integration
TRIALS = [pytest.param(1, id="short"), pytest.param(4, id="long", marks=pytest.mark.slow)]


def _copy(template, tmp_path: Path, name: str):  # noqa: ANN001, ANN202 (FaultWorld, from conftest)
    home = tmp_path / name / "ws"
    shutil.copytree(template.home, home)
    return type(template)(home, template.config, template.seconds)


def _more_impressions(world, days: int = 0, copies: int = 1) -> pl.DataFrame:  # noqa: ANN001
    """Impressions the stored log does not have (new request ids), `days` later."""
    imp = load_table(world.ws, "impressions")
    parts = [imp.with_columns((pl.col(C.REQUEST_ID) + f"-more{i}").alias(C.REQUEST_ID),
                              pl.col(C.EVENT_TIMESTAMP) + timedelta(days=days))
             for i in range(copies)]
    return pl.concat(parts)


def _registry(world) -> dict[str, list[int]]:  # noqa: ANN001
    """Registered versions per model; every champion resolves to artifacts that exist."""
    from recsys import tracking

    settings = world.settings()
    versions: dict[str, list[int]] = {}
    for row in tracking.list_models(settings):
        versions.setdefault(row["name"], []).append(row["version"])
        if "champion" in row["aliases"]:
            ref = tracking.resolve(settings, f"models:/{row['name']}@champion")
            folder = Path(ref.source.removeprefix("file://"))
            assert (folder / "meta.json").is_file(), f"{ref.tag}: champion artifacts missing"
    return versions


def _state(world) -> tuple[dict[str, int], dict[str, list[int]]]:  # noqa: ANN001
    """Rows of every table and source (each read whole), and the versions of each table."""
    rows = {**table_rows(world.ws), **{f"source:{k}": v for k, v in source_rows(world.ws).items()}}
    return rows, {t: check_history(world.ws, t) for t in TABLES if world.ws.table(t).exists()}


def _kill_trials(fault: str, template, tmp_path: Path, trials: int, args: list[str],  # noqa: ANN001
                 prepare: Callable[..., None] = lambda w: None, longest: float | None = None) -> None:
    """`trials` kills of `recsys ARGS`, each on a fresh copy of the template (`prepare`d).
    `longest`: about how long an unkilled run takes; None: a run to the end measures it."""
    res = result(fault)
    finished = registered = None
    if longest is None:
        reference = _copy(template, tmp_path, "reference")
        prepare(reference)
        longest = run(reference.env, *args)
        finished, registered = _state(reference)[0], set(_registry(reference))
    for i, delay in enumerate(kill_delays(trials, longest)):
        world = _copy(template, tmp_path, f"trial{i}")
        prepare(world)
        before, history = _state(world)
        before_models = _registry(world)
        killed = run_killed(world.env, delay, *args)
        res.trials += 1
        res.killed += killed
        res.delays.append(round(delay, 2))
        after, _ = _state(world)  # every stored file reads whole
        for table, numbers in history.items():
            check_history(world.ws, table, numbers)  # no kept version lost or changed
        models = _registry(world)
        assert all(set(v) <= set(models.get(name, [])) for name, v in before_models.items())

        run(world.env, *args)  # the rerun resumes and succeeds
        again, _ = _state(world)
        if finished is None:  # the first rerun's result is what every later one must leave
            finished, registered = again, set(_registry(world))
        lost = lost_rows(before, after, finished)
        res.rows_lost += lost
        assert lost == 0, f"{fault}: killed after {delay:.2f} s, rows before {before}, after {after}"
        assert again == finished, f"{fault}: the rerun after a kill at {delay:.2f} s left {again}"
        assert set(_registry(world)) == registered
        assert not stale_temps(world.ws), stale_temps(world.ws)
        res.survived += 1


@pytest.mark.parametrize("trials", TRIALS)
def test_kill_import(fault_template, tmp_path: Path, trials: int) -> None:  # noqa: ANN001
    log = tmp_path / "more_impressions.parquet"

    def write_file(world) -> None:  # noqa: ANN001
        if not log.exists():  # the same file for every trial
            _more_impressions(world, copies=60).write_parquet(log)

    _kill_trials("kill -9 during `recsys import impressions` (an upsert of 60x the log)", fault_template,
                 tmp_path, trials, ["import", "impressions", str(log)], write_file)


@pytest.mark.parametrize("trials", TRIALS)
def test_kill_features_build(fault_template, tmp_path: Path, trials: int) -> None:  # noqa: ANN001
    more = tmp_path / "a_day_more.parquet"

    def a_day_more(world) -> None:  # noqa: ANN001
        if not more.exists():
            _more_impressions(world, days=1).write_parquet(more)
        import_file(world.ws, "impressions", more)

    _kill_trials("kill -9 during `recsys features build`", fault_template, tmp_path, trials,
                 ["features", "build"], a_day_more, longest=fault_template.seconds["features"])


@pytest.mark.slow
@pytest.mark.parametrize("trials", [4])
def test_kill_backfill(fault_template, tmp_path: Path, trials: int) -> None:  # noqa: ANN001
    def every_text_changed(world) -> None:  # noqa: ANN001
        items = load_table(world.ws, "items")
        save_table(world.ws, "items", items.with_columns(pl.col(C.DESCRIPTION) + " (new)"))

    _kill_trials("kill -9 during `recsys backfill` (every item re-embedded)", fault_template, tmp_path,
                 trials, ["backfill"], every_text_changed, longest=fault_template.seconds["backfill"])


@pytest.mark.slow
@pytest.mark.parametrize("trials", [4])
def test_kill_train_ranker(fault_template, tmp_path: Path, trials: int) -> None:  # noqa: ANN001
    _kill_trials("kill -9 during `recsys train ranker`", fault_template, tmp_path, trials,
                 ["train", "ranker"], longest=fault_template.seconds["ranker"])
