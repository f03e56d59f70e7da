"""The MLflow backbone: runs in the workspace, lineage, registry, aliases, download."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from recsys import tracking
from recsys.config import load_settings
from recsys.io import file_sha256
from recsys.workspace import Workspace


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    """One workspace for the module (creating an MLflow database costs seconds)."""
    return load_settings(home=str(tmp_path_factory.mktemp("tracking") / "ws"))


def _model(tmp_path: Path, weights: bytes) -> Path:
    folder = tmp_path / "model"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "weights.bin").write_bytes(weights)
    return folder


def test_tracking_lives_in_the_workspace(settings, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ws = Workspace.at(settings.home)
    assert tracking.tracking_uri(settings) == f"sqlite:///{ws.mlflow_dir / 'mlflow.db'}"
    assert tracking.artifact_root(settings).startswith(ws.mlflow_dir.as_uri())
    with tracking.start_run(settings, "unit") as run:
        assert run.info.artifact_uri.startswith(ws.mlflow_dir.as_uri())
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()


def test_run_params_metrics_and_lineage_round_trip(settings, tmp_path):
    import mlflow

    ws = Workspace.at(settings.home)
    table = ws.table("impressions")
    pl.DataFrame({"user_id": ["u1", "u2"], "clicked": [True, False]}).write_parquet(table)
    with tracking.start_run(settings, "unit", run_name="lineage") as run:
        flat = tracking.log_params(settings.features, "features.")
        tracking.log_metrics({"auc": 0.75, "skipped": float("nan"), "none": None})
        lineage = tracking.log_lineage(
            {"impressions": table, "absent": tmp_path / "nope.parquet"},
            feature_views={"user_behaviour": {"sha256": "abc"}},
            extra={"note": "unit"},
        )
    assert flat["features.online_store"] == "sqlite"
    stored = mlflow.get_run(run.info.run_id)
    assert stored.data.params["features.ctr_prior_impressions"] == "20.0"
    assert stored.data.metrics == {"auc": 0.75}
    assert stored.data.params["rows.impressions"] == "2"
    assert stored.data.tags["lineage.impressions.sha256"] == file_sha256(table)[:16]
    assert stored.data.tags["recsys.pipeline"] == "unit"
    back = tracking.load_lineage(settings, run.info.run_id)
    assert back == lineage
    assert back["tables"]["impressions"]["sha256"] == file_sha256(table)
    assert "absent" not in back["tables"]
    assert back["feature_views"] == {"user_behaviour": {"sha256": "abc"}} and back["note"] == "unit"


def test_register_alias_resolve_and_download(settings, tmp_path):
    with tracking.start_run(settings, "unit"):
        v1 = tracking.log_and_register(
            settings, _model(tmp_path / "a", b"one"), "ranker", {"auc": 0.7}, alias="champion"
        )
    with tracking.start_run(settings, "unit"):
        v2 = tracking.log_and_register(
            settings, _model(tmp_path / "b", b"two"), "ranker", {"auc": 0.8}, alias="challenger"
        )
    assert (v1.version, v2.version) == ("1", "2")
    assert v2.tag == "ranker/v2" and v2.uri == "models:/ranker/2"
    champion = tracking.resolve(settings, "models:/ranker@champion")
    assert champion.version == "1" and "champion" in champion.aliases
    assert tracking.resolve(settings, "ranker@challenger").version == "2"

    folder, ref = tracking.download_model(settings, "models:/ranker@champion")
    assert (folder / "weights.bin").read_bytes() == b"one"
    assert '"auc": 0.7' in (folder / "meta.json").read_text()
    assert folder.is_relative_to(Workspace.at(settings.home).models_dir)
    again, _ = tracking.download_model(settings, "models:/ranker/1")  # cached
    assert again == folder

    tracking.set_alias(settings, "ranker", "champion", v2.version)
    folder2, ref2 = tracking.download_model(settings, "models:/ranker@champion")
    assert ref2.version == "2" and (folder2 / "weights.bin").read_bytes() == b"two"
    rows = tracking.list_models(settings)
    assert [(r["name"], r["version"], r["aliases"]) for r in rows] == [
        ("ranker", 1, []),
        ("ranker", 2, ["challenger", "champion"]),
    ]


def test_unknown_model_says_what_to_do(settings):
    with pytest.raises(LookupError, match="no registered model version for 'models:/clip@champion'"):
        tracking.resolve(settings, "models:/clip@champion")


def test_deleted_experiment_is_restored(settings):
    from mlflow import MlflowClient

    with tracking.start_run(settings, "deleted") as run:
        pass
    MlflowClient().delete_experiment(run.info.experiment_id)
    with tracking.start_run(settings, "deleted") as again:
        assert again.info.experiment_id == run.info.experiment_id
