"""`recsys thumbnails train | generate | evaluate` through typer, with the encoder loaded the real way
(`load_trained_encoder`: here from `clip.pretrained`, a saved tiny CLIP)."""

from __future__ import annotations

import json

import polars as pl
import typer
from typer.testing import CliRunner

from recsys.cli import common
from recsys.cli import thumbnails as cli_thumbnails
from recsys.data import columns as C
from recsys.workspace import Workspace


def app() -> typer.Typer:
    root = typer.Typer()
    root.callback()(common.main_options)
    cli_thumbnails.register(root, {})
    return root


def toml(settings: dict, checkpoint) -> str:
    sections: dict[str, dict] = {}
    top = {}
    for key, value in settings.items():
        if "." in key:
            section, name = key.split(".", 1)
            sections.setdefault(section, {})[name] = value
        else:
            top[key] = value
    sections["clip"]["pretrained"] = str(checkpoint)
    lines = [f"{k} = {json.dumps(v)}" for k, v in top.items()]
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def text(result) -> str:
    return " ".join(result.output.split())  # rich wraps long lines


def test_train_generate_evaluate_commands(tmp_path, monkeypatch, clip_checkpoint, small, items_factory):
    home = tmp_path / "home"
    config = tmp_path / "recsys.toml"
    config.write_text(toml({**small, "thumbnails.epochs": 1}, clip_checkpoint))
    monkeypatch.setenv("RECSYS_CONFIG", str(config))
    monkeypatch.setenv("RECSYS_HOME", str(home))
    ws = Workspace.at(home)
    runner = CliRunner()

    missing = runner.invoke(app(), ["thumbnails", "generate"])
    assert missing.exit_code == 1 and "does not exist" in text(missing)  # no items table yet

    items_factory(ws)
    nomodel = runner.invoke(app(), ["thumbnails", "generate"])
    assert nomodel.exit_code == 1 and "recsys thumbnails train" in text(nomodel)

    trained = runner.invoke(app(), ["thumbnails", "train", "--epochs", "1"])
    assert trained.exit_code == 0, trained.output
    assert "thumbnails/v1 @champion" in text(trained)

    generated = runner.invoke(app(), ["thumbnails", "generate"])
    assert generated.exit_code == 0, generated.output
    assert "3 generated" in text(generated) and "1 failed" in text(generated)
    items = pl.read_parquet(ws.table("items"))
    assert items.filter(pl.col(C.IMAGE_SOURCE) == "generated").height == 3

    forced = runner.invoke(app(), ["thumbnails", "generate", "--force", "--steps", "2"])
    assert forced.exit_code == 0 and "3 generated, 0 already there" in text(forced)

    evaluated = runner.invoke(app(), ["thumbnails", "evaluate", "--seeds", "2"])
    assert evaluated.exit_code == 0, evaluated.output
    assert "CLIP-score gap generated - mismatched" in text(evaluated)
    assert "Recall@3: no image" in text(evaluated)
