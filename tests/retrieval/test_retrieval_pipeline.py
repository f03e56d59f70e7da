"""`recsys train retrieval` end to end on a workspace holding the synthetic shop: real MLflow
registry, the model folder downloaded back and loaded as serving would."""

import numpy as np
import polars as pl
import pytest
import typer
from retrieval_shop import make_shop
from typer.testing import CliRunner

from recsys import tracking
from recsys.cli import retrieval as retrieval_cli
from recsys.cli.common import main_options
from recsys.config import load_settings
from recsys.data import columns as C
from recsys.data.tables import save_table
from recsys.retrieval.artifact import RetrievalModel
from recsys.workspace import Workspace
from training.retrieval import train_retrieval


def _fill(ws: Workspace, seed: int = 0, click_only: bool = False) -> None:
    shop = make_shop(seed, n_items=150, n_users=200, clicks_per_user=12)
    save_table(ws, "items", shop.items)
    save_table(ws, "item_embeddings", shop.embeddings.with_columns(
        pl.lit("clip-test/v1").alias(C.MODEL_VERSION), pl.col(C.ITEM_ID).alias(C.CONTENT_HASH)))
    n = shop.clicks.height
    save_table(ws, "impressions", shop.clicks.with_columns(
        pl.format("r{}", pl.int_range(n)).alias(C.REQUEST_ID),
        pl.lit(None if click_only else 0, pl.Int32).alias(C.POSITION),
        pl.lit(True).alias(C.CLICKED), pl.lit(None, pl.Float64).alias(C.PROPENSITY),
        pl.lit("logged").alias(C.POLICY)))


def test_train_registers_model_vectors_and_index(home):
    settings = load_settings(**{"home": str(home), "retrieval.epochs": 2, "retrieval.batch_size": 256,
                                "retrieval.dim": 16, "retrieval.hidden": 32, "retrieval.clip_dim": 16,
                                "retrieval.user_buckets": 1009})
    ws = Workspace.at(settings.home)
    _fill(ws)
    result = train_retrieval(settings, ws)
    assert result.protocol.startswith("temporal")
    table = result.evaluation.table
    assert set(table["method"]) == {"two_tower", "popularity", "clip_only", "ease"}
    assert tracking.resolve(settings, "models:/ease@champion").version == "1"
    assert {"all", "warm_items", "cold_items", "cold_users"} <= set(table["segment"])
    folder, ref = tracking.download_model(settings, "models:/retrieval@champion")
    assert ref.version == result.version
    model = RetrievalModel.load(folder)
    assert model.model_version == result.model_version
    items = pl.read_parquet(folder / "items.parquet")
    assert set(items["model_version"]) == {result.model_version}
    ids, scores = model.recommend(["u1"], 5, [["i0001"]], exclude=[{"i0001"}])
    assert ids.shape == (1, 5) and "i0001" not in set(ids[0]) and np.isfinite(scores).all()

    # a click-only log (every row a click, no slate positions) switches to the RecBole random split
    _fill(ws, click_only=True)
    again = train_retrieval(settings, ws, promote=False)
    assert again.protocol.startswith("random_ratio")
    assert tracking.resolve(settings, "models:/retrieval@challenger").version == again.version


def test_cli_prints_the_evaluation_table(home):
    ws = Workspace.at(home)
    _fill(ws)
    app = typer.Typer()
    app.callback()(main_options)
    train = typer.Typer()
    app.add_typer(train, name="train")
    retrieval_cli.register(app, {"train": train})
    out = CliRunner().invoke(app, ["--home", str(home), "train", "retrieval", "--epochs", "1",
                                   "--batch-size", "256", "--cold-items", "0.2"])
    assert out.exit_code == 0, out.output
    assert "clip_only" in out.output and "cold_items" in out.output
    assert "items held out as cold" in out.output

    empty = CliRunner().invoke(app, ["--home", str(home / "nothing"), "train", "retrieval"])
    assert empty.exit_code == 1 and "recsys" in empty.output


@pytest.mark.parametrize("seed", [0, 1])
def test_embedded_world_two_tower_and_clip_beat_popularity(home, seed):
    """The real chain on a small embedded world: generate -> CLIP trained from scratch -> backfill
    -> train retrieval (about a minute per seed, most of it CLIP).

    The item cold-start protocol holds out a fifth of the items' train/validation clicks: a
    temporal split alone leaves only the 15-18 items created in its last two days cold, too few
    for a margin that holds across seeds. Measured over seeds 0-2 (600 items, 5,000 users, 1M
    impressions, the Plackett-Luce logging of issue 15): two-tower / popularity NDCG@10 on warm
    items 1.56-2.31; CLIP-only / popularity (chance: no cold item has a click) Recall@10 on cold
    items 1.80-3.14 (2.6-4.0 under the earlier deterministic logging, whose clicks followed the
    users' home category more closely)."""
    from recsys.data.world import generate_world
    from training.backfill import backfill
    from training.clip import finetune_clip

    settings = load_settings(**{"home": str(home), "seed": seed, "world.items": 600, "world.users": 5000,
                                "world.impressions": 1_000_000, "retrieval.cold_item_fraction": 0.2})
    ws = Workspace.at(settings.home)
    generate_world(settings.world, settings.seed, ws)
    finetune_clip(settings, ws)
    backfill(settings, ws, push_to_feast=False)
    result = train_retrieval(settings, ws)
    v = result.evaluation.value
    assert result.counts["cold_items_held_out"] > 60
    assert v("clip_only", "cold_items", "users") > 300
    assert v("two_tower", "warm_items", "ndcg@10") > 1.2 * v("popularity", "warm_items", "ndcg@10")
    assert v("clip_only", "cold_items", "recall@10") > 1.5 * v("popularity", "cold_items", "recall@10")
