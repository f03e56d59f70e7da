"""Memory plans (`recsys.memory`) and the bounded steps of issue 21.

The slow test runs every default command on a small log spanning 20 years with a catalogue
larger than its users' clicks, in subprocesses watched by an RSS poller that kills a command
above the limit (an address-space rlimit would trip on torch's and numpy's reservations, not on
what is resident)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys import memory
from recsys.data import columns as C
from recsys.retrieval import ease as ease_mod
from recsys.retrieval.evaluate import evaluate_methods

ROOT = Path(__file__).resolve().parents[1]


def test_a_plan_states_its_peak_and_stops_above_the_budget_naming_the_setting() -> None:
    plan = memory.MemoryPlan("train ranker", {"libraries": memory.GIB, "training rows": 3 * memory.GIB},
                             budget=8 * memory.GIB, advice="Lower ranker.max_rows.")
    assert plan.line().startswith("memory plan: 4.00 GiB peak of 8.00 GiB budget; largest: training rows")
    assert plan.check() is plan
    tight = memory.MemoryPlan(plan.step, plan.parts, budget=2 * memory.GIB, advice=plan.advice)
    with pytest.raises(memory.MemoryBudgetError) as err:
        tight.check()
    text = str(err.value)
    assert "4.00 GiB" in text and "2.00 GiB" in text and "memory_gib" in text and "ranker.max_rows" in text


def test_budget_is_the_setting_or_a_share_of_the_machine() -> None:
    assert memory.budget_bytes(1.5) == int(1.5 * memory.GIB)
    auto = memory.budget_bytes(None)
    assert auto == int(memory.AUTO_SHARE * memory.machine_bytes()) > 0


def test_plans_grow_with_the_sizes_that_drive_them() -> None:
    small = memory.train_retrieval(memory.GIB, log_bytes=10**6, embedding_bytes=10**6, train_clicks=10**5,
                                   ease_items=1000, ease_gram_nonzeros=10**5, history=20, n_features=0,
                                   ease=True)
    big_ease = memory.train_retrieval(memory.GIB, log_bytes=10**6, embedding_bytes=10**6, train_clicks=10**5,
                                      ease_items=10_000, ease_gram_nonzeros=10**8, history=20, n_features=0,
                                      ease=True)
    assert big_ease.peak - small.peak >= 8 * (10_000**2 - 1000**2)
    assert "retrieval.ease_max_items" in big_ease.advice
    capped = memory.train_ranker(memory.GIB, log_bytes=0, item_bytes=0, ease_items=0, ease_gram_nonzeros=0,
                                 rows=10**8, n_features=40, max_rows=10**6)
    assert capped.parts["training rows"] == 10**6 * memory.ranker_row_bytes(40)  # no EASE: weights 0
    assert "10,000,000" not in capped.line() and "1,000,000 of up to 100,000,000" in capped.line()


def test_gram_nonzeros_bounds_the_sparse_gram_matrix() -> None:
    clicks = pl.DataFrame({C.USER_ID: ["a", "a", "a", "b", "b"], C.ITEM_ID: ["x", "y", "y", "x", "z"]})
    assert memory.gram_nonzeros(clicks) == 2 * 2 + 2 * 2
    assert memory.gram_nonzeros(clicks.clear()) == 0


def _random_clicks(rng: np.random.Generator, users: int, items: int, n: int) -> pl.DataFrame:
    return pl.DataFrame({C.USER_ID: [f"u{u}" for u in rng.integers(0, users, n)],
                         C.ITEM_ID: [f"i{i}" for i in rng.zipf(1.3, n) % items]})


def test_ease_lambda_search_in_user_chunks_matches_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    train, valid = _random_clicks(rng, 300, 120, 4000), _random_clicks(rng, 300, 120, 600)
    whole = ease_mod.choose_lambda(train, valid, [5.0, 50.0, 500.0])
    monkeypatch.setattr(ease_mod, "SCORE_CELLS", 7 * 120)  # 7 users a chunk
    chunked = ease_mod.choose_lambda(train, valid, [5.0, 50.0, 500.0])
    assert chunked[0] == whole[0]
    assert chunked[1] == pytest.approx(whole[1], rel=1e-9)


def test_evaluation_in_cell_bounded_chunks_matches_one_block() -> None:
    rng = np.random.default_rng(4)
    item_ids = [f"i{i}" for i in range(50)]
    known, test = _random_clicks(rng, 80, 50, 800), _random_clicks(rng, 80, 50, 200)

    def scorer(users):  # deterministic per user, whatever the chunk
        return np.stack([np.random.default_rng(int(u[1:])).random(len(item_ids)) for u in users])

    one = evaluate_methods({"s": scorer}, known, test, item_ids, ks=(5,))
    many = evaluate_methods({"s": scorer}, known, test, item_ids, ks=(5,), max_cells=3 * 50)
    assert one.table.equals(many.table)


def test_a_plan_above_the_budget_stops_features_build_before_it_writes(home: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from recsys.cli import app
    from recsys.data.tables import import_file
    from recsys.workspace import Workspace

    start = datetime(2006, 1, 1, tzinfo=UTC)
    log = tmp_path / "clicks.parquet"
    pl.DataFrame({C.USER_ID: ["u1", "u2"], C.ITEM_ID: ["i1", "i2"],
                  C.EVENT_TIMESTAMP: [start, start + timedelta(days=7000)]}).write_parquet(log)
    ws = Workspace.at(home)
    import_file(ws, "impressions", log)
    result = CliRunner().invoke(app, ["--memory-gib", "0.01", "features", "build"])
    assert isinstance(result.exception, memory.MemoryBudgetError)
    assert "memory_gib" in str(result.exception)
    assert not (ws.feature_sources_dir / "user_behaviour.parquet").exists()


@pytest.mark.slow
def test_default_pipeline_on_a_long_span_large_catalogue_log_stays_under_a_limit(tmp_path: Path) -> None:
    """Every default command, as a user runs them, on 20k clicks over 20 years and 5k items, each
    killed if its process tree passes 3 GiB resident (each measured under 1.5 GiB)."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", "--home", str(tmp_path / "bench"), "--clicks", "20000",
         "--items", "5000", "--years", "20", "--pictures", "100", "--clip-epochs", "1",
         "--retrieval-epochs", "2", "--kill-above", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    steps = json.loads((tmp_path / "bench" / "memory.json").read_text())["steps"]
    assert [s["step"] for s in steps][-1] == "recommend --all"
    bad = [(s["step"], s["status"]) for s in steps if s["status"] != "ok"]
    assert not bad, out.stdout[-3000:]
    # the heavy steps state their plan
    planned = {s["step"] for s in steps if s["planned_mib"]}
    assert {"features build", "train retrieval", "train ranker --promote", "recommend --all"} <= planned


def test_latest_user_snapshot_read_in_batches_matches_a_sort_of_the_whole_source(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import training.recommend as rec
    from recsys.data import snapshots
    from recsys.recommender import latest_item_behaviour
    from recsys.workspace import Workspace

    ws = Workspace.at(home)
    ws.feature_sources_dir.mkdir(parents=True, exist_ok=True)
    path = ws.feature_sources_dir / "user_behaviour.parquet"
    rng = np.random.default_rng(5)
    start = datetime(2006, 1, 1, tzinfo=UTC)
    stamps = sorted(start + timedelta(days=int(d)) for d in rng.integers(0, 7000, 40))
    lists = [["a", "b"][: i % 3] for i in range(40)]
    src = pl.DataFrame({C.USER_ID: [f"u{u}" for u in rng.integers(0, 6, 40)], C.EVENT_TIMESTAMP: stamps,
                        "clicks_7d": rng.integers(0, 9, 40), "last_clicked_items": lists})
    src.unique([C.USER_ID, C.EVENT_TIMESTAMP]).write_parquet(path, row_group_size=7)
    monkeypatch.setattr(snapshots, "BATCH_ROWS", 5)
    for as_of in (start + timedelta(days=3500), start + timedelta(days=8000)):
        whole = (pl.read_parquet(path).filter(pl.col(C.EVENT_TIMESTAMP) <= as_of).sort(C.EVENT_TIMESTAMP)
                 .group_by(C.USER_ID).last())
        assert rec.user_features_as_of(ws, as_of) == {r[C.USER_ID]: r for r in whole.iter_rows(named=True)}
    # with every row (the item source's read), and the same for ties: the later row in the file
    first = src.head(1)
    tied = pl.concat([first, first.with_columns(pl.lit(99, first["clicks_7d"].dtype).alias("clicks_7d"))])
    tied.write_parquet(path)
    assert snapshots.latest_rows(path, C.USER_ID)["clicks_7d"].to_list() == [99]
    assert rec.user_features_as_of(Workspace.at(home / "elsewhere"), start) == {}  # no source
    assert latest_item_behaviour(home / "elsewhere" / "item_behaviour.parquet") is None


def test_vector_column_read_into_numpy_is_the_python_stack() -> None:
    from recsys.retrieval.data import stack_vector_column, stack_vectors

    rows = [[0.5, 1.0, -2.0], None, [3.0, 0.25, 1.5], None]
    column = pl.Series("embedding", rows, dtype=pl.List(pl.Float32))
    got = stack_vector_column(column)
    assert got.dtype == np.float32 and np.array_equal(got, stack_vectors(rows))
    assert np.array_equal(stack_vector_column(column, 3), stack_vectors(rows, 3))
    empty = pl.Series("embedding", [None, None], dtype=pl.List(pl.Float32))
    assert stack_vector_column(empty).shape == (2, 0)
    with pytest.raises(ValueError, match="row 1: vector of length 2, expected 3"):
        stack_vector_column(pl.Series("embedding", [[1.0, 2.0, 3.0], [1.0, 2.0]], dtype=pl.List(pl.Float32)))


def test_clip_profiles_added_in_slices_are_the_whole_sum(monkeypatch: pytest.MonkeyPatch) -> None:
    import recsys.retrieval.evaluate as ev

    rng = np.random.default_rng(6)
    item_ids = [f"i{i}" for i in range(40)]
    known = _random_clicks(rng, 30, 40, 900)
    clip = rng.standard_normal((40, 8)).astype(np.float32)
    users = [f"u{u}" for u in range(35)]  # some without clicks
    whole = ev.clip_scorer(known, item_ids, clip)(users)
    monkeypatch.setattr(ev, "PROFILE_VALUES", 8 * 7)  # 7 clicks a slice
    assert np.array_equal(ev.clip_scorer(known, item_ids, clip)(users), whole)


def test_train_retrieval_plan_covers_its_phases_measured_at_10m_clicks() -> None:
    """benchmarks/README.md, "train retrieval at 10M clicks": the sizes that run planned from and
    its phases' peaks (EASE 3.55, two-tower 4.04, test table 4.53 GiB)."""
    plan = memory.train_retrieval(20 * memory.GIB, log_bytes=210_000_000, embedding_bytes=114_844_500,
                                  train_clicks=8_052_667, ease_items=10_000, ease_gram_nonzeros=1_912_417_152,
                                  history=20, n_features=0, ease=True)
    assert plan.peak >= 4.53 * memory.GIB
    assert "test evaluation" in plan.parts
