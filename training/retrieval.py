"""`recsys train retrieval`: clicks -> two-tower -> item vectors + index -> MLflow registry.

Steps: read items, item_embeddings (the CLIP backfill) and the click log; split it (temporal
for logged shops; RecBole's per-user random 80/10/10 for MovieLens, where every rating is a
click); join the users' behaviour features point-in-time from Feast (temporal split only);
train with early stopping on validation Recall@K; evaluate on the test part with the same
code for the model and the baselines (most-popular, CLIP-only), overall, on warm and cold
items, and on cold users; log params, curves, the evaluation table and lineage; register the
model folder (weights, item vectors, index, all stamped with one model version) as
`retrieval`, alias `champion`.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl

from recsys import memory, tracking
from recsys.config import Settings
from recsys.data import columns as C
from recsys.data.splits import (
    Split,
    before_holdout,
    candidate_split,
    hold_out_items,
    is_click_only,
    split_protocol,
)
from recsys.data.tables import load_table
from recsys.retrieval.artifact import RetrievalModel
from recsys.retrieval.data import stack_vector_column
from recsys.retrieval.ease import EaseModel
from recsys.retrieval.evaluate import (
    EvalResult,
    clip_scorer,
    evaluate_methods,
    popularity_scorer,
    recent_histories,
)
from recsys.retrieval.train import FitResult, train_two_tower
from recsys.runtime import configure_threads, resolve_device
from recsys.workspace import Workspace
from training.ease import EaseResult, ease_scorer, train_ease

log = logging.getLogger(__name__)
USER_VIEW = "user_behaviour"
COUNT_FEATURES = [f"{USER_VIEW}__{kind}_{d}d" for d in (1, 7, 30) for kind in ("impressions", "clicks")]
USER_FEATURES = COUNT_FEATURES + [f"{USER_VIEW}__ctr_{d}d" for d in (1, 7, 30)] + \
    [f"{USER_VIEW}__days_since_last_click"]


@dataclass
class RetrievalResult:
    version: str | None
    tag: str | None
    run_id: str | None
    model_version: str
    protocol: str
    evaluation: EvalResult
    fit: FitResult
    ease: EaseResult | None = None
    alias: str = "champion"
    champion_ndcg: float | None = None
    champion_tag: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    features: list[str] = field(default_factory=list)

    def summary(self) -> str:
        v = self.evaluation.value
        k = 10
        ease = f", EASE {v('ease', 'all', f'ndcg@{k}'):.4f} ({self.ease.summary()})" if self.ease else ""
        champ = "" if self.champion_ndcg is None else \
            f" (champion {self.champion_tag} {self.champion_ndcg:.4f})"
        return (f"{self.tag} -> @{self.alias}{champ} ({self.model_version}): test NDCG@{k} "
                f"{v('two_tower', 'all', f'ndcg@{k}'):.4f} "
                f"vs popularity {v('popularity', 'all', f'ndcg@{k}'):.4f}, CLIP-only "
                f"{v('clip_only', 'all', f'ndcg@{k}'):.4f}{ease}; "
                f"{self.counts.get('train_clicks', 0):,} train clicks, "
                f"{self.fit.samples_per_s:,.0f} samples/s, best epoch {self.fit.best_epoch + 1}")


def read_clicks(ws: Workspace, holdout_days: float = 0.0) -> tuple[pl.DataFrame, bool]:
    """Click events (user_id, item_id, event_timestamp) and whether the log is click-only, without
    the last `holdout_days` of the log (the offline A/B window, which no model may train on)."""
    path = ws.table("impressions")
    wanted = (C.USER_ID, C.ITEM_ID, C.EVENT_TIMESTAMP, C.CLICKED, C.POSITION)  # what is used below
    columns = [c for c in wanted if c in pl.read_parquet_schema(path)] if path.exists() else None
    imp, start = before_holdout(load_table(ws, "impressions", columns=columns), holdout_days)
    if start is not None:
        log.info("training on events before %s; the last %s days are the A/B window", start, holdout_days)
    clicks = imp.filter(pl.col(C.CLICKED)) if C.CLICKED in imp.columns else imp
    return clicks.select(C.USER_ID, C.ITEM_ID, C.EVENT_TIMESTAMP), is_click_only(imp)


def user_features_at(settings: Settings, rows: pl.DataFrame) -> pl.DataFrame | None:
    """Feast's point-in-time user_behaviour for (user_id, event_timestamp) rows, or None (with a
    warning) when the features were not built (`recsys features`)."""
    ws = Workspace.at(settings.home)
    src = ws.feature_sources_dir / f"{USER_VIEW}.parquet"
    if not src.exists():
        log.warning("no %s feature source (%s): run `recsys features` first; training without user "
                    "features", USER_VIEW, src)
        return None
    try:
        from features.training_set import build_training_set

        df = build_training_set(settings, rows.select(C.USER_ID, C.EVENT_TIMESTAMP), [USER_VIEW])
    except Exception as exc:  # the store is not applied or a source is broken: say so, go on
        log.warning("point-in-time join of %s failed (%s: %s): training without user features",
                    USER_VIEW, type(exc).__name__, exc)
        return None
    missing = [c for c in USER_FEATURES if c not in df.columns]
    if missing:
        log.warning("user features %s missing from %s: training without user features", missing, USER_VIEW)
        return None
    return df


def _metric_key(*parts: str) -> str:
    return re.sub(r"[^\w\-. /]", "_", ".".join(parts).replace("@", "_at_"))


def _champion_ndcg(settings: Settings, split: Split, items: pl.DataFrame, embeddings: pl.DataFrame,
                   test_feats: pl.DataFrame | None,
                   k: int, available: np.ndarray | None) -> tuple[float | None, str | None]:
    """The current champion two-tower's test NDCG@10 on this split (None when there is none);
    `available` given: ranked among the items created by the test's end, as the challenger was. A
    champion trained on more of the log may have seen some of these clicks: the comparison then
    favours it, so a promotion is never won by a leak."""
    try:
        folder, ref = tracking.download_model(settings, "models:/retrieval@champion")
    except LookupError:
        return None, None
    champion = RetrievalModel.load(folder)
    if available is not None:
        available = available_by(items, champion.item_ids, split.test[C.EVENT_TIMESTAMP].max())
    result = evaluate_model(champion, split, embeddings, test_feats, k, available)
    return result.value("two_tower", "all", "ndcg@10"), ref.tag


def train_retrieval(settings: Settings, ws: Workspace, promote: bool = True,
                    force: bool = False, say: Callable[[str], None] | None = None) -> RetrievalResult:
    """Train, evaluate, log and register the two-tower retrieval model (and EASE beside it). With
    `promote`, the new two-tower becomes `@champion` when its test NDCG@10 beats the champion's
    on the same split (or with `force`), else `@challenger`. Once the log is read, the memory
    plan (`recsys.memory`) goes to `say` and a plan above `memory_gib` stops the run."""
    configure_threads(settings.threads)
    import torch

    torch.set_num_threads(settings.threads)
    cfg = settings.retrieval
    device = resolve_device(settings.device)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    items = load_table(ws, "items")
    embeddings = load_table(ws, "item_embeddings")
    clicks, click_only = read_clicks(ws, settings.evaluation.holdout_days)
    known_items = set(items[C.ITEM_ID].to_list())
    counts = {"clicks": clicks.height}
    clicks = clicks.filter(pl.col(C.ITEM_ID).is_in(list(known_items)))
    counts["clicks_unknown_item"] = counts["clicks"] - clicks.height
    if clicks.height == 0:
        raise ValueError(f"{ws.table('impressions')}: no clicks on catalogue items to train on")
    protocol = split_protocol(cfg.split, click_only)
    split = candidate_split(clicks, protocol, settings.seed)
    if cfg.cold_item_fraction > 0:
        split, held = hold_out_items(split, items[C.ITEM_ID].to_list(), cfg.cold_item_fraction,
                                     salt=f"cold-items:{settings.seed}")
        counts["cold_items_held_out"] = len(held)
        log.info("item cold-start protocol: %d items lose their train/validation clicks", len(held))
    counts.update({f"{k}_clicks": v for k, v in split.sizes().items()})
    seconds["read"] = time.perf_counter() - t0
    n_features = len(USER_FEATURES) if protocol == "temporal" and cfg.user_features else 0
    plan = memory.train_retrieval(
        memory.budget_bytes(settings.memory_gib), log_bytes=clicks.estimated_size(),
        embedding_bytes=embeddings.estimated_size(), train_clicks=split.train.height,
        ease_items=min(clicks[C.ITEM_ID].n_unique(), cfg.ease_max_items),
        ease_gram_nonzeros=memory.gram_nonzeros(clicks) if cfg.ease else 0, history=cfg.history,
        n_features=n_features, ease=cfg.ease)
    (say or log.info)(plan.line())
    plan.check()

    t = time.perf_counter()
    train_feats = test_feats = None
    feature_names: list[str] = []
    if protocol == "temporal" and cfg.user_features:
        train_feats = user_features_at(settings, split.train)
        if train_feats is not None:
            feature_names = USER_FEATURES
            test_start: datetime = split.test[C.EVENT_TIMESTAMP].min()
            test_users = split.test.select(C.USER_ID).unique().with_columns(
                pl.lit(test_start).cast(pl.Datetime("us", "UTC")).alias(C.EVENT_TIMESTAMP))
            test_feats = user_features_at(settings, test_users)
    seconds["features"] = time.perf_counter() - t
    ease_result = ease_known = None
    if cfg.ease:
        t = time.perf_counter()
        ease_result, ease_known = train_ease(settings, ws, split, promote=promote, force=force)
        seconds["ease"] = time.perf_counter() - t

    work = tempfile.mkdtemp(dir=ws.models_dir, prefix=".retrieval-")
    try:
        with tracking.start_run(settings, "retrieval") as run:
            import mlflow

            mlflow.log_params({**{f"retrieval.{k}": v for k, v in cfg.model_dump().items()},
                               "seed": settings.seed, "device": device, "protocol": split.protocol,
                               "user_features": ",".join(feature_names) or "none"})
            t = time.perf_counter()
            trained = train_two_tower(items, embeddings, split.train, split.valid, cfg, seed=settings.seed,
                                      device=device, user_features=train_feats, feature_names=feature_names,
                                      log_features=COUNT_FEATURES)
            seconds["fit"] = time.perf_counter() - t
            model = trained.model
            for row in trained.fit.epochs:
                mlflow.log_metric("train_loss", row["loss"], step=row["epoch"])
                if "val_score" in row:
                    mlflow.log_metric(f"valid_recall_at_{cfg.eval_k}", row["val_score"], step=row["epoch"])
            mlflow.log_metrics({"samples_per_s": trained.fit.samples_per_s,
                                "best_epoch": trained.fit.best_epoch})

            t = time.perf_counter()
            available = (available_by(items, model.item_ids, split.test[C.EVENT_TIMESTAMP].max())
                         if split.protocol == "temporal" else None)
            evaluation = evaluate_model(model, split, embeddings, test_feats, cfg.eval_k, available,
                                        ease_known)
            seconds["evaluate"] = time.perf_counter() - t
            table = evaluation.table
            for row in table.iter_rows(named=True):
                mlflow.log_metrics({_metric_key("test", row["segment"], row["method"], m): float(v)
                                    for m, v in row.items() if "@" in m and v is not None and v == v})
            mlflow.log_text(evaluation.format((10, cfg.eval_k)), "evaluation.txt")
            mlflow.log_dict({"protocol": split.protocol, "rows": table.to_dicts()}, "evaluation.json")
            lineage = tracking.log_lineage(
                tables={"impressions": ws.table("impressions"), "items": ws.table("items"),
                        "item_embeddings": ws.table("item_embeddings")},
                feature_views={USER_VIEW: feature_names} if feature_names else {},
                extra={"protocol": split.protocol, "counts": counts,
                       "clip_model_version": _clip_version(embeddings)})
            model.save(work)
            meta = {"model_version": model.model_version, "protocol": split.protocol,
                    "index": model.index.kind, "items": len(model.item_ids), "dim": model.dim,
                    "user_features": feature_names, "lineage": lineage["tables"], "run_id": run.info.run_id,
                    "valid_recall": trained.fit.best_score, "evaluation": table.to_dicts()}
            champion_ndcg = champion_tag = None
            if promote:
                champion_ndcg, champion_tag = _champion_ndcg(settings, split, items, embeddings, test_feats,
                                                             cfg.eval_k, available)
            ndcg = evaluation.value("two_tower", "all", "ndcg@10")
            beats = champion_ndcg is None or ndcg > champion_ndcg
            alias = "champion" if promote and (beats or force) else "challenger"
            if champion_ndcg is not None:
                mlflow.log_metric("champion_test_ndcg_at_10", champion_ndcg)
            ref = tracking.log_and_register(settings, work, "retrieval", meta, alias=alias)
            mlflow.set_tag("retrieval.model_version", model.model_version)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds["total"] = time.perf_counter() - t0
    return RetrievalResult(version=ref.version, tag=ref.tag, run_id=run.info.run_id,
                           model_version=model.model_version, protocol=split.protocol, evaluation=evaluation,
                           fit=trained.fit, ease=ease_result, counts=counts, seconds=seconds,
                           features=feature_names, alias=alias, champion_ndcg=champion_ndcg,
                           champion_tag=champion_tag)


def _clip_version(embeddings: pl.DataFrame) -> str | None:
    if C.MODEL_VERSION not in embeddings.columns or embeddings.height == 0:
        return None
    versions = embeddings[C.MODEL_VERSION].unique().to_list()
    return versions[0] if len(versions) == 1 else ",".join(sorted(map(str, versions)))


def available_by(items: pl.DataFrame, item_ids: list[str], until: datetime) -> np.ndarray:
    """Mask over `item_ids`: created at or before `until` (or with no creation time)."""
    if C.CREATED_AT not in items.columns:
        return np.ones(len(item_ids), dtype=bool)
    created = (pl.DataFrame({C.ITEM_ID: item_ids})
               .join(items.select(C.ITEM_ID, C.CREATED_AT).unique(C.ITEM_ID, keep="last"), on=C.ITEM_ID,
                     how="left", maintain_order="left")[C.CREATED_AT])
    return (created.is_null() | (created <= until)).to_numpy()


def evaluate_model(model: RetrievalModel, split: Split, embeddings: pl.DataFrame,
                   test_features: pl.DataFrame | None, k: int,
                   available: np.ndarray | None = None, ease: EaseModel | None = None) -> EvalResult:
    """Model vs most-popular vs CLIP-only (vs EASE fit on the known part, when given) on the test
    part; what each may use is the train and validation clicks (`known`), which are also the
    seen items excluded from the ranking, and only `available` items are ranked (see
    `evaluate_methods`)."""
    known = split.train.vstack(split.valid.select(split.train.columns))
    emb = embeddings.select(C.ITEM_ID, C.EMBEDDING).unique(C.ITEM_ID, keep="last")
    aligned = pl.DataFrame({C.ITEM_ID: model.item_ids}).join(emb, on=C.ITEM_ID, how="left",
                                                             maintain_order="left")
    clip = stack_vector_column(aligned[C.EMBEDDING])
    feats_by_user: dict[str, dict[str, Any]] = {}
    if test_features is not None:
        feats_by_user = {row[C.USER_ID]: row for row in test_features.iter_rows(named=True)}

    # each test user's recent clicks found once (one sort of the known log), not per chunk of
    # users: at 10M clicks that was a sort of 9M rows for every 40 users of every segment
    test_users = split.test[C.USER_ID].unique(maintain_order=True).to_list()
    histories = dict(zip(test_users, recent_histories(known, test_users, model.history), strict=True))

    def two_tower(users: list[str]) -> np.ndarray:
        feats = [feats_by_user.get(u) for u in users] if feats_by_user else None
        missing = [u for u in users if u not in histories]
        if missing:
            histories.update(zip(missing, recent_histories(known, missing, model.history), strict=True))
        vecs = model.user_vectors(users, [histories[u] for u in users], feats)
        return vecs @ model.item_vectors.T

    methods = {"two_tower": two_tower, "popularity": popularity_scorer(known, model.item_ids),
               "clip_only": clip_scorer(known, model.item_ids, clip)}
    if ease is not None:
        methods["ease"] = ease_scorer(ease, known, model.item_ids)
    return evaluate_methods(methods, known, split.test, model.item_ids, ks=sorted({10, k}),
                            available=available)
