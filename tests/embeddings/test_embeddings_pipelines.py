"""Finetune + backfill end to end on real catalogues (slow: minutes on a shared CPU)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from recsys.data import columns as C
from recsys.data.tables import load_table
from recsys.workspace import Workspace
from training.backfill import backfill
from training.clip import finetune_clip

ML100K = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ml-100k"


@pytest.mark.slow
def test_embedded_world_recall_well_above_chance(settings, ws: Workspace) -> None:
    from recsys.data.world import generate_world

    settings = settings.model_copy(update={
        "world": settings.world.model_copy(update={"users": 20, "impressions": 500}),
        "clip": settings.clip.model_copy(update={"epochs": 8, "train_batch_size": 128, "batch_size": 64}),
    })
    generate_world(settings.world, settings.seed, ws)
    result = finetune_clip(settings, ws)
    assert result.metrics["i2t_r5"] > 10 * result.metrics["chance_r5"]
    out = backfill(settings, ws, push_to_feast=False)
    assert out.embedded == load_table(ws, "items").height == load_table(ws, "item_embeddings").height


@pytest.mark.slow
@pytest.mark.skipif(not (ML100K / "u.data").exists(), reason=f"MovieLens 100K not found at {ML100K}")
def test_movielens_posters_finetune_and_backfill(settings, ws: Workspace) -> None:
    from recsys.data.movielens import import_movielens

    import_movielens(ML100K, ws)
    settings = settings.model_copy(update={"clip": settings.clip.model_copy(
        update={"epochs": 1, "train_batch_size": 64, "batch_size": 64})})
    finetune_clip(settings, ws)
    out = backfill(settings, ws, push_to_feast=False)
    table = load_table(ws, "item_embeddings")
    assert out.embedded == table.height == load_table(ws, "items").height
    assert (table[C.IMAGE_SOURCE] == "original").sum() > 1500
    assert table.filter(pl.col(C.IMAGE_SOURCE) == "none")[C.IMAGE_EMBEDDING].is_null().all()
