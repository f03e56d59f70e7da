"""The `recsys clip finetune` / `recsys backfill` commands, through a local typer app."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from recsys.cli import common
from recsys.cli.embeddings import register


def _app() -> typer.Typer:
    app = typer.Typer()
    app.callback()(common.main_options)
    register(app, {})
    return app


def test_backfill_without_encoder_says_what_to_run(settings, catalogue, monkeypatch) -> None:
    monkeypatch.setenv("RECSYS_TRACKING__TRACKING_URI", settings.tracking.tracking_uri + ".cli")
    result = CliRunner().invoke(_app(), ["--home", str(settings.home), "backfill", "--no-push"])
    assert result.exit_code == 1
    assert "recsys clip finetune" in result.output


def test_unknown_engine_is_a_clear_error(settings) -> None:
    result = CliRunner().invoke(_app(), ["--home", str(settings.home), "backfill", "--engine", "spark"])
    assert result.exit_code == 1 and "local or ray" in result.output


def test_clip_finetune_help() -> None:
    result = CliRunner().invoke(_app(), ["clip", "finetune", "--help"])
    assert result.exit_code == 0 and "--epochs" in result.output
