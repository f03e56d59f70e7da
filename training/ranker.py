"""`recsys train ranker`: click log -> training set -> LightGBM lambdarank -> MLflow registry.

Steps: validate the log (impressions contract or click-only); build query groups and
candidates; assemble the matrix (`recsys.ranking.features.assemble`, the function serving uses);
hold out the latest `ranker.validation_fraction` of the groups, half for early stopping and half
for the figure reported and gated on; fit (with EASE's score as base margin when EASE is
registered, `ranker.base_scales`); log params, per-iteration metrics, gain importance and
lineage; register `ranker`. Candidates, by the log's shape:

- impressions: logged slates + two-tower hard negatives (`recsys.ranking.dataset`), behaviour
  features from Feast point-in-time (`features.training_set`); with a registered EASE, only the
  impressions after the candidate models' training clicks, with EASE's scores and candidates
  (`recsys.ranking.stacking.with_ease`);
- click-only, with a registered EASE: per-user stacking on the candidate models' split
  (`recsys.ranking.stacking.stacked_candidates`).

Aliases move only at the very end, after everything else has succeeded: with `--promote` and a
held-out NDCG@10 above the champion's (scored on the same groups), or `--force`, the new
version becomes `champion`, otherwise `challenger`.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys import memory, tracking
from recsys.config import Settings
from recsys.data import columns as C
from recsys.data.contracts import ContractError
from recsys.data.splits import Split, before_holdout, candidate_split, is_click_only, split_protocol
from recsys.data.tables import load_table, quarantine, validate_file
from recsys.ranking.candidates import EaseSource, load_ease_source
from recsys.ranking.dataset import (
    FEATURE_TS,
    Candidates,
    CandidateSource,
    TrainingDataError,
    build_candidates,
    feature_matrix,
    ips_weights,
)
from recsys.ranking.features import FeatureSpec, ItemTable, numeric_columns
from recsys.ranking.model import RankerModel, RankSet, fit, lgb_params, ndcg_at, popularity
from recsys.ranking.stacking import stacked_candidates, with_ease
from recsys.retrieval.ease import EaseModel
from recsys.runtime import configure_threads
from recsys.workspace import Workspace

log = logging.getLogger(__name__)
USER_VIEW, ITEM_VIEW = "user_behaviour", "item_behaviour"


@dataclass
class RankerResult:
    version: str | None
    tag: str | None
    run_id: str | None
    valid_ndcg: float
    champion_ndcg: float | None
    alias: str | None
    best_iteration: int
    counts: dict[str, int] = field(default_factory=dict)
    retrieval: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    baselines: dict[str, float] = field(default_factory=dict)  # source -> held-out NDCG@10 of its order

    def summary(self) -> str:
        champ = "" if self.champion_ndcg is None else f" (champion {self.champion_ndcg:.4f})"
        alias = f" -> @{self.alias}" if self.alias else ""
        orders = "".join(f", {k} order {v:.4f}" for k, v in self.baselines.items())
        return (f"{self.tag}{alias}: held-out NDCG@10 {self.valid_ndcg:.4f}{champ}{orders}, "
                f"{self.best_iteration} trees, {self.counts.get('groups_used', 0):,} groups / "
                f"{self.counts.get('rows', 0):,} rows, retrieval {self.retrieval or 'none'}")


def read_log(ws: Workspace, path: Path) -> tuple[pl.DataFrame, dict[str, int], list[str]]:
    """Validate a click log; label errors are fatal (wrong file), other bad rows quarantined."""
    validated = validate_file("impressions", path, ws)
    bad_labels = validated.bad.filter(pl.col(C.REASON).str.contains(f"'{C.CLICKED}'"))
    if bad_labels.height:
        raise ContractError(str(path), f"{bad_labels.height} row(s) have a '{C.CLICKED}' label that is not "
                            "0/1 or true/false (ratings? threshold them first, e.g. rating >= 4)", bad_labels)
    counts = {"quarantined_rows": validated.bad.height}
    counts.update({f"quarantined: {k}": v for k, v in validated.reasons.items()})
    if validated.bad.height:
        quarantine(ws, validated)
    if validated.good.height == 0:
        raise ContractError(str(path), "no valid row left after validation", validated.bad)
    return validated.good, counts, validated.notes


def load_items(ws: Workspace, categories: tuple[str, ...] | None = None) -> tuple[ItemTable, pl.DataFrame]:
    items = load_table(ws, "items")
    emb = load_table(ws, "item_embeddings") if ws.table("item_embeddings").exists() else None
    if emb is None:
        log.warning("no item_embeddings table: clip_cos will be missing (run `recsys backfill`)")
    return ItemTable.build(items, emb, categories), items


def load_retrieval(settings: Settings, items: ItemTable, uri: str = "models:/retrieval@champion"
                   ) -> CandidateSource | None:
    """The registered two-tower as a candidate source, or None (with a warning) if there is none;
    `uri="none"` trains without one on purpose."""
    if uri == "none":
        return None
    try:
        from recsys.ranking.candidates import load_candidate_source

        return load_candidate_source(settings, uri, items)
    except (LookupError, ImportError, FileNotFoundError) as exc:
        log.warning("no two-tower model (%s): training without hard negatives and two-tower features", exc)
        return None


def _feast_rows(settings: Settings, view: str,
                rows: pl.DataFrame) -> tuple[pl.DataFrame | None, dict[str, Any]]:
    """Point-in-time rows of one behaviour view for unique (entity, feature_timestamp) pairs."""
    ws = Workspace.at(settings.home)
    src = ws.feature_sources_dir / f"{view}.parquet"
    if not src.exists():
        log.warning("feature view %s has no source (%s): run `recsys features` first; training without it",
                    view, src)
        return None, {}
    try:
        from features.training_set import build_training_set

        entity = rows.rename({FEATURE_TS: C.EVENT_TIMESTAMP})
        df = build_training_set(settings, entity, [view], output="polars")
    except Exception as exc:  # store not applied, or a broken source: say so, train without it
        log.warning("point-in-time join of %s failed (%s: %s): training without it", view,
                    type(exc).__name__, exc)
        return None, {}
    prefix = f"{view}__"
    df = df.rename({c: c[len(prefix):] for c in df.columns if c.startswith(prefix)})
    return df.rename({C.EVENT_TIMESTAMP: FEATURE_TS}), {"source": str(src), "rows": df.height}


def user_behaviour_rows(settings: Settings,
                        log_df: pl.DataFrame) -> tuple[pl.DataFrame | None, dict[str, Any]]:
    """User behaviour as of each (user, day) of the log (query groups are cut at midnight)."""
    keys = log_df.select(C.USER_ID, pl.col(C.EVENT_TIMESTAMP).dt.truncate("1d").alias(FEATURE_TS)).unique()
    return _feast_rows(settings, USER_VIEW, keys)


def item_behaviour_rows(settings: Settings, cands: Candidates) -> tuple[pl.DataFrame | None, dict[str, Any]]:
    """Item behaviour as of each candidate's query day."""
    q = cands.queries.select("q", FEATURE_TS)
    keys = cands.rows.select("q", C.ITEM_ID).join(q, on="q").select(C.ITEM_ID, FEATURE_TS).unique()
    return _feast_rows(settings, ITEM_VIEW, keys)


def _split(cands: Candidates, fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row masks (train, stop, gate): the latest `fraction` of query groups (by time) are held
    out, alternately for early stopping (`stop`) and for the figure reported and gated on
    (`gate`), so the reported figure is not the one the number of trees was chosen on."""
    m = cands.queries.height
    n_valid = int(round(m * fraction))
    n_valid = min(max(n_valid, 2), m - 1) if m >= 3 else 0
    cut = m - n_valid  # queries are sorted by time
    q = cands.rows["q"].to_numpy()
    held = q >= cut
    return ~held, held & ((q - cut) % 2 == 0), held & ((q - cut) % 2 == 1)


def _rankset(x: np.ndarray, cands: Candidates, mask: np.ndarray, w: np.ndarray | None) -> RankSet:
    q = cands.rows["q"].to_numpy()[mask]
    group = np.bincount(q - q.min(), minlength=0) if len(q) else np.zeros(0, np.int64)
    group = group[group > 0]
    y = cands.rows["label"].to_numpy()[mask].astype(np.int32)
    return RankSet(x[mask], y, group, None if w is None else w[mask])


def _importance_plot(names: list[str], gain: np.ndarray) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(gain)
    fig, ax = plt.subplots(figsize=(7, max(3, 0.28 * len(names))))
    ax.barh([names[i] for i in order], gain[order])
    ax.set_xlabel("total gain")
    ax.set_title("Ranker feature importance (gain)")
    fig.tight_layout()
    return fig


def _champion_ndcg(settings: Settings, items: ItemTable, cands: Candidates, valid: np.ndarray,
                   user_f: pl.DataFrame | None, item_f: pl.DataFrame | None
                   ) -> tuple[float | None, str | None]:
    """The current champion's NDCG@10 on this run's validation groups (None when there is none)."""
    try:
        folder, ref = tracking.download_model(settings, "models:/ranker@champion")
    except LookupError:
        return None, None
    try:
        champ = RankerModel.load(folder)
    except ValueError as exc:  # a feature set this code no longer assembles: nothing to compare with
        log.warning("champion %s cannot be scored (%s): the challenger is compared with nothing",
                    ref.tag, exc)
        return None, ref.tag
    champ_items = items if tuple(champ.spec.categories) == items.categories else \
        ItemTable.build(*_frames_for(settings), champ.spec.categories)
    x, _ = feature_matrix(cands, champ.spec, champ_items, user_f, item_f)
    vs = _rankset(x, cands, valid, None)
    return ndcg_at(champ.predict(vs.x), vs.y, vs.group), ref.tag


def _frames_for(settings: Settings) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    ws = Workspace.at(settings.home)
    emb = load_table(ws, "item_embeddings") if ws.table("item_embeddings").exists() else None
    return load_table(ws, "items"), emb


def _prefetch_imports() -> None:
    import contextlib

    with contextlib.suppress(Exception):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401
        import mlflow  # noqa: F401


def load_ease(settings: Settings, items: ItemTable) -> EaseSource | None:
    """The champion EASE (its λ, and the version serving will use), or None with a warning."""
    try:
        return load_ease_source(settings, "models:/ease@champion", items)
    except (LookupError, FileNotFoundError) as exc:
        log.warning("no EASE model (%s): the ranker learns from the log's own groups", exc)
        return None


def candidate_models_split(settings: Settings, log_df: pl.DataFrame, items: ItemTable, ease: EaseSource,
                           click_only: bool) -> tuple[Split, EaseSource]:
    """The split `recsys train retrieval` trained the candidate models on (the same clicks: on
    catalogue items, in `candidate_split`'s order) and EASE refit with the champion's λ on its
    train part: the part the ranker's features may come from."""
    clicks = log_df.filter(pl.col(C.CLICKED)) if C.CLICKED in log_df.columns else log_df
    clicks = clicks.select(C.USER_ID, C.ITEM_ID, C.EVENT_TIMESTAMP).filter(
        pl.col(C.ITEM_ID).is_in(pl.Series(list(items.ids), dtype=pl.String).implode()))
    split = candidate_split(clicks, split_protocol(settings.retrieval.split, click_only), settings.seed)
    base = EaseModel.fit(split.train, ease.lam, settings.retrieval.ease_max_items)
    return split, EaseSource(base, items, "ease(base)")


def stacked_training_set(settings: Settings, log_df: pl.DataFrame, items: ItemTable,
                         source: CandidateSource | None, ease: EaseSource) -> Candidates:
    """Candidates by stacking (`recsys.ranking.stacking`) on the candidate models' split, users
    sampled to `ranker.max_rows`."""
    split, base_ease = candidate_models_split(settings, log_df, items, ease, click_only=True)
    labels = pl.concat([split.valid, split.test])
    per_group = group_rows(settings, source is not None, stacked=True)
    return stacked_candidates(split.train, labels, items, source=source, ease=base_ease,
                              history=settings.ranker.history, n_tt=settings.retrieval.candidates,
                              n_ease=settings.retrieval.ease_candidates,
                              max_groups=max(1, settings.ranker.max_rows // per_group), seed=settings.seed)


# Behaviour-view columns of the impressions path's matrix, for the memory plan (the spec is
# built after the candidates; stacking uses none).
PLANNED_BEHAVIOUR_FEATURES = 24


def group_rows(settings: Settings, with_source: bool, stacked: bool, slate: float = 0.0,
               click_only: bool = False, with_ease: bool = False) -> int:
    """Candidate rows a query group can hold: stacking, the sources' lists (their union, at most
    the sum); else the logged slate plus the negatives added (two-tower or random, and EASE's)."""
    if stacked:
        n_tt = settings.retrieval.candidates if with_source else 0
        return max(1, n_tt + settings.retrieval.ease_candidates)
    negatives = settings.ranker.candidates * (int(with_source or click_only) + int(with_ease))
    return max(1, int(round(slate)) + negatives)


def sample_requests(log_df: pl.DataFrame, max_groups: int, seed: int) -> tuple[pl.DataFrame, int]:
    """The rows of a seeded sample of `max_groups` requests (all of them when there are fewer),
    and the number of requests before sampling."""
    requests = log_df[C.REQUEST_ID].unique().sort()
    if requests.len() <= max_groups:
        return log_df, requests.len()
    keep = requests.sample(max_groups, seed=seed)
    return log_df.filter(pl.col(C.REQUEST_ID).is_in(keep.implode())), requests.len()


def plan_memory(settings: Settings, log_df: pl.DataFrame, items: ItemTable, source: CandidateSource | None,
                ease: EaseSource | None, click_only: bool) -> tuple[memory.MemoryPlan, int]:
    """The step's memory plan (`recsys.memory.train_ranker`) and the rows a group can hold."""
    n_features = len(FeatureSpec(categories=items.categories).names)
    if click_only and ease is not None:
        groups = log_df[C.USER_ID].n_unique()
        per_group = group_rows(settings, source is not None, True)
    else:
        groups = log_df[C.REQUEST_ID].n_unique() if C.REQUEST_ID in log_df.columns else log_df.height
        per_group = group_rows(settings, source is not None, False, slate=log_df.height / max(groups, 1),
                               click_only=click_only, with_ease=ease is not None)
        n_features += PLANNED_BEHAVIOUR_FEATURES
    ease_items = min(settings.retrieval.ease_max_items, len(ease.item_rows)) if ease is not None else 0
    clicks = log_df.filter(pl.col(C.CLICKED)) if C.CLICKED in log_df.columns else log_df
    item_bytes = sum(v.nbytes for v in vars(items).values() if isinstance(v, np.ndarray)) + 100 * len(items)
    plan = memory.train_ranker(memory.budget_bytes(settings.memory_gib), log_bytes=log_df.estimated_size(),
                               item_bytes=item_bytes, ease_items=ease_items,
                               ease_gram_nonzeros=memory.gram_nonzeros(clicks) if ease is not None else 0,
                               rows=groups * per_group, n_features=n_features,
                               max_rows=settings.ranker.max_rows)
    return plan, per_group


def ease_split(settings: Settings, log_df: pl.DataFrame, items: ItemTable,
               ease: EaseSource) -> tuple[pl.DataFrame, pl.DataFrame, EaseSource]:
    """(label log, earlier log, EASE fit on the earlier clicks) of a log of impressions: the cut is
    the candidate models' temporal split, so the ranker learns from the impressions after the
    clicks the two-tower and this EASE were fit on."""
    split, base_ease = candidate_models_split(settings, log_df, items, ease, click_only=False)
    cut = split.valid[C.EVENT_TIMESTAMP].min() if split.valid.height else split.test[C.EVENT_TIMESTAMP].min()
    if cut is None:
        raise TrainingDataError("the log is too short for a label period after the candidate models' part")
    earlier = log_df.filter(pl.col(C.EVENT_TIMESTAMP) < cut)
    return (log_df.filter(pl.col(C.EVENT_TIMESTAMP) >= cut),
            earlier.select(C.USER_ID, C.ITEM_ID, C.EVENT_TIMESTAMP, C.CLICKED), base_ease)


def source_orders(rs: RankSet, spec: FeatureSpec) -> dict[str, float]:
    """NDCG@10 of each candidate source's own order on a held-out set (what the ranker must beat)."""
    names = spec.names
    out = {}
    for label, col in (("ease", "ease_rank"), ("two-tower", "tt_rank")):
        rank = rs.x[:, names.index(col)]
        if np.isfinite(rank).any():
            out[label] = ndcg_at(-np.nan_to_num(rank, nan=np.inf), rs.y, rs.group)
    return out


def fit_with_base(params: dict[str, Any], spec: FeatureSpec, train: RankSet, stop: RankSet, rounds: int,
                  early_stopping: int, scales: Sequence[float | None]) -> tuple[Any, dict, FeatureSpec]:
    """Fit once per base scale (None: no base margin; else EASE's score times the scale starts
    every score) and keep the fit with the best early-stopping NDCG@10."""
    best: tuple[float, Any, dict, FeatureSpec] | None = None
    for scale in scales:
        s = spec if scale is None else replace(spec, base="ease_score", base_scale=float(scale))
        booster, evals = fit(params, s, train, stop, rounds, early_stopping)
        score = max(evals.get("ndcg@10", [float("-inf")]))
        if best is None or score > best[0]:
            best = (score, booster, evals, s)
    assert best is not None
    return best[1], best[2], best[3]


def train_ranker(settings: Settings, ws: Workspace, logs: Path | None = None, promote: bool = False,
                 retrieval_uri: str = "models:/retrieval@champion", force: bool = False,
                 say: Callable[[str], None] | None = None) -> RankerResult:
    """Train, log and register a ranker from a click log (default: the workspace's impressions).
    Before the training set is built, the memory plan (`recsys.memory`) goes to `say` and a
    plan above `memory_gib` stops the run; query groups are sampled to `ranker.max_rows`."""
    configure_threads(settings.threads)
    cfg = settings.ranker
    t0 = time.perf_counter()
    # MLflow and matplotlib take seconds to import: do it while the training set is built
    prefetch = threading.Thread(target=_prefetch_imports, daemon=True)
    prefetch.start()
    seconds: dict[str, float] = {}
    path = Path(logs) if logs is not None else ws.table("impressions")
    log_df, counts, notes = read_log(ws, path)
    rows = log_df.height
    log_df, holdout = before_holdout(log_df, settings.evaluation.holdout_days)
    if holdout is not None:
        counts["ab_window_rows_not_trained_on"] = rows - log_df.height
        notes.append(f"trained on events before {holdout:%Y-%m-%d %H:%M}: the last "
                     f"{settings.evaluation.holdout_days:g} days are the offline A/B window")
    seconds["read"] = time.perf_counter() - t0
    items, _ = load_items(ws)
    source = load_retrieval(settings, items, retrieval_uri)
    ease = load_ease(settings, items)
    click_only = is_click_only(log_df)
    plan, per_group = plan_memory(settings, log_df, items, source, ease, click_only)
    (say or log.info)(plan.line())
    plan.check()
    t = time.perf_counter()
    if ease is not None and click_only:  # stacking on the candidate models' split
        user_f = item_f = None
        views: dict[str, Any] = {}
        cands = stacked_training_set(settings, log_df, items, source, ease)
        w = None
    else:
        label_log, history_log, base_ease = log_df, None, None
        if ease is not None:  # temporal stacking: learn from the part the candidate models never saw
            label_log, history_log, base_ease = ease_split(settings, log_df, items, ease)
            counts["rows_before_label_period"] = history_log.height
        label_log, counts["requests_before_sampling"] = sample_requests(
            label_log, max(1, cfg.max_rows // per_group), settings.seed)
        user_f, user_view = user_behaviour_rows(settings, label_log)
        cands = build_candidates(label_log, items, history=cfg.history, negatives=cfg.candidates,
                                 source=source, rank_cap=settings.retrieval.candidates, seed=settings.seed,
                                 debias=cfg.debias, user_features=user_f, history_log=history_log)
        if base_ease is not None:
            cands = with_ease(cands, log_df, items, base_ease, source,
                              n_ease=settings.retrieval.ease_candidates, negatives=cfg.candidates,
                              cap=settings.retrieval.candidates, seed=settings.seed)
        item_f, item_view = item_behaviour_rows(settings, cands)
        views = {k: v for k, v in ((USER_VIEW, user_view), (ITEM_VIEW, item_view)) if v}
        w = ips_weights(cands.rows, cands.examination, cfg.ips_clip) if cfg.debias == "ips" else None
    counts.update(cands.counts)
    seconds["candidates"] = time.perf_counter() - t
    t = time.perf_counter()
    spec = FeatureSpec(user_behaviour=numeric_columns(user_f, (FEATURE_TS,)),
                       item_behaviour=numeric_columns(item_f, (FEATURE_TS,)), categories=items.categories)
    x, fcounts = feature_matrix(cands, spec, items, user_f, item_f)
    counts.update(fcounts)
    train_mask, stop_mask, gate_mask = _split(cands, cfg.validation_fraction)
    train, stop = _rankset(x, cands, train_mask, w), _rankset(x, cands, stop_mask, None)
    gate = _rankset(x, cands, gate_mask, None)
    if len(train.group) == 0:
        raise TrainingDataError("no training groups left after holding out validation groups")
    seconds["matrix"] = time.perf_counter() - t
    params = lgb_params(cfg, settings.seed, settings.threads)
    prefetch.join()
    work = Path(tempfile.mkdtemp(dir=ws.models_dir, prefix=".ranker-"))
    try:
        with tracking.start_run(settings, "ranker") as run:
            import mlflow

            mlflow.log_params({**{f"lgb.{k}": v for k, v in params.items()},
                               "rounds": cfg.rounds, "early_stopping": cfg.early_stopping,
                               "debias": cfg.debias, "ips_clip": cfg.ips_clip, "history": cfg.history,
                               "hard_negatives": cfg.candidates,
                               "validation_fraction": cfg.validation_fraction,
                               "feature_set_version": spec.version, "n_features": len(spec.names),
                               "retrieval": source.version if source else "none", "logs": str(path)})
            t = time.perf_counter()
            scales = cfg.base_scales if ease is not None else (None,)
            booster, evals, spec = fit_with_base(params, spec, train, stop, cfg.rounds, cfg.early_stopping,
                                                 scales)
            if spec.base:
                mlflow.log_params({"base": spec.base, "base_scale": spec.base_scale})
            seconds["fit"] = time.perf_counter() - t
            curve = evals.get("ndcg@10", [])
            client = mlflow.tracking.MlflowClient()
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            batch = [Metric("valid_ndcg_at_10", float(v), now, i) for i, v in enumerate(curve)]
            for s in range(0, len(batch), 1000):
                client.log_batch(run.info.run_id, metrics=batch[s:s + 1000])
            best = int(booster.best_iteration or booster.current_iteration())
            # scored by `ndcg_at`, the function that scores the champion on the same groups
            model = RankerModel(booster=booster, spec=spec,
                                popularity=popularity(log_df, cfg.popularity_days))
            valid_ndcg = ndcg_at(model.predict(gate.x), gate.y, gate.group) if len(gate.group) else \
                float("nan")
            baselines = source_orders(gate, spec) if ease is not None else {}
            mlflow.log_metrics({"valid_ndcg_at_10": valid_ndcg,
                                "best_iteration": best})
            mlflow.log_metrics({"count." + re.sub(r"[^\w\-. /]", "_", k): float(v)
                                for k, v in counts.items()})
            gain = booster.feature_importance("gain", iteration=best)
            split = booster.feature_importance("split", iteration=best)
            table = {"feature": spec.names, "gain": [float(g) for g in gain],
                     "split": [int(s) for s in split]}
            mlflow.log_table(table, "feature_importance.json")
            mlflow.log_figure(_importance_plot(spec.names, np.asarray(gain, float)), "feature_importance.png")
            lineage = tracking.log_lineage(
                tables={"impressions": path, "items": ws.table("items"),
                        "item_embeddings": ws.table("item_embeddings")},
                feature_views=views,
                extra={"retrieval": source.version if source else None, "counts": counts,
                       "examination": cands.examination, "notes": notes})
            champion_ndcg, champion_tag = (None, None)
            if promote:
                champion_ndcg, champion_tag = _champion_ndcg(settings, items, cands, gate_mask,
                                                             user_f, item_f)
                if champion_ndcg is not None:
                    mlflow.log_metric("champion_valid_ndcg_at_10", champion_ndcg)
            model.save(work)
            mlflow.log_metrics({f"gate_ndcg_at_10.{k}_order": v for k, v in baselines.items()})
            meta = {"retrieval": source.version if source else None, "ease": ease.version if ease else None,
                    "feature_set_version": spec.version,
                    "features": spec.names, "valid_ndcg_at_10": valid_ndcg, "best_iteration": best,
                    "examination": cands.examination, "counts": counts, "lineage": lineage["tables"],
                    "params": params, "run_id": run.info.run_id,
                    "holdout_days": settings.evaluation.holdout_days}
            ref = tracking.log_and_register(settings, work, "ranker", meta)
            alias = None
            # the alias moves last: any failure above leaves the registry's aliases untouched
            beats = champion_ndcg is None or valid_ndcg > champion_ndcg
            alias = "champion" if promote and (beats or force) else "challenger"
            tracking.set_alias(settings, "ranker", alias, ref.version)
            mlflow.set_tag("ranker.alias", alias)
            if champion_tag:
                mlflow.set_tag("ranker.previous_champion", champion_tag)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds["total"] = time.perf_counter() - t0
    return RankerResult(version=ref.version, tag=ref.tag, run_id=run.info.run_id, valid_ndcg=valid_ndcg,
                        champion_ndcg=champion_ndcg, alias=alias, best_iteration=best, counts=counts,
                        retrieval=source.version if source else None, seconds=seconds,
                        baselines=baselines)
