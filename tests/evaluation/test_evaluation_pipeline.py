"""`recsys evaluate ab` end to end: the embedded world (with truth) and ml-100k (no propensities)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from recsys.cli import common
from recsys.cli import ease as ease_cli
from recsys.cli import evaluate as evaluate_cli
from recsys.config import load_settings
from recsys.data.config import WorldConfig
from recsys.data.world import generate_world
from recsys.workspace import Workspace
from training.evaluate import evaluate_ab

ML100K = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ml-100k"


def _app() -> typer.Typer:
    app = typer.Typer()
    app.callback()(common.main_options)
    groups = {"train": typer.Typer()}
    app.add_typer(groups["train"], name="train")
    evaluate_cli.register(app, groups)
    ease_cli.register(app, groups)
    return app


def _evaluate_ab(home: Path, control: str, treatment: str, *options: str) -> Result:
    """`recsys --home HOME evaluate ab --control C --treatment T OPTIONS...` through the CLI."""
    args = ["--home", str(home), "evaluate", "ab", "--control", control, "--treatment", treatment,
            "--holdout-days", "7", *options]
    return CliRunner().invoke(_app(), args)


@pytest.fixture(scope="module")
def world_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("world")
    cfg = WorldConfig(items=300, users=1500, days=21, impressions=60_000, images=False)
    generate_world(cfg, 3, Workspace.at(home))
    return home


def test_cli_on_the_embedded_world_writes_report_truth_check_and_mlflow_run(world_home: Path) -> None:
    res = _evaluate_ab(world_home, "popular", "popular:3d", "--bootstrap", "100")
    assert res.exit_code == 0, res.output
    assert "verdict:" in res.output
    reports = sorted((Workspace.at(world_home).reports_dir).glob("ab-*"))
    assert reports, "no report folder"
    html = (reports[-1] / "report.html").read_text()
    md = (reports[-1] / "report.md").read_text()
    assert "data:image/png;base64," in html and "<img alt='estimators_vs_truth'" in html
    assert "src='http" not in html  # self-contained
    summary = json.loads((reports[-1] / "summary.json").read_text())
    # the off-policy primary is named (or None with too little support) with the ESS it rests on
    assert "offline_primary" in summary and set(summary["ess"]) == {"control", "treatment"}
    assert set(summary["truth_ctr"]) == {"control", "treatment"}
    assert {"lift", "lift_low", "lift_high"} <= set(summary["offline"][0]["delta"])
    assert "off-policy primary" in md
    for text in (
        "## Off-policy CTR estimates",
        "## Truth check",
        "| snips |",
        "| dr |",
        "new users",
        "cold items",
        "coverage@10",
    ):
        assert text in md, text
    import mlflow

    from recsys import tracking

    tracking.setup_tracking(load_settings(home=world_home))
    runs = mlflow.search_runs(experiment_names=["recsys/evaluation"])
    assert len(runs) >= 1 and runs.iloc[0]["tags.ab.treatment"] == "popular:3d"


def test_ease_against_popular_rests_on_an_item_level_estimator(world_home: Path) -> None:
    """`train ease` then `evaluate ab` of EASE alone: the Plackett-Luce log's slot propensities
    feed the PBM estimators, and the truth is the held-out requests served live."""
    trained = CliRunner().invoke(_app(), ["--home", str(world_home), "train", "ease"],
                                 env={"RECSYS_EVALUATION__HOLDOUT_DAYS": "7"})
    assert trained.exit_code == 0, trained.output
    res = _evaluate_ab(world_home, "popular", "models:/ease@champion", "--bootstrap", "200", "--no-track")
    assert res.exit_code == 0, res.output
    report = sorted(Workspace.at(world_home).reports_dir.glob("ab-*ease*"))[-1]
    summary = json.loads((report / "summary.json").read_text())
    estimators = {o["estimator"]: o for o in summary["offline"]}
    assert {"pbm_ips", "pbm_snips", "pbm_dr"} <= set(estimators)
    truth = summary["truth_ctr"]["treatment"] / summary["truth_ctr"]["control"] - 1
    assert truth > 0  # EASE beats popularity online
    # item-level weights carry more effective samples than the item-slot ones
    assert estimators["pbm_snips"]["ess"]["treatment"] > 2 * estimators["snips"]["ess"]["treatment"]
    d = estimators["pbm_snips"]["delta"]
    assert d["lift_low"] <= truth <= d["lift_high"]


def test_fail_on_regression_exits_non_zero_for_dont_ship(world_home: Path) -> None:
    # a popularity window of ~15 minutes knows almost no items: a clear regression
    res = _evaluate_ab(world_home, "popular", "popular:0.01d", "--bootstrap", "100", "--no-track",
                       "--fail-on-regression")
    assert "DON'T SHIP" in res.output, res.output
    assert res.exit_code == 3


def test_unknown_policy_is_a_clear_error(world_home: Path) -> None:
    res = _evaluate_ab(world_home, "popular", "best-model", "--no-track")
    assert res.exit_code == 1 and "unknown policy 'best-model'" in res.output


@pytest.mark.skipif(not ML100K.exists(), reason=f"MovieLens 100K not found at {ML100K}")
def test_movielens_runs_ranking_metrics_and_says_why_ope_is_skipped(tmp_path: Path) -> None:
    from recsys.data.movielens import import_movielens

    ws = Workspace.at(tmp_path)
    import_movielens(ML100K, ws)
    settings = load_settings(
        home=tmp_path,
        **{"evaluation.bootstrap": 100, "evaluation.holdout_days": 30, "evaluation.max_users": 300},
    )
    run = evaluate_ab(settings, "popular", "popular:60d", track=False)
    assert run.result.offline is None
    assert "no logging propensities" in run.result.ope_note
    assert "ndcg@10" in {d.metric for d in run.result.ranking["all"]}
    assert 50 < run.result.n_users <= 300
    assert "Off-policy part skipped" in run.paths["markdown"].read_text()
