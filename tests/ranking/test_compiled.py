"""The ranker's compiled trees: the same scores as LightGBM, a cache that is reused, and LightGBM
whenever the compiled forest would differ."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys.config import load_settings
from recsys.data import columns as C
from recsys.ranking.compiled import CompiledTrees, LightGBMTrees, compile_trees, probe_rows
from recsys.ranking.features import FeatureSpec
from recsys.ranking.model import MODEL_FILE, RankerModel, RankSet, fit, lgb_params


def _rows(spec: FeatureSpec, n: int, seed: int) -> np.ndarray:
    """Feature rows with missing values and small integer codes in the categorical columns."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(spec.names)))
    x[rng.random(x.shape) < 0.1] = np.nan
    for name in spec.categorical:
        if name in spec.names:
            x[:, spec.names.index(name)] = rng.integers(0, 6, n)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def ranker(tmp_path_factory: pytest.TempPathFactory) -> tuple[RankerModel, Path, FeatureSpec]:
    spec = FeatureSpec(categories=["a", "b", "c", "d", "e"])
    x = _rows(spec, 3000, 0)
    y = (np.nan_to_num(x[:, 0]) + np.random.default_rng(1).normal(size=len(x)) > 1).astype(np.int32)
    settings = load_settings(**{"ranker.min_data_in_leaf": 5})
    booster, _ = fit(lgb_params(settings.ranker, 0, 1), spec, RankSet(x, y, np.full(300, 10)), None, 40, 0)
    pop = pl.DataFrame({C.ITEM_ID: ["i0"], "score": [1.0]})
    folder = RankerModel(booster, spec, pop).save(tmp_path_factory.mktemp("ranker"))
    return RankerModel.load(folder), folder, spec


def test_compiled_trees_score_as_lightgbm(ranker, tmp_path: Path) -> None:
    model, folder, spec = ranker
    compiled = RankerModel.load(folder, compiled_cache=tmp_path)
    assert isinstance(compiled.trees, CompiledTrees)
    for x in (_rows(spec, 385, 7), probe_rows(model.booster)):
        np.testing.assert_allclose(compiled.predict(x), model.predict(x), rtol=0, atol=1e-12)
    assert isinstance(model.trees, LightGBMTrees)  # loaded without a cache folder: LightGBM


def test_the_compiled_object_is_cached_and_reused(ranker, tmp_path: Path) -> None:
    model, folder, spec = ranker
    compile_trees(folder / MODEL_FILE, model.booster, tmp_path)
    cached = list(tmp_path.iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".o"
    stamp = cached[0].stat().st_mtime_ns
    again = compile_trees(folder / MODEL_FILE, model.booster, tmp_path)
    assert isinstance(again, CompiledTrees) and cached[0].stat().st_mtime_ns == stamp
    x = _rows(spec, 50, 3)
    np.testing.assert_allclose(again.predict(x), model.predict(x), rtol=0, atol=1e-12)


def test_a_forest_that_differs_from_the_booster_is_not_used(ranker, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    model, folder, spec = ranker
    other = tmp_path / "other.txt"  # the same model with one leaf value changed
    text = (folder / MODEL_FILE).read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("leaf_value="))
    values = line.removeprefix("leaf_value=").split(" ")
    values[0] = repr(float(values[0]) + 0.5)
    other.write_text(text.replace(line, "leaf_value=" + " ".join(values), 1))
    trees = compile_trees(other, model.booster, tmp_path / "cache")
    assert isinstance(trees, LightGBMTrees)
    assert "differ from LightGBM" in caplog.text
