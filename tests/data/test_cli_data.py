"""`recsys generate` and `recsys import ...` end to end through the real CLI app."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recsys.cli import app
from recsys.data.tables import load_table
from recsys.data.truth import WorldTruth
from recsys.workspace import Workspace

runner = CliRunner()


def test_generate_then_import(tmp_path: Path) -> None:
    home = tmp_path / "ws"
    args = [
        "--home",
        str(home),
        "generate",
        "--items",
        "60",
        "--users",
        "40",
        "--days",
        "3",
        "--impressions",
        "2000",
        "--no-images",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    ws = Workspace.at(home)
    assert load_table(ws, "impressions").height == 2000 and load_table(ws, "items").height == 60
    assert WorldTruth.load(ws).n_users == 40

    items = tmp_path / "items.csv"
    items.write_text("item_id,title,description,category\nx,X,An x,thing\n,Y,no id,thing\n")
    result = runner.invoke(app, ["--home", str(home), "import", "items", str(items)])
    assert result.exit_code != 0 and isinstance(result.exception, ValueError)  # half the rows bad
    assert "1 of 2 rows" in str(result.exception) and "--allow-partial" in str(result.exception)
    assert load_table(ws, "items").height == 60

    result = runner.invoke(app, ["--home", str(home), "import", "items", str(items), "--allow-partial"])
    assert result.exit_code == 0, result.output
    assert load_table(ws, "items").height == 61 and len(list(ws.quarantine_dir.glob("items-*.parquet"))) == 2
    # the world's truth is kept (a rollback brings its tables back) but no longer describes them
    assert WorldTruth.load(ws).n_users == 40 and not WorldTruth.applies(ws)
    result = runner.invoke(app, ["--home", str(home), "data", "history", "items"])
    assert result.exit_code == 0 and "v1" in result.output and "v2" in result.output, result.output
    result = runner.invoke(app, ["--home", str(home), "data", "rollback", "items", "v1"])
    assert result.exit_code == 0, result.output
    assert load_table(ws, "items").height == 60 and WorldTruth.applies(ws)
    result = runner.invoke(app, ["--home", str(home), "data", "rollback", "items", "7"])
    assert result.exit_code != 0 and "no version 7" in str(result.exception)

    result = runner.invoke(app, ["--home", str(home), "import", "items", str(items), "--replace",
                                 "--allow-partial"])
    assert result.exit_code == 0, result.output
    assert load_table(ws, "items")["item_id"].to_list() == ["x"]
    result = runner.invoke(app, ["--home", str(home), "import", "items", str(items), "--strict"])
    assert result.exit_code != 0


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    env = {"RECSYS_SERVING__API_KEY": "s3cret-admin-key", "RECSYS_FEATURES__REDIS_URL": "redis://u:pw9@h:6379/0"}
    result = runner.invoke(app, ["--home", str(tmp_path), "config", "show"], env=env)
    assert result.exit_code == 0, result.output
    assert "s3cret-admin-key" not in result.output and "pw9" not in result.output
    shown = json.loads(result.output)
    assert shown["serving"]["api_key"] == "***" and shown["features"]["redis_url"] == "redis://u:***@h:6379/0"


@pytest.mark.parametrize("command", [["generate"], ["import", "movielens"], ["import", "impressions"]])
def test_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output
