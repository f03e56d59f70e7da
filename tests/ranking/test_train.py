"""`train_ranker` end to end on the tiny shop: MLflow run, registry, aliases, bad logs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys import tracking
from recsys.config import load_settings
from recsys.data import columns as C
from recsys.data.contracts import ContractError
from recsys.data.tables import save_table
from recsys.ranking.dataset import TrainingDataError
from recsys.ranking.model import RankerModel
from recsys.workspace import Workspace
from training.ranker import train_ranker


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    home = tmp_path_factory.mktemp("rk") / "ws"
    settings = load_settings(home=str(home), **{"ranker.rounds": 40, "ranker.candidates": 8})
    ws = Workspace.at(settings.home)
    save_table(ws, "items", world["items"])
    save_table(ws, "item_embeddings", world["item_embeddings"])
    save_table(ws, "impressions", world["impressions"])
    log = home.parent / "log.parquet"
    world["impressions"].write_parquet(log)
    first = train_ranker(settings, ws, log, promote=True, retrieval_uri="clip-profile")
    return settings, ws, log, first


def test_registers_champion_with_lineage_and_importance(trained) -> None:
    settings, ws, log, r = trained
    assert r.alias == "champion" and r.tag == "ranker/v1"
    assert r.valid_ndcg > 0.3 and r.best_iteration >= 1
    folder, ref = tracking.download_model(settings, "models:/ranker@champion")
    assert ref.version == "1"
    model = RankerModel.load(folder)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["retrieval"] == "clip-profile" and meta["features"] == model.spec.names
    assert meta["examination"][0] == 1.0
    import mlflow

    client = mlflow.MlflowClient()
    files = {a.path for a in client.list_artifacts(r.run_id)}
    assert {"feature_importance.png", "feature_importance.json", "lineage.json", "model"} <= files
    got = mlflow.artifacts.download_artifacts(run_id=r.run_id, artifact_path="lineage.json",
                                              dst_path=str(ws.root / "dl"))
    lineage = json.loads(Path(got).read_text())
    assert lineage["tables"]["impressions"]["rows"] == world_rows(log)
    history = client.get_metric_history(r.run_id, "valid_ndcg_at_10")
    assert len(history) >= r.best_iteration  # one point per boosting round


def world_rows(path: Path) -> int:
    return pl.read_parquet(path).height


def test_same_data_same_model_and_no_promotion_without_a_gain(trained) -> None:
    settings, ws, log, first = trained
    csv = log.with_suffix(".csv")
    pl.read_parquet(log).write_csv(csv)
    second = train_ranker(settings, ws, csv, promote=True, retrieval_uri="clip-profile")
    assert second.valid_ndcg == pytest.approx(first.valid_ndcg)  # seeded and deterministic
    assert second.alias == "challenger"  # equal is not better: the champion stays
    assert tracking.resolve(settings, "models:/ranker@champion").version == "1"
    a = RankerModel.load(tracking.download_model(settings, "models:/ranker/1")[0])
    b = RankerModel.load(tracking.download_model(settings, "models:/ranker/2")[0])
    x = np.random.default_rng(0).normal(size=(50, len(a.spec.names))).astype(np.float32)
    np.testing.assert_array_equal(a.predict(x), b.predict(x))


def test_bad_logs_fail_clearly_and_never_move_the_alias(trained, tmp_path) -> None:
    settings, ws, log, _ = trained
    before = tracking.resolve(settings, "models:/ranker@champion").version
    df = pl.read_parquet(log)
    ratings = df.with_columns(pl.when(pl.col(C.CLICKED)).then(5).otherwise(2).alias(C.CLICKED))
    ratings.write_parquet(tmp_path / "ratings.parquet")
    with pytest.raises(ContractError, match="not 0/1"):
        train_ranker(settings, ws, tmp_path / "ratings.parquet", promote=True, retrieval_uri="clip-profile")
    df.with_columns(pl.lit(False).alias(C.CLICKED)).write_parquet(tmp_path / "none.parquet")
    with pytest.raises(TrainingDataError, match="no click"):
        train_ranker(settings, ws, tmp_path / "none.parquet", promote=True, retrieval_uri="clip-profile")
    assert tracking.resolve(settings, "models:/ranker@champion").version == before


def test_unknown_items_are_quarantined_with_counts(trained, tmp_path) -> None:
    settings, ws, log, _ = trained
    df = pl.read_parquet(log)
    ghost = df.head(12).with_columns(pl.lit("ghost").alias(C.ITEM_ID), (pl.col(C.REQUEST_ID) + "g"))
    pl.concat([df, ghost]).write_parquet(tmp_path / "ghost.parquet")
    settings2 = load_settings(home=str(settings.home), **{"ranker.rounds": 5})
    r = train_ranker(settings2, ws, tmp_path / "ghost.parquet", promote=False, retrieval_uri="clip-profile")
    assert r.counts["quarantined_rows"] == 12 and r.alias == "challenger"


def test_a_worse_challenger_is_not_promoted_unless_forced(trained) -> None:
    settings, ws, log, _ = trained
    champion = tracking.resolve(settings, "models:/ranker@champion").version
    # no leaf can hold 10M rows: a constant model, which orders the candidates at random
    ranker = settings.ranker.model_copy(update={"min_data_in_leaf": 10_000_000})
    weak = settings.model_copy(update={"ranker": ranker})
    worse = train_ranker(weak, ws, log, promote=True, retrieval_uri="clip-profile")
    assert worse.champion_ndcg is not None and worse.valid_ndcg < worse.champion_ndcg
    assert worse.alias == "challenger"
    assert tracking.resolve(settings, "models:/ranker@champion").version == champion
    forced = train_ranker(weak, ws, log, promote=True, retrieval_uri="clip-profile", force=True)
    assert forced.alias == "champion"
    assert tracking.resolve(settings, "models:/ranker@champion").version == forced.version
