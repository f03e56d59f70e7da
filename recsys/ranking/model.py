"""The LightGBM lambdarank model: fitting, and the model folder it is saved as.

A ranker folder holds `model.txt` (LightGBM's text format), `features.json` (the fixed,
versioned feature list, see `recsys.ranking.features.FeatureSpec`), `popularity.parquet` (the
fallback for users the system does not know) and `meta.json` (versions, lineage, metrics;
written by `tracking.log_and_register`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys.data import columns as C
from recsys.io import write_parquet
from recsys.ranking.compiled import LightGBMTrees, TreeScorer, compile_trees
from recsys.ranking.config import RankerConfig
from recsys.ranking.features import FeatureSpec, base_margin

MODEL_FILE = "model.txt"
FEATURES_FILE = "features.json"
POPULARITY_FILE = "popularity.parquet"
META_FILE = "meta.json"


def lgb_params(cfg: RankerConfig, seed: int, threads: int) -> dict[str, Any]:
    """LightGBM parameters from `RankerConfig`: lambdarank, NDCG@10, seeded and deterministic."""
    return {
        "objective": "lambdarank",
        "metric": "ndcg",
        "eval_at": [10],
        "num_leaves": cfg.num_leaves,
        "learning_rate": cfg.learning_rate,
        "min_data_in_leaf": cfg.min_data_in_leaf,
        "feature_fraction": cfg.feature_fraction,
        "bagging_fraction": cfg.bagging_fraction,
        "bagging_freq": 1 if cfg.bagging_fraction < 1 else 0,
        "lambda_l2": cfg.lambda_l2,
        "max_bin": cfg.max_bin,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": threads,
        "verbosity": -1,
    }


@dataclass
class RankSet:
    """Rows of contiguous query groups: features, labels, weights, group sizes."""

    x: np.ndarray
    y: np.ndarray
    group: np.ndarray
    weight: np.ndarray | None = None

    def __post_init__(self) -> None:
        if int(self.group.sum()) != len(self.y) or len(self.x) != len(self.y):
            raise ValueError(f"group sizes sum to {int(self.group.sum())} but there are {len(self.y)} "
                             f"labels and {len(self.x)} feature rows")
        bad = ~np.isin(self.y, (0, 1))
        if bad.any():
            raise ValueError(f"labels must be 0/1; found {np.unique(self.y[bad])[:5].tolist()}")


def fit(params: dict[str, Any], spec: FeatureSpec, train: RankSet, valid: RankSet | None,
        rounds: int, early_stopping: int, callbacks: list | None = None
        ) -> tuple[Any, dict[str, list[float]]]:
    """Train lambdarank with early stopping on validation NDCG@10; returns (booster, evals)."""
    import lightgbm as lgb

    names = spec.names
    cat = [n for n in spec.categorical if n in names]
    dtrain = lgb.Dataset(train.x, label=train.y, group=train.group, weight=train.weight,
                         init_score=base_margin(spec, train.x) if spec.base else None,
                         feature_name=names, categorical_feature=cat, free_raw_data=True)
    evals: dict[str, dict[str, list[float]]] = {}
    cbs = [lgb.record_evaluation(evals), *(callbacks or [])]
    valid_sets, valid_names = [], []
    if valid is not None and len(valid.y):
        dvalid = lgb.Dataset(valid.x, label=valid.y, group=valid.group, reference=dtrain,
                             init_score=base_margin(spec, valid.x) if spec.base else None,
                             feature_name=names, categorical_feature=cat)
        valid_sets, valid_names = [dvalid], ["valid"]
        cbs.append(lgb.early_stopping(early_stopping, first_metric_only=True, verbose=False))
    booster = lgb.train(params, dtrain, num_boost_round=rounds, valid_sets=valid_sets,
                        valid_names=valid_names, callbacks=cbs)
    return booster, evals.get("valid", {})


def ndcg_at(scores: np.ndarray, y: np.ndarray, group: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k over groups with at least one positive (LightGBM's definition, binary gains)."""
    out, start = [], 0
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    for g in group:
        s, lab = scores[start:start + g], y[start:start + g]
        start += g
        npos = int(lab.sum())
        if npos == 0:
            continue
        order = np.argsort(-s, kind="stable")[:k]
        dcg = float((lab[order] * disc[: len(order)]).sum())
        idcg = float(disc[: min(npos, k)].sum())
        out.append(dcg / idcg)
    return float(np.mean(out)) if out else float("nan")


def popularity(log_df: pl.DataFrame, days: float) -> pl.DataFrame:
    """Clicks per item over the last `days` before the log's last event (the cold-user fallback)."""
    clicks = log_df.filter(pl.col(C.CLICKED))
    if clicks.height == 0:
        return pl.DataFrame(schema={C.ITEM_ID: pl.String, "score": pl.Float64})
    end = clicks[C.EVENT_TIMESTAMP].max()
    recent = clicks.filter(pl.col(C.EVENT_TIMESTAMP) > end - pl.duration(seconds=int(days * 86400)))
    return (recent.group_by(C.ITEM_ID).agg(pl.len().cast(pl.Float64).alias("score"))
            .sort(["score", C.ITEM_ID], descending=[True, False]))


@dataclass
class RankerModel:
    """A loaded ranker: booster, feature spec, popularity fallback and metadata; `trees` score
    the rows (LightGBM's predictor unless the model was loaded compiled)."""

    booster: Any
    spec: FeatureSpec
    popularity: pl.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)
    trees: TreeScorer | None = None

    def __post_init__(self) -> None:
        if self.trees is None:
            self.trees = LightGBMTrees(self.booster)

    def predict(self, x: np.ndarray, threads: int = 1) -> np.ndarray:
        """Scores of rows of `x` (columns in `spec.names` order): the trees plus the spec's base
        margin."""
        out = self.trees.predict(x, threads)
        return out + base_margin(self.spec, x) if self.spec.base else out

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(folder / MODEL_FILE))
        self.spec.save(folder / FEATURES_FILE)
        write_parquet(self.popularity, folder / POPULARITY_FILE)
        return folder

    @classmethod
    def load(cls, folder: str | Path, compiled_cache: Path | None = None) -> RankerModel:
        """The model in `folder`; with `compiled_cache` (a folder) its trees compiled to machine
        code where that reproduces LightGBM (`recsys.ranking.compiled`)."""
        import lightgbm as lgb

        folder = Path(folder)
        missing = [f for f in (MODEL_FILE, FEATURES_FILE) if not (folder / f).exists()]
        if missing:
            raise FileNotFoundError(f"{folder} is not a ranker model folder: {missing} missing")
        booster = lgb.Booster(model_file=str(folder / MODEL_FILE))
        spec = FeatureSpec.load(folder / FEATURES_FILE)
        if booster.feature_name() != spec.names:
            raise ValueError(f"{folder}: the model's features {booster.feature_name()} differ from "
                             f"{FEATURES_FILE} {spec.names}")
        pop_path = folder / POPULARITY_FILE
        pop = (pl.read_parquet(pop_path) if pop_path.exists()
               else pl.DataFrame(schema={C.ITEM_ID: pl.String, "score": pl.Float64}))
        meta = json.loads((folder / META_FILE).read_text()) if (folder / META_FILE).exists() else {}
        trees = compile_trees(folder / MODEL_FILE, booster, compiled_cache) if compiled_cache else None
        return cls(booster=booster, spec=spec, popularity=pop, meta=meta, trees=trees)
