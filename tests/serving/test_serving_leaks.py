"""Nothing leaks to an unauthenticated caller: no paths, database URIs or hosts in /readyz and
error bodies, and /ui/images serves files only from under the allowed image roots."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
from fastapi.testclient import TestClient
from PIL import Image
from serving_helpers import API_KEY, make_settings, wait_ready

from recsys.config import Settings
from recsys.data import columns as C
from recsys.data.tables import load_table, save_table
from recsys.workspace import Workspace
from serving.app import create_app
from serving.state import ServingState, load_catalogue


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path)
    return path


def test_images_only_from_the_workspace_and_configured_roots(world: Workspace, tmp_path: Path) -> None:
    outside = _png(tmp_path / "elsewhere" / "secret.png")
    allowed = _png(tmp_path / "shop-images" / "ok.png")
    link = world.images_dir / "link.png"
    os.symlink(outside, link)  # a link inside the workspace that leads out of it
    uris = {"i000": str(outside), "i001": "../../../../etc/passwd", "i003": str(allowed), "i004": str(link),
            "i006": "data/images/i006.png"}  # relative: to the workspace
    _png(world.images_dir / "i006.png")
    items = load_table(world, "items").with_columns(
        pl.col(C.ITEM_ID).replace_strict(uris, default=pl.col(C.IMAGE_URI)).alias(C.IMAGE_URI))
    save_table(world, "items", items)

    def loader(settings: Settings, previous: ServingState | None = None) -> ServingState:
        cat = load_catalogue(world, image_roots=settings.serving.image_roots)
        return ServingState(catalogue=cat, recommender=None, features=None,
                            versions={"ranker": None, "retrieval": None}, problems=())

    settings = make_settings(world.root, **{"serving.image_roots": [str(allowed.parent)]})
    with TestClient(create_app(settings, loader=loader)) as c:
        wait_ready(c)
        for item_id in ("i000", "i001", "i004"):
            r = c.get(f"/ui/images/{item_id}")
            assert r.status_code == 404 and str(tmp_path) not in r.text, (item_id, r.text)
        assert c.get("/ui/images/i003").status_code == 200  # under serving.image_roots
        assert c.get("/ui/images/i006").status_code == 200  # workspace-relative
        assert c.get("/ui/images/i009").status_code == 200  # the world's own image, in the workspace


def test_readyz_and_503_bodies_carry_reasons_without_paths_or_hosts(tmp_path: Path) -> None:
    ws = Workspace.at(tmp_path / "my workspace")
    secrets = (str(ws.root), "sqlite:////srv/mlflow/mlflow.db", "10.1.2.3:6379", "redis-host:6380")
    problems = (f"catalogue: {ws.table('items')} does not exist: run `recsys generate` first",
                f"feature store: ConnectionError: Error 111 connecting to {secrets[2]}; also {secrets[3]}",
                f"models (@champion): LookupError: no model in {secrets[1]}",
                "feature store: OSError: cannot open '/var/lib/recsys/online.db'")

    def loader(settings: Settings, previous: ServingState | None = None) -> ServingState:
        return ServingState(None, None, None, {"ranker": None, "retrieval": None}, problems)

    with TestClient(create_app(make_settings(ws.root), loader=loader)) as c:
        wait_ready(c)
        r = c.get("/readyz")
        assert r.status_code == 503
        reasons = " ".join(r.json()["reasons"])
        assert "catalogue" in reasons and "feature store" in reasons and "models" in reasons
        assert "details" not in r.json()
        recs = c.get("/v1/users/u1/recommendations")
        similar = c.get("/v1/items/i1/similar")
        for body in (r.text, recs.text, similar.text):
            for secret in (*secrets, "/var/lib", "/srv/"):
                assert secret not in body, (secret, body)
        assert recs.status_code == 503 and "catalogue" in recs.json()["message"]
        admin = c.get("/readyz", headers={"X-API-Key": API_KEY}).json()  # the full text, behind the key
        assert admin["details"] == list(problems)
        assert "details" not in c.get("/readyz", headers={"X-API-Key": "wrong"}).json()


def test_public_reasons_hide_workspace_relative_files_but_keep_model_tags() -> None:
    from serving.state import public_reason

    text = "sqlite at feast/online.db in the workspace; no ranker/v2 at models:/ranker@champion"
    assert public_reason(text) == "sqlite at <path> in the workspace; no ranker/v2 at models:/ranker@champion"
