"""The Feast repository end to end on sqlite: build, apply, materialize, historical and online
reads, lineage in MLflow, and the errors a caller can make."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import polars as pl
import pytest

from features.definitions import SCHEMAS, source_path
from features.jobs import build_features, materialization_version, materialize, publish_item_content
from features.online import OnlineFeatures
from features.store import FeatureStoreError
from features.training_set import build_training_set
from recsys.config import load_settings
from recsys.data.tables import save_table
from recsys.io import file_sha256
from recsys.workspace import Workspace


@pytest.fixture(scope="module")
def built(tmp_path_factory, world_factory):
    """A workspace with a small world, features built and materialized up to day 6 of 10."""
    settings = load_settings(home=str(tmp_path_factory.mktemp("fs") / "ws"))
    ws = Workspace.at(settings.home)
    world = world_factory()
    for name, df in world.items():
        save_table(ws, name, df)
    result = build_features(settings, ws)
    return settings, ws, world, result


def test_build_writes_sources_and_logs_lineage(built):
    import mlflow

    settings, ws, world, result = built
    assert set(result.paths) == set(SCHEMAS)
    assert result.rows["user_behaviour"] == 12 * 10  # 12 users, a snapshot a day for 10 days
    run = mlflow.get_run(result.run_id)
    assert run.data.tags["recsys.pipeline"] == "features"
    lineage = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/lineage.json")
    assert lineage["tables"]["impressions"]["sha256"] == file_sha256(ws.table("impressions"))
    assert lineage["tables"]["impressions"]["rows"] == world["impressions"].height
    views = lineage["feature_views"]
    assert set(views) == set(SCHEMAS)
    assert views["user_behaviour"]["sha256"] == file_sha256(
        source_path(ws.feature_sources_dir, "user_behaviour")
    )


def test_training_rows_never_see_their_own_or_later_events(built, start):
    """Every impression as a training row: its features count only events before its own time."""
    settings, ws, world, _ = built
    imps = world["impressions"]
    # a row exactly at a snapshot stamp with a click at that very instant
    stamp = start + timedelta(days=5)
    probe = pl.DataFrame(
        {"user_id": ["u00"], "item_id": ["i000"], "event_timestamp": [stamp], "clicked": [True]},
        schema_overrides={"event_timestamp": pl.Datetime("us", "UTC")},
    )
    rows = pl.concat([imps.select(probe.columns).sample(200, seed=1), probe])
    out = build_training_set(settings, rows, ["user_behaviour", "item_behaviour:clicks_30d", "item_content"])
    assert out.height == rows.height
    assert out.select(rows.columns).equals(rows), "rows come back in order, untouched"
    for row in out.iter_rows(named=True):
        t = row["event_timestamp"]
        earlier = imps.filter((pl.col("user_id") == row["user_id"]) & (pl.col("event_timestamp") < t))
        day = t.replace(hour=0, minute=0, second=0, microsecond=0)
        expected = earlier.filter(pl.col("event_timestamp") >= day - timedelta(days=30))
        expected = expected.filter(pl.col("event_timestamp") < day)
        got = row["user_behaviour__clicks_30d"]
        assert (got or 0) == expected["clicked"].sum()
        assert (got or 0) <= earlier["clicked"].sum()
        item_earlier = imps.filter((pl.col("item_id") == row["item_id"]) & (pl.col("event_timestamp") < day))
        assert (row["item_behaviour__clicks_30d"] or 0) == item_earlier["clicked"].sum()
        assert len(row["item_content__embedding"]) == 8


def test_pandas_in_pandas_out(built):
    settings, _, world, _ = built
    rows = world["impressions"].select("user_id", "event_timestamp", "clicked").tail(20).to_pandas()
    out = build_training_set(settings, rows, ["user_behaviour:ctr_7d"], output="pandas")
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == ["user_id", "event_timestamp", "clicked", "user_behaviour__ctr_7d"]
    assert out["user_behaviour__ctr_7d"].notna().all()


def test_offline_and_online_agree_for_the_same_timestamp(built, start):
    settings, ws, _, _ = built
    t = start + timedelta(days=6, hours=3)
    result = materialize(settings, ws, end=t)
    assert result.version == materialization_version(ws)
    online = OnlineFeatures(settings)
    offline = build_training_set(
        settings, pl.DataFrame({"user_id": ["u03", "u07"], "event_timestamp": [t, t]}), ["user_behaviour"]
    )
    assert offline["user_behaviour__impressions_7d"].min() > 0
    for row in offline.iter_rows(named=True):
        assert online.user(row["user_id"]) == {
            k: v for k, v in row.items() if k.startswith("user_behaviour__")
        }
    assert all(v is None for v in online.user("nobody").values())


def test_item_cache_follows_materialization_version(built, world_factory):
    settings, ws, world, _ = built
    materialize(settings, ws)
    online = OnlineFeatures(settings)
    frame = online.items(["i002", "i001", "unknown"])
    assert frame["item_id"].to_list() == ["i002", "i001", "unknown"]
    assert frame["item_content__model_version"].to_list() == ["clip/v1", "clip/v1", None]
    assert len(frame["item_content__embedding"][0]) == 8
    assert frame["item_behaviour__popularity_rank"][0] >= 1
    first = online.version
    # a backfill publishes new vectors: the cache sees the new version
    newer = world["item_embeddings"].with_columns(
        pl.lit("clip/v2").alias("model_version"), pl.col("event_timestamp") + timedelta(days=1)
    )
    save_table(ws, "item_embeddings", newer)
    publish_item_content(settings, ws)
    assert online.items(["i002"])["item_content__model_version"].to_list() == ["clip/v2"]
    assert online.version != first
    # the cache filled from the offline sources holds the same values as the online store
    by_online = online.item_cache().sort("item_id")
    by_offline = OnlineFeatures(settings, item_cache="offline").item_cache().sort("item_id")
    assert by_offline.select(by_online.columns).equals(by_online)
    assert by_online["item_content__embedding"].dtype == pl.List(pl.Float32)


def test_errors_name_the_view_feature_or_key(built):
    settings, _, world, _ = built
    rows = world["impressions"].head(3)
    with pytest.raises(FeatureStoreError, match="no feature view 'user_stuff'"):
        build_training_set(settings, rows, ["user_stuff"])
    with pytest.raises(FeatureStoreError, match="'user_behaviour' has no feature 'clicks_2d'"):
        build_training_set(settings, rows, ["user_behaviour:clicks_2d"])
    with pytest.raises(FeatureStoreError, match="entity key 'user_id' must be strings"):
        build_training_set(settings, rows.with_columns(pl.lit(3).alias("user_id")), ["user_behaviour"])
    with pytest.raises(FeatureStoreError, match="need a 'item_id' column"):
        build_training_set(settings, rows.drop("item_id"), ["item_behaviour"])
    online = OnlineFeatures(settings)
    with pytest.raises(FeatureStoreError, match="entity key 'user_id' must be a string"):
        online.user(17)  # type: ignore[arg-type]


def test_failed_build_leaves_previous_sources_whole(built):
    settings, ws, world, _ = built
    path = source_path(ws.feature_sources_dir, "user_behaviour")
    before = file_sha256(path)
    save_table(ws, "impressions", world["impressions"].drop("user_id"))
    try:
        with pytest.raises(ValueError, match="user_id"):
            build_features(settings, ws)
    finally:
        save_table(ws, "impressions", world["impressions"])
    assert file_sha256(path) == before
    assert not [p for p in ws.feature_sources_dir.iterdir() if p.name.startswith(".")], "no temp files left"


def test_polars_engine_matches_feast(built):
    settings, _, world, _ = built
    rows = world["impressions"].sample(300, seed=7).select("user_id", "item_id", "event_timestamp", "clicked")
    views = ["user_behaviour", "item_behaviour", "item_content:model_version"]
    by_feast = build_training_set(settings, rows, views)
    by_polars = build_training_set(settings, rows, views, engine="polars")
    assert by_polars.columns == by_feast.columns
    assert by_polars.equals(by_feast)
    assert by_feast["user_behaviour__clicks_30d"].null_count() < rows.height


def test_online_read_before_apply_says_what_to_run(settings):
    with pytest.raises(FeatureStoreError, match="recsys features build"):
        OnlineFeatures(settings).user("u01")


def test_apply_runs_only_when_what_it_registers_changed(tmp_path):
    """A second `apply` of the same definitions leaves the registry untouched (Feast's import
    alone is ~5 CPU s of every build); a changed project, a removed online store or `force`
    apply again, and the registry then holds the new project."""
    from feast import FeatureStore

    from features.store import apply, repo_config

    settings = load_settings(home=str(tmp_path / "ws"))
    ws = Workspace.at(settings.home)
    registry = ws.feast_dir / "registry.db"
    apply(settings)
    first = registry.read_bytes()
    apply(settings)
    assert registry.read_bytes() == first
    apply(settings, force=True)
    assert registry.read_bytes() != first  # Feast stamps each apply: the check above can fail

    (ws.feast_dir / "online.db").unlink()
    before = registry.read_bytes()
    apply(settings)
    assert (ws.feast_dir / "online.db").exists() and registry.read_bytes() != before

    other = load_settings(home=settings.home, **{"features.project": "other_shop"})
    apply(other)
    views = FeatureStore(config=repo_config(other)).list_feature_views()
    assert sorted(v.name for v in views) == sorted(SCHEMAS)
