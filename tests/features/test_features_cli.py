"""`recsys features build` and `recsys features materialize` through a local typer app."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from recsys.cli import common
from recsys.cli import features as features_cli


def _app() -> typer.Typer:
    app = typer.Typer()
    app.callback()(common.main_options)
    features_cli.register(app, {})
    return app


def test_build_then_materialize(home, stored_world, ws):
    runner = CliRunner()
    built = runner.invoke(_app(), ["--home", str(home), "features", "build"])
    assert built.exit_code == 0, built.output
    assert (ws.feature_sources_dir / "user_behaviour.parquet").exists()
    done = runner.invoke(_app(), ["--home", str(home), "features", "materialize"])
    assert done.exit_code == 0, done.output
    assert (ws.feast_dir / "online.db").exists() and (ws.feast_dir / "materialized.json").exists()


def test_materialize_before_build_says_what_to_run(home):
    result = CliRunner().invoke(_app(), ["--home", str(home), "features", "materialize"])
    assert result.exit_code == 1
    assert "recsys features build" in result.output
