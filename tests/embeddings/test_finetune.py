"""CLIP fine-tuning: registered as clip@champion with Recall@k per epoch in MLflow; used by the backfill."""

from __future__ import annotations

import numpy as np
import polars as pl

from recsys import tracking
from recsys.data.tables import load_table
from recsys.embeddings.encoder import load_trained_encoder
from recsys.workspace import Workspace
from training.backfill import backfill
from training.clip import finetune_clip, is_validation, recall_at_k


def test_recall_at_k_counts_the_diagonal_rank() -> None:
    sim = np.array([[0.9, 0.1, 0.0], [0.8, 0.5, 0.1], [0.0, 0.2, 0.1]])
    # ranks of the diagonal: row0 0, row1 1, row2 1
    assert recall_at_k(sim, (1, 2)) == {1: 1 / 3, 2: 1.0}


def test_validation_split_is_stable_and_sized() -> None:
    ids = [f"i{k}" for k in range(2000)]
    val = is_validation(ids, 0.2, seed=1)
    assert 0.17 < val.mean() < 0.23
    assert (is_validation(ids[::-1], 0.2, seed=1)[::-1] == val).all()


def test_finetune_registers_champion_and_backfill_uses_it(settings, ws: Workspace, catalogue: pl.DataFrame):
    result = finetune_clip(settings, ws)
    assert result.model_tag.startswith("clip/v") and len(result.history) == settings.clip.epochs
    assert result.train_items + result.val_items == (catalogue["image_source"] == "original").sum()
    assert 0.0 <= result.metrics["i2t_r5"] <= 1.0 and "t2i_r10" in result.metrics
    ref = tracking.resolve(settings, "models:/clip@champion")
    assert ref.tag == result.model_tag
    from mlflow import MlflowClient

    history = MlflowClient().get_metric_history(ref.run_id, "val_i2t_r5")
    assert [m.step for m in history] == list(range(settings.clip.epochs + 1))

    encoder = load_trained_encoder(settings)
    assert encoder.version == result.model_tag
    out = backfill(settings, ws, push_to_feast=False)
    table = load_table(ws, "item_embeddings")
    assert out.embedded == catalogue.height and set(table["model_version"]) == {result.model_tag}


def test_finetune_starts_from_a_local_checkpoint(settings, ws: Workspace, catalogue: pl.DataFrame, tmp_path):
    import torch

    from recsys.embeddings.config import ClipConfig
    from recsys.embeddings.encoder import ClipEncoder

    torch.manual_seed(5)
    ckpt = ClipEncoder(ClipConfig()).save_checkpoint(tmp_path / "start.pt")
    clip = settings.clip.model_copy(update={"pretrained": str(ckpt), "epochs": 1})
    result = finetune_clip(settings.model_copy(update={"clip": clip}), ws)
    from mlflow import MlflowClient

    run = MlflowClient().get_run(tracking.resolve(settings, "models:/clip@champion").run_id)
    assert run.data.params["pretrained"] == str(ckpt) and len(result.history) == 1
