"""train -> generate -> evaluate on a tiny catalogue, with real MLflow and a real (tiny) CLIP."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys.config import load_settings
from recsys.data import columns as C
from recsys.data.tables import load_table
from recsys.thumbnails.backends import check_encoder_fits
from recsys.thumbnails.model import CheckpointError, ConditioningError
from recsys.workspace import Workspace
from training.thumbnails import (
    evaluate_thumbnails,
    generate_thumbnails,
    load_thumbnailer,
    read_provenance,
    train_thumbnails,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tracking_store, clip_checkpoint, encoder, small, items_factory):
    home = tmp_path_factory.mktemp("thumbs") / "home"
    settings = load_settings(**tracking_store, **small, home=str(home),
                             **{"clip.pretrained": str(clip_checkpoint)})
    ws = Workspace.at(home)
    items_factory(ws)
    result = train_thumbnails(settings, ws, encoder=encoder)
    return settings, ws, result


def test_train_registers_the_model_with_curves_and_grids(trained):
    import mlflow

    from recsys import tracking

    settings, ws, result = trained
    assert result.model_tag.startswith("thumbnails/v") and result.steps == 2 * result.epochs
    assert np.isfinite(result.final_loss) and result.holdout_items > 0
    ref = tracking.resolve(settings, "models:/thumbnails@champion")
    assert ref.tag == result.model_tag
    client = mlflow.MlflowClient()
    files = {f.path for f in client.list_artifacts(ref.run_id)}
    assert {"loss_curve.png", "samples", "model", "lineage.json"} <= files
    samples = [f.path for f in client.list_artifacts(ref.run_id, "samples")]
    assert samples == ["samples/epoch_001.png", "samples/epoch_002.png"]
    assert len(client.get_metric_history(ref.run_id, "loss")) == result.steps


def test_generate_fills_every_missing_image_and_resumes(trained, encoder):
    settings, ws, _ = trained
    report = generate_thumbnails(settings, ws, encoder=encoder)
    # 4 items without image; the one with no text at all fails and is recorded
    assert (report.missing, report.generated, report.failed, report.skipped) == (4, 3, 1, 0)
    assert "all empty" in report.failures["it023"]
    items = load_table(ws, "items")
    gen = items.filter(pl.col(C.IMAGE_SOURCE) == "generated")
    assert sorted(gen[C.ITEM_ID]) == ["it020", "it021", "it022"]
    assert all(Path(u).parent == ws.thumbnails_dir and Path(u).is_file() for u in gen[C.IMAGE_URI])
    assert items.filter(pl.col(C.ITEM_ID) == "it023")[C.IMAGE_SOURCE].item() == "none"
    prov = read_provenance(ws)
    ok = prov.filter(pl.col("status") == "ok")
    assert set(ok["model_version"]) == {report.model} and ok["prompt"][1] == "白い背景に赤い丸"
    assert ok["prompt"][2].startswith("a blue square") and len(ok["prompt"][2]) <= 300
    assert set(ok["steps"]) == {settings.thumbnails.steps} and ok["seed"].n_unique() == 3

    before = {u: Path(u).read_bytes() for u in gen[C.IMAGE_URI]}
    again = generate_thumbnails(settings, ws, encoder=encoder)
    assert (again.generated, again.skipped, again.failed) == (0, 3, 1)
    forced = generate_thumbnails(settings, ws, force=True, encoder=encoder)
    assert (forced.generated, forced.skipped) == (3, 0)
    assert all(Path(u).read_bytes() == b for u, b in before.items())  # deterministic for the seed


@dataclass
class FailsOn:
    """Fault injection around the real generator: raises when a prompt contains `word`."""

    inner: object
    word: str

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, prompts, seeds, steps, guidance_scale):
        if any(self.word in p for p in prompts):
            raise RuntimeError(f"boom on {self.word}")
        return self.inner.generate(prompts, seeds, steps, guidance_scale)


def test_one_failing_item_does_not_stop_the_batch(trained, encoder, tmp_path, items_factory):
    settings, _, _ = trained
    home = tmp_path / "other"
    settings = settings.model_copy(update={"home": home})
    ws = Workspace.at(home)
    items_factory(ws)
    thumbs = FailsOn(load_thumbnailer(settings, encoder), "白")
    report = generate_thumbnails(settings, ws, encoder=encoder, thumbnailer=thumbs)
    assert (report.generated, report.failed) == (2, 2)
    assert report.failures["it021"] == "RuntimeError: boom on 白"
    prov = read_provenance(ws)
    assert prov.filter(pl.col("status") == "failed").height == 2


def test_evaluate_reports_clip_scores_and_recall(trained, encoder):
    settings, ws, _ = trained
    out = evaluate_thumbnails(settings, ws, encoder=encoder)
    for key in ("clip_real", "clip_mismatched", "clip_generated", "gap", "gap_std", "recall_real",
                "recall_no_image", "recall_generated", "recall_generated_std"):
        assert np.isfinite(out[key]), key
    assert out["eval_items"] >= 2
    assert out["gap"] == pytest.approx(out["clip_generated"] - out["clip_mismatched"])
    assert 0.0 <= out["recall_no_image"] <= 1.0


def test_missing_model_and_foreign_encoder_are_clear_errors(tracking_store, tmp_path, encoder, small):
    settings = load_settings(**tracking_store, **small, home=str(tmp_path / "h"),
                             **{"thumbnails.model_uri": "models:/thumbnails@nobody"})
    with pytest.raises(CheckpointError, match="recsys thumbnails train"):
        load_thumbnailer(settings, encoder)

    class Other:
        version, dim = "clip/v99", encoder.dim

    with pytest.raises(ConditioningError, match="trained on text vectors of CLIP clip/v1.*retrain"):
        check_encoder_fits({"encoder_version": "clip/v1"}, encoder.dim, Other())
    Other.dim = 7
    with pytest.raises(ConditioningError, match=f"expects {encoder.dim}-d text vectors"):
        check_encoder_fits({}, encoder.dim, Other())
