"""What a workspace stores names its own files relative to itself (or is re-pointed on open), so
a moved workspace reads and writes only where it is now. The end-to-end move of a trained
workspace is tests/test_moved_workspace.py; these are the parts, quickly."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import polars as pl
import pytest

from recsys import tracking
from recsys.config import load_settings
from recsys.data import columns as C
from recsys.data.tables import load_table, save_table
from recsys.workspace import Workspace


def _move(home: Path, to: Path) -> Path:
    """Rename the workspace's parent folder (the whole tree moves) and return the new home."""
    home.parent.rename(to)
    return to / home.name


def test_workspace_paths_round_trip(tmp_path: Path) -> None:
    ws = Workspace.at(tmp_path / "ws")
    assert ws.portable(ws.root / "data" / "images" / "a.png") == "data/images/a.png"
    assert ws.resolve("data/images/a.png") == ws.root / "data" / "images" / "a.png"
    assert ws.portable("/elsewhere/a.png") == "/elsewhere/a.png"
    assert ws.portable("https://x.org/a.png") == "https://x.org/a.png"
    assert ws.portable(ws.root / ".." / "b.png") == str(ws.root / ".." / "b.png")  # never a `..` path


def test_image_paths_are_stored_relative_and_follow_a_move(tmp_path: Path) -> None:
    home = tmp_path / "a" / "ws"
    ws = Workspace.at(home)
    image = ws.images_dir / "i1.png"
    image.write_bytes(b"png")
    items = pl.DataFrame({C.ITEM_ID: ["i1", "i2", "i3"],
                          C.IMAGE_URI: [str(image), "/outside/i2.jpg", None]})
    save_table(ws, "items", items)
    assert pl.read_parquet(ws.table("items"))[C.IMAGE_URI].to_list() == ["data/images/i1.png",
                                                                         "/outside/i2.jpg", None]
    moved = Workspace.at(_move(home, tmp_path / "b"))
    uris = load_table(moved, "items")[C.IMAGE_URI].to_list()
    assert uris == [str(moved.images_dir / "i1.png"), "/outside/i2.jpg", None]
    assert Path(uris[0]).read_bytes() == b"png"


def test_mlflow_store_is_repointed_after_a_move(tmp_path: Path) -> None:
    """Runs, experiments and registered versions point at the moved workspace's artifacts; a new
    run of an existing experiment writes there, and the old folder never comes back."""
    import mlflow

    home = tmp_path / "a" / "ws"
    settings = load_settings(home=str(home))
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"w" * 10)
    with tracking.start_run(settings, "unit"):
        tracking.log_and_register(settings, model, "unit-model", {"kind": "unit"}, alias="champion")
    tracking.list_models(settings)  # a second open records where the store points

    new = _move(home, tmp_path / "b")
    settings = load_settings(home=str(new))
    folder, ref = tracking.download_model(settings, "models:/unit-model@champion")
    assert (folder / "weights.bin").read_bytes() == b"w" * 10
    assert ref.source.startswith(new.as_uri() + "/")
    with tracking.start_run(settings, "unit") as run:
        mlflow.log_dict({"x": 1}, "x.json")
    assert run.info.artifact_uri.startswith(new.as_uri() + "/")
    assert (new / "mlflow" / "artifacts" / "unit" / run.info.run_id / "artifacts" / "x.json").is_file()
    with sqlite3.connect(new / "mlflow" / "mlflow.db") as con:
        stored = [v for (v,) in con.execute("SELECT artifact_location FROM experiments")]
        stored += [v for (v,) in con.execute("SELECT artifact_uri FROM runs")]
        stored += [v for (v,) in con.execute("SELECT source FROM model_versions")]
    assert all(v.startswith(new.as_uri() + "/") for v in stored), stored
    assert not (tmp_path / "a").exists()
    assert tracking.repoint_artifacts(Workspace.at(new)) == 0  # nothing left to re-point


def test_lineage_names_workspace_files_relative(tmp_path: Path) -> None:
    settings = load_settings(home=str(tmp_path / "ws"))
    ws = Workspace.at(settings.home)
    pl.DataFrame({"a": [1]}).write_parquet(ws.table("items"))
    with tracking.start_run(settings, "unit"):
        source = str(ws.feature_sources_dir / "v.parquet")
        lineage = tracking.log_lineage({"items": ws.table("items")}, feature_views={"v": {"path": source}})
    assert lineage["tables"]["items"]["path"] == "data/items.parquet"
    assert lineage["feature_views"]["v"]["path"] == "feast/sources/v.parquet"


@pytest.mark.integration  # Feast
def test_feature_registry_follows_a_move(tmp_path: Path) -> None:
    from features.store import apply, feature_store

    home = tmp_path / "a" / "ws"
    apply(load_settings(home=str(home)))
    new = _move(home, tmp_path / "b")
    settings = load_settings(home=str(new))
    store = feature_store(settings)
    paths = {v.name: v.batch_source.path for v in store.list_feature_views()}
    assert paths and all(Path(p).parent == new / "feast" / "sources" for p in paths.values()), paths
    assert not (tmp_path / "a").exists()
