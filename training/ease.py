"""EASE beside the two-tower: λ chosen on the validation part, scored on the test part, then
refit on every click and registered as `ease` (`recsys.retrieval.ease`).

Run by `recsys train retrieval` on the same split as the two-tower, so the test table compares
both on the same clicks. The registered model is fit on all clicks (train, validation and test:
a closed-form model needs no early stopping, and a user's production model should not lose the
last tenth of their data); the figures printed are those of the fit on the known part.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from recsys import tracking
from recsys.config import Settings
from recsys.data import columns as C
from recsys.data.splits import Split
from recsys.retrieval.ease import EaseModel, choose_lambda, click_matrix
from recsys.retrieval.evaluate import Scorer
from recsys.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass
class EaseResult:
    tag: str | None
    lam: float
    valid_ndcg: dict[float, float]
    champion_lam: float | None
    alias: str
    items: int
    seconds: float

    def summary(self) -> str:
        champ = f", champion λ {self.champion_lam:g}" if self.champion_lam is not None else ""
        return (f"{self.tag} -> @{self.alias}: λ {self.lam:g} (valid NDCG@10 "
                f"{self.valid_ndcg[self.lam]:.4f}{champ}), {self.items:,} items, {self.seconds:.1f} s")


def ease_scorer(model: EaseModel, known: pl.DataFrame, item_ids: Sequence[str]) -> Scorer:
    """`users -> (U, len(item_ids))` EASE scores from each user's `known` clicks (items outside the
    model score -inf), for `recsys.retrieval.evaluate.evaluate_methods`."""
    pos = {i: r for r, i in enumerate(item_ids)}
    cols = np.array([pos.get(i, -1) for i in model.item_ids], np.int64)
    ok = cols >= 0

    def score(users: Sequence[str]) -> np.ndarray:
        x, _ = click_matrix(known, model.item_ids, users)
        out = np.full((len(users), len(item_ids)), -np.inf, np.float32)
        out[:, cols[ok]] = model.scores(x)[:, ok]
        return out

    return score


def _champion_lambda(settings: Settings) -> float | None:
    try:
        folder, _ = tracking.download_model(settings, "models:/ease@champion")
    except LookupError:
        return None
    return EaseModel.load(folder).lam


def train_ease(settings: Settings, ws: Workspace, split: Split, promote: bool = True,
               force: bool = False) -> tuple[EaseResult, EaseModel]:
    """Choose λ on `split` (fit on train, NDCG@10 on valid), register a fit on every click of the
    split. Returns the result and the model fit on the known part (train + valid) for the test
    table. The alias moves to the new version when its λ scores at least the champion's λ on
    this validation part (or `force`)."""
    cfg = settings.retrieval
    t0 = time.perf_counter()
    lambdas = list(cfg.ease_lambdas)
    champion_lam = _champion_lambda(settings) if promote else None
    if champion_lam is not None and champion_lam not in lambdas:
        lambdas.append(champion_lam)
    lam, table = choose_lambda(split.train, split.valid, lambdas, k=10, max_items=cfg.ease_max_items)
    log.info("EASE validation NDCG@10 by λ: %s", {k: round(v, 4) for k, v in table.items()})
    cols = [C.USER_ID, C.ITEM_ID]
    known = pl.concat([split.train.select(cols), split.valid.select(cols)])
    on_known = EaseModel.fit(known, lam, cfg.ease_max_items)
    full = EaseModel.fit(pl.concat([known, split.test.select(cols)]), lam, cfg.ease_max_items)
    beats = champion_lam is None or table[lam] >= table[champion_lam]
    alias = "champion" if promote and (beats or force) else "challenger"
    work = tempfile.mkdtemp(dir=ws.models_dir, prefix=".ease-")
    try:
        with tracking.start_run(settings, "ease"):
            import mlflow

            mlflow.log_params({"lambda": lam, "lambdas": ",".join(f"{v:g}" for v in lambdas),
                               "max_items": cfg.ease_max_items, "items": len(full.item_ids),
                               "protocol": split.protocol})
            mlflow.log_metrics({f"valid_ndcg_at_10.lambda_{k:g}": v for k, v in table.items()
                                if np.isfinite(v)})
            full.save(work)
            ref = tracking.log_and_register(settings, work, "ease", {"lambda": lam, "valid_ndcg_at_10": table,
                                                                    "champion_lambda": champion_lam,
                                                                    "protocol": split.protocol})
            tracking.set_alias(settings, "ease", alias, ref.version)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = EaseResult(ref.tag, lam, table, champion_lam, alias, len(full.item_ids),
                        time.perf_counter() - t0)
    return result, on_known
