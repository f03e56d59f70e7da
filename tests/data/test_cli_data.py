"""`recsys generate` and `recsys import ...` end to end through the real CLI app."""

from __future__ import annotations

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
    assert result.exit_code == 0, result.output
    assert load_table(ws, "items").height == 1 and len(list(ws.quarantine_dir.glob("items-*.parquet"))) == 1
    with pytest.raises(FileNotFoundError, match="recsys generate"):  # the world's truth no longer applies
        WorldTruth.load(ws)
    result = runner.invoke(app, ["--home", str(home), "import", "items", str(items), "--strict"])
    assert result.exit_code != 0


@pytest.mark.parametrize("command", [["generate"], ["import", "movielens"], ["import", "impressions"]])
def test_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output
