"""The backfill: one row per item, incremental by content hash, resumable after a hard kill."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from recsys.data import columns as C
from recsys.data.tables import load_table, save_table
from recsys.embeddings.config import ClipConfig
from recsys.embeddings.encoder import ClipEncoder
from recsys.workspace import Workspace
from training.backfill import backfill

REPO = Path(__file__).resolve().parents[2]
COMPARED = [C.ITEM_ID, C.IMAGE_SOURCE, C.MODEL_VERSION, C.CONTENT_HASH]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return ClipEncoder(ClipConfig()).save_checkpoint(tmp_path_factory.mktemp("ckpt") / "clip.pt")


@pytest.fixture
def cfg(settings, checkpoint: Path):
    """Settings whose encoder is a local checkpoint (no fine-tuned model registered)."""
    clip = settings.clip.model_copy(update={"pretrained": str(checkpoint)})
    return settings.model_copy(update={"clip": clip})


def _vectors(df: pl.DataFrame, column: str) -> np.ndarray:
    return np.array(df[column].to_list(), dtype=np.float32)


def _assert_same_table(a: pl.DataFrame, b: pl.DataFrame) -> None:
    assert a.select(COMPARED).equals(b.select(COMPARED))
    for col in (C.TEXT_EMBEDDING, C.EMBEDDING):
        np.testing.assert_allclose(_vectors(a, col), _vectors(b, col), atol=1e-5)
    assert a[C.IMAGE_EMBEDDING].is_null().equals(b[C.IMAGE_EMBEDDING].is_null())


def test_backfill_is_complete_then_incremental(cfg, ws: Workspace, catalogue: pl.DataFrame) -> None:
    cfg = cfg.model_copy(update={"clip": cfg.clip.model_copy(update={"workers": 1})})  # DataLoader worker
    first = backfill(cfg, ws, push_to_feast=False)
    table = load_table(ws, "item_embeddings")
    assert first.embedded == table.height == catalogue.height and table[C.ITEM_ID].is_unique().all()
    assert first.shards_written == 3 and not list(ws.embeddings_dir.glob("*.parquet"))
    assert table.schema[C.EMBEDDING] == pl.List(pl.Float32)
    vecs = _vectors(table, C.EMBEDDING)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    no_image = table.filter(pl.col(C.IMAGE_SOURCE) == "none")
    assert no_image.height == (catalogue[C.IMAGE_SOURCE] == "none").sum() > 0
    assert no_image[C.IMAGE_EMBEDDING].is_null().all()
    text_only = _vectors(no_image, C.TEXT_EMBEDDING)
    np.testing.assert_allclose(_vectors(no_image, C.EMBEDDING), text_only, atol=1e-6)
    assert first.outcomes == {"ok": catalogue.height - no_image.height, "no image": no_image.height}

    second = backfill(cfg, ws, push_to_feast=False)
    assert (second.embedded, second.skipped) == (0, catalogue.height)

    changed = catalogue.with_columns(
        pl.when(pl.col(C.ITEM_ID) == "i00003").then(pl.lit("a brand new description"))
        .otherwise(pl.col(C.DESCRIPTION)).alias(C.DESCRIPTION)
    ).filter(pl.col(C.ITEM_ID) != "i00007")
    save_table(ws, "items", changed)
    third = backfill(cfg, ws, push_to_feast=False)
    assert (third.embedded, third.removed) == (1, 1)
    after = load_table(ws, "item_embeddings")
    assert after.height == changed.height and "i00007" not in after[C.ITEM_ID].to_list()
    diff = after.join(table, on=C.ITEM_ID).filter(pl.col(C.CONTENT_HASH) != pl.col(f"{C.CONTENT_HASH}_right"))
    assert diff[C.ITEM_ID].to_list() == ["i00003"]


def test_bad_images_get_text_only_vectors_with_reasons(cfg, ws: Workspace, catalogue: pl.DataFrame) -> None:
    paths = catalogue.filter(pl.col(C.IMAGE_URI).is_not_null())[C.IMAGE_URI].to_list()
    Path(paths[0]).write_bytes(b"garbage")
    Path(paths[1]).write_bytes(Path(paths[1]).read_bytes()[:60])
    Path(paths[2]).unlink()
    result = backfill(cfg, ws, push_to_feast=False)
    assert result.outcomes["unknown format"] == 1 and result.outcomes["truncated or corrupt"] == 1
    assert result.outcomes["missing file"] == 1
    table = load_table(ws, "item_embeddings")
    assert table.height == catalogue.height
    assert result.image_sources["none"] == (catalogue[C.IMAGE_SOURCE] == "none").sum() + 3


KILLED_RUN = """
import os, signal, sys
from recsys.config import load_settings
from recsys.workspace import Workspace
from training.backfill import backfill
settings = load_settings()
backfill(settings, Workspace.at(settings.home), push_to_feast=False,
         on_shard=lambda path: os.kill(os.getpid(), signal.SIGKILL))
"""


def test_killed_run_resumes_to_the_same_table(cfg, tmp_path: Path, catalogue_factory) -> None:
    ws_a, ws_b = Workspace.at(tmp_path / "a"), Workspace.at(tmp_path / "b")
    catalogue_factory(ws_a, 40, seed=3)
    catalogue_factory(ws_b, 40, seed=3)
    env = {**os.environ, "RECSYS_HOME": str(ws_a.root), "RECSYS_DEVICE": "cpu",
           "RECSYS_CONFIG": str(tmp_path / "x"), "RECSYS_TRACKING__TRACKING_URI": cfg.tracking.tracking_uri,
           "RECSYS_TRACKING__ARTIFACT_ROOT": cfg.tracking.artifact_root,
           "RECSYS_CLIP__PRETRAINED": cfg.clip.pretrained, "RECSYS_CLIP__SHARD_ROWS": "8",
           "RECSYS_CLIP__BATCH_SIZE": "8", "RECSYS_CLIP__WORKERS": "0", "RECSYS_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN], env=env, cwd=REPO, capture_output=True,
                          timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert len(list(ws_a.embeddings_dir.glob("part-*.parquet"))) == 1
    assert not ws_a.table("item_embeddings").exists()

    resumed = backfill(cfg.model_copy(update={"home": ws_a.root}), ws_a, push_to_feast=False)
    assert (resumed.resumed, resumed.embedded) == (8, 32)
    whole = backfill(cfg.model_copy(update={"home": ws_b.root}), ws_b, push_to_feast=False)
    assert whole.embedded == 40
    _assert_same_table(load_table(ws_a, "item_embeddings"), load_table(ws_b, "item_embeddings"))


def test_stray_temp_files_of_a_killed_run_are_removed(cfg, ws: Workspace, catalogue: pl.DataFrame) -> None:
    """Temp files a kill left (0 bytes, named as `atomic_path` names them) go at the next run's
    start: only this job's names, only files older than the run; nothing else is touched."""
    import time

    history = ws.table_history("item_embeddings")
    stray = [ws.embeddings_dir / ".part-all-0123456789abcdef.parquet.ab12cd34.parquet",
             ws.table("item_embeddings").parent / ".item_embeddings.parquet.k2j4h6g8.parquet",
             history / ".v3.parquet.zz_9y8x7.parquet", history / ".versions.json.q1w2e3r4.json"]
    kept = [ws.table("items").parent / ".items.parquet.ab12cd34.parquet",  # another table's
            ws.embeddings_dir / ".part-0of2-0123456789abcdef.parquet.ab12cd34.parquet",  # another shard's
            ws.embeddings_dir / "notes.txt", history / "v9.parquet.bak"]
    old = time.time() - 3600
    for path in (*stray, *kept):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        os.utime(path, (old, old))
    running = ws.table("item_embeddings").parent / ".item_embeddings.parquet.n0w4r7n5.parquet"
    running.write_bytes(b"")  # a temp younger than the run: not a stopped run's
    os.utime(running, (time.time() + 3600,) * 2)

    result = backfill(cfg, ws, push_to_feast=False)
    assert not [p for p in stray if p.exists()]
    assert all(p.exists() for p in (*kept, running))
    table = load_table(ws, "item_embeddings")
    assert result.embedded == table.height == catalogue.height and table[C.ITEM_ID].is_unique().all()
