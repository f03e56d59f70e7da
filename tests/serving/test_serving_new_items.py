"""Issue 17, item 5: an item imported and backfilled while the server runs is recommended after a
reload, without a restart. Real parts throughout: a generated shop taken through `recsys
backfill` (a tiny CLIP encoder, randomly initialised, from a local checkpoint), features built and
materialized into Feast, the two-tower, EASE and the LightGBM ranker trained and promoted in
MLflow; the new items come in through the command line (`recsys import items`, `recsys
backfill`) while the app serves."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from fastapi.testclient import TestClient
from serving_helpers import API_KEY, wait_ready

from recsys.config import Settings, load_settings
from recsys.data import columns as C
from recsys.data.tables import load_table
from recsys.workspace import Workspace
from serving.app import create_app

pytestmark = pytest.mark.integration
NEW_CATEGORY = "garden gnome"  # a category no trained model has seen
CONFIG = """
seed = 7
device = "cpu"
[world]
items = {items}
users = 100
impressions = 4000
images = false
[clip]
pretrained = "{checkpoint}"
workers = 0
[retrieval]
epochs = 2
clip_dim = 32  # below the tiny CLIP's 128: the two-tower's PCA applies to new items too
[ranker]
rounds = 30
[tracking]
tracking_uri = "{tracking_uri}"
artifact_root = "{artifact_root}"
[serving]
api_key = "{api_key}"
exploration = "none"
"""
N_ITEMS = 80  # every item fits in one k = 100 answer


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, tracking_store: dict[str, str]) -> Iterator[Settings]:
    """The shop through the real pipeline; RECSYS_CONFIG / RECSYS_HOME point the command line at it."""
    import torch

    from features.jobs import build_features, materialize
    from recsys.data.world import generate_world
    from recsys.embeddings.config import ClipConfig
    from recsys.embeddings.encoder import ClipEncoder
    from training.backfill import backfill
    from training.ranker import train_ranker
    from training.retrieval import train_retrieval

    root = tmp_path_factory.mktemp("new-items")
    torch.manual_seed(0)
    checkpoint = ClipEncoder(ClipConfig()).save_checkpoint(root / "clip.pt")
    config = root / "recsys.toml"
    config.write_text(CONFIG.format(items=N_ITEMS, checkpoint=checkpoint, api_key=API_KEY,
                                    tracking_uri=tracking_store["tracking.tracking_uri"],
                                    artifact_root=tracking_store["tracking.artifact_root"]))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECSYS_CONFIG", str(config))
        mp.setenv("RECSYS_HOME", str(root / "ws"))
        settings = load_settings()
        ws = Workspace.at(settings.home)
        generate_world(settings.world, settings.seed, ws)
        backfill(settings, ws)
        build_features(settings, ws)
        materialize(settings, ws)
        train_retrieval(settings, ws)
        train_ranker(settings, ws, promote=True)
        yield settings


def cli(*args: str) -> str:
    from typer.testing import CliRunner

    from recsys.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def import_items(ws: Workspace, rows: list[dict[str, Any]], folder: Path) -> None:
    """`recsys import items` of `rows` (upserted beside the catalogue), then `recsys backfill`."""
    path = folder / "new_items.parquet"
    pl.DataFrame(rows, schema=load_table(ws, "items").schema).write_parquet(path)
    cli("import", "items", str(path))
    assert f"{len(rows)} embedded" in cli("backfill")


def items_of(client: TestClient, user: str, **params: Any) -> list[str]:
    body = client.get(f"/v1/users/{user}/recommendations", params={"k": 100, **params}).json()
    assert body["fallback"] is None and not body["degraded"], body
    return [i["item_id"] for i in body["items"]]


def test_items_imported_while_serving_are_recommended_after_a_reload(shop: Settings, tmp_path: Path) -> None:
    ws = Workspace.at(shop.home)
    items = load_table(ws, "items")
    user = load_table(ws, "impressions").filter(pl.col(C.CLICKED))[C.USER_ID].sort()[0]
    with TestClient(create_app(shop)) as client:
        wait_ready(client, timeout=300)
        twin_of = items_of(client, user, k=1)[0]  # the user's best item, imported again as a new item
        original = items.filter(pl.col(C.ITEM_ID) == twin_of).row(0, named=True)
        twin = {**original, C.ITEM_ID: "new-twin"}
        gnome = {**items.filter(pl.col(C.ITEM_ID) != twin_of).row(0, named=True), C.ITEM_ID: "new-gnome",
                 C.CATEGORY: NEW_CATEGORY, C.TITLE: "Garden gnome", C.DESCRIPTION: "A gnome for the garden."}
        import_items(ws, [twin, gnome], tmp_path)
        assert client.get("/v1/items/new-twin/similar").status_code == 404  # the server has not reloaded

        reload = client.post("/v1/admin/reload", headers={"X-API-Key": API_KEY})
        assert reload.status_code == 200 and reload.json()["ready"], reload.json()
        # the catalogue and the CLIP vectors: the twin's content is its original's
        similar = client.get("/v1/items/new-twin/similar", params={"k": 3}).json()["items"]
        assert similar[0]["item_id"] == twin_of and similar[0]["score"] == pytest.approx(1.0, abs=1e-5)
        assert client.get(f"/v1/items/{twin_of}/similar", params={"k": 1}).json()["items"][0]["item_id"] == \
            "new-twin"
        # stage 1 retrieves them (the two-tower's item tower over their content), the ranker ranks them
        everything = items_of(client, user)
        assert {"new-twin", "new-gnome"} <= set(everything)
        in_category = items_of(client, user, category=original[C.CATEGORY])
        assert "new-twin" in in_category and twin_of in in_category
        assert items_of(client, user, categories=[NEW_CATEGORY]) == ["new-gnome"]  # a category no model knew
        assert "new-gnome" not in items_of(client, user, exclude_categories=[NEW_CATEGORY])
        assert "new-gnome" in items_of(client, user, categories=[NEW_CATEGORY, original[C.CATEGORY]])
    # whose taste matches: with stage 1 cut to the user's 10 nearest items (two-tower only), the new
    # twin is among them, next to its original (the ranker then places it by its own features:
    # without clicks or EASE weights it is ranked as the cold item it is)
    narrow = shop.model_copy(update={"retrieval": shop.retrieval.model_copy(
        update={"candidates": 10, "ease_candidates": 0})})
    with TestClient(create_app(narrow)) as client:
        wait_ready(client, timeout=300)
        nearest = items_of(client, user, k=10)  # the 10 candidates, ranked (a longer answer is filled)
        assert "new-twin" in nearest and twin_of in nearest, nearest


def test_the_alias_poll_picks_up_items_that_the_backfill_published(shop: Settings, tmp_path: Path) -> None:
    """`recsys backfill` pushes the new vectors to Feast, which stamps a new materialization: the
    server's poll reloads by itself."""
    ws = Workspace.at(shop.home)
    items = load_table(ws, "items")
    user = load_table(ws, "impressions").filter(pl.col(C.CLICKED))[C.USER_ID].sort()[-1]
    settings = shop.model_copy(update={"serving": shop.serving.model_copy(update={"poll_seconds": 0.2})})
    with TestClient(create_app(settings)) as client:
        wait_ready(client, timeout=300)
        row = {**items.row(1, named=True), C.ITEM_ID: "new-polled", C.CATEGORY: "polled category",
               C.TITLE: "Polled thing"}
        import_items(ws, [row], tmp_path)
        deadline = time.monotonic() + 60
        while client.get("/v1/items/new-polled/similar").status_code != 200:
            assert time.monotonic() < deadline, "the server never reloaded the catalogue"
            time.sleep(0.1)
        assert items_of(client, user, category="polled category") == ["new-polled"]
