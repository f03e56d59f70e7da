"""The offline A/B pipeline behind `recsys evaluate ab`: load, rank, measure, estimate, report.

1. Split the click log in time: the last `evaluation.holdout_days` are the held-out window,
   everything before is history (seen items, popularity, new/returning users, cold/warm items).
2. Each policy ranks the catalogue for every user with a held-out click, as of the split time,
   with seen items excluded; ranking and beyond-accuracy metrics by segment, paired bootstrap.
3. Where the held-out impressions carry logging propensities: off-policy CTR of both policies
   (IPS, clipped IPS, SNIPS, DM, DR, SNDR; with every slot's propensity also the item-level PBM
   estimators) with intervals. Otherwise the report says why not.
4. On the embedded world: the simulator serves the held-out window's requests with both
   policies, the truth to check every estimator against.
5. Verdict: on the off-policy CTR of the estimator the support diagnostics pick (effective
   sample size, support deficiency; `ab.choose_primary`), else on the ranking metric; report
   (markdown + HTML) under the workspace's reports folder, MLflow run.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys.config import Settings
from recsys.data import columns as C
from recsys.data.splits import before_holdout
from recsys.evaluation import ab
from recsys.evaluation.ope import (
    NoOverlapError,
    OPEInputError,
    build_slate_input,
    default_estimators,
    examination_from_log,
    fit_position_based_model,
)
from recsys.evaluation.policy import (
    EasePolicy,
    Policy,
    PopularPolicy,
    ScoredPolicy,
    StochasticSlates,
    as_simulator_policy,
    exploration_pool,
)
from recsys.evaluation.report import log_report, write_report
from recsys.progress import bar
from recsys.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass
class ABRun:
    result: ab.ABResult
    paths: dict[str, Path] = field(default_factory=dict)
    run_id: str | None = None

    def summary(self) -> str:
        return f"{self.result.verdict.line()}; report -> {self.paths.get('html', '')}"


# ---------------------------------------------------------------------------------------------
# data


def load_log(ws: Workspace, logs: str | Path | None) -> pl.DataFrame:
    """The click log: a user file validated against the impressions contract, or the workspace's."""
    if logs is None:
        from recsys.data.tables import load_table

        return load_table(ws, "impressions")
    from recsys.data.tables import validate_file

    validated = validate_file("impressions", logs, ws)
    validated.raise_if_bad()
    for note in validated.notes:
        log.info("%s: %s", logs, note)
    return validated.good


def split_log(events: pl.DataFrame, holdout_days: float) -> tuple[pl.DataFrame, pl.DataFrame, datetime]:
    """(history, held-out window, split time): the last `holdout_days` of the log are held out."""
    history, split = before_holdout(events, holdout_days)
    holdout = events.filter(pl.col(C.EVENT_TIMESTAMP) >= split) if split else events.clear()
    if split is None or not history.height or not holdout.filter(pl.col(C.CLICKED)).height:
        raise ValueError(
            f"the log spans too little time for a {holdout_days}-day held-out window "
            f"(history {history.height:,} rows, held-out clicks "
            f"{holdout.filter(pl.col(C.CLICKED)).height:,}); lower evaluation.holdout_days"
        )
    return history, holdout, split


def _index(vocab: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Positions of ids in the sorted vocabulary, -1 where absent or empty."""
    ids = np.asarray(ids).astype(str)
    pos = np.minimum(np.searchsorted(vocab, ids), len(vocab) - 1)
    return np.where(vocab[pos] == ids, pos, -1)


def _item_catalogue(ws: Workspace, events: pl.DataFrame) -> tuple[np.ndarray, pl.DataFrame | None]:
    try:
        from recsys.data.tables import load_table

        items = load_table(ws, "items")
        vocab = np.unique(
            np.concatenate(
                [items[C.ITEM_ID].to_numpy().astype(str), events[C.ITEM_ID].unique().to_numpy().astype(str)]
            )
        )
        return vocab, items
    except FileNotFoundError:
        return np.unique(events[C.ITEM_ID].to_numpy().astype(str)), None


def _embeddings(ws: Workspace, vocab: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    from recsys.data.tables import load_table

    try:
        emb = load_table(ws, "item_embeddings", columns=[C.ITEM_ID, C.EMBEDDING])
    except FileNotFoundError:
        return None, None
    emb = emb.filter(pl.col(C.EMBEDDING).is_not_null())
    if not emb.height:
        return None, None
    mat = np.stack(emb[C.EMBEDDING].to_numpy())
    idx = _index(vocab, emb[C.ITEM_ID].to_numpy())
    out = np.zeros((len(vocab), mat.shape[1]), dtype=np.float32)
    has = np.zeros(len(vocab), dtype=bool)
    out[idx[idx >= 0]] = mat[idx >= 0]
    has[idx[idx >= 0]] = True
    return out, has


# ---------------------------------------------------------------------------------------------
# policies


_MODEL_URI = re.compile(r"^models:/[^/@]+(@[\w-]+|/\d+)$")


def resolve_policy(settings: Settings, spec: str, history: pl.DataFrame) -> tuple[Policy, str]:
    """(policy, label) for `popular`, `popular:7d` or a model URI: a ranker (`models:/ranker@champion`,
    `.../3`: the two-stage system) or EASE alone (`models:/ease@champion`)."""
    if spec == "popular":
        return PopularPolicy(history), "popular"
    recent = re.fullmatch(r"popular:(\d+(?:\.\d+)?)d", spec)
    if recent:
        return PopularPolicy(history, window_days=float(recent.group(1)), name=spec), spec
    if not _MODEL_URI.match(spec):
        raise ValueError(
            f"unknown policy '{spec}': expected 'popular', 'popular:<N>d' (clicks of the last N "
            "days) or a registered model URI such as models:/ranker@champion or models:/ranker/3"
        )
    from recsys import tracking
    from recsys.recommender import Recommender  # the two-stage system (retrieval + ranker)

    ref = tracking.resolve(settings, spec)
    if ref.name == "ease":  # EASE alone, the collaborative baseline
        from recsys.retrieval.ease import EaseModel

        folder, _ = tracking.download_model(settings, spec)
        return EasePolicy(EaseModel.load(folder), history, ref.tag), ref.tag
    as_of = history[C.EVENT_TIMESTAMP].max() if history.height else None
    recommender = Recommender.load(settings, ranker_uri=spec, as_of=as_of, log=history)
    return RecommenderPolicy(recommender, ref.tag, history, settings.ranker.history,
                             Workspace.at(settings.home)), ref.tag


class RecommenderPolicy:
    """The two-stage `Recommender` as a `Policy`: each user's recent clicks before `as_of` are
    their history, and every item they clicked before `as_of` is excluded (full ranking), as is
    every item created after `as_of` (it did not exist yet: ranking it would use the future).

    User behaviour features are each user's latest `user_behaviour` snapshot at or before `as_of`
    (the feature-view source, as batch recommendations read it): the ranker is scored with the
    features it would be served with, not with NaN.
    """

    def __init__(self, recommender: Any, name: str, events: pl.DataFrame, history: int = 20,
                 workspace: Workspace | None = None):
        self.recommender, self.name, self.history = recommender, name, history
        self.events, self.workspace = events, workspace
        self._feats: tuple[datetime, dict[str, dict[str, Any]]] | None = None
        self._cache: tuple[datetime, dict[str, tuple[list[str], set[str]]]] | None = None
        self._future: tuple[datetime, set[str]] | None = None

    def _not_yet_created(self, as_of: datetime) -> set[str]:
        """Ids of catalogue items created after `as_of` (unknown creation time: available)."""
        if self._future is None or self._future[0] != as_of:
            items = self.recommender.items
            late = np.asarray(items.created_at, dtype=np.float64) > as_of.timestamp()
            self._future = (as_of, {str(i) for i in np.asarray(items.ids)[late]})
        return self._future[1]

    def _state(self, as_of: datetime) -> dict[str, tuple[list[str], set[str]]]:
        if self._cache is None or self._cache[0] != as_of:
            from recsys.recommender import user_state

            self._cache = (as_of, user_state(self.events, as_of, self.history))
        return self._cache[1]

    def _features(self, as_of: datetime) -> dict[str, dict[str, Any]]:
        if self._feats is None or self._feats[0] != as_of:
            from training.recommend import user_features_as_of

            self._feats = (as_of, user_features_as_of(self.workspace, as_of) if self.workspace else {})
        return self._feats[1]

    def scored(self, user_ids: np.ndarray, as_of: datetime, k: int) -> list[list[tuple[str, float]]]:
        """Each user's top k as (item id, ranker score), best first: what the server explores over."""
        state = self._state(as_of)
        feats = self._features(as_of)
        future = self._not_yet_created(as_of)
        out = []
        for user in np.asarray(user_ids).astype(str):
            recent, seen = state.get(user, ([], set()))
            rec = self.recommender.recommend(
                user, k=k, user_features=feats.get(user), exclude=future, as_of=as_of,
                history=recent or None, seen=seen,
            )
            out.append([(item, float(score)) for item, score, _ in rec.items[:k]])
        return out

    def rank(self, user_ids: np.ndarray, as_of: datetime, k: int) -> np.ndarray:
        out = np.full((len(user_ids), k), "", dtype=object)
        for row, items in enumerate(self.scored(user_ids, as_of, k)):
            for j, (item, _) in enumerate(items):
                out[row, j] = item
        return out.astype(str)


def _user_batches(users: np.ndarray, label: str, batch: int = 4096) -> Iterator[np.ndarray]:
    """`users` in slices of `batch`, with a progress bar named `label`."""
    with bar(f"rank · {label}", total=len(users), unit="users") as b:
        for lo in range(0, len(users), batch):
            yield users[lo : lo + batch]
            b.advance(min(batch, len(users) - lo))


def _rank_all(policy: Policy, users: np.ndarray, as_of: datetime, k: int, label: str) -> np.ndarray:
    out = []
    for chunk in _user_batches(users, label):
        got = np.asarray(policy.rank(chunk, as_of, k)).astype(str)
        if got.shape != (len(chunk), k):
            raise ValueError(f"policy {label} returned shape {got.shape} for {len(chunk)} users and k={k}")
        out.append(got)
    return np.concatenate(out) if out else np.full((0, k), "", dtype=object).astype(str)


# ---------------------------------------------------------------------------------------------
# the pipeline


def _segments(
    users: np.ndarray,
    history: pl.DataFrame,
    vocab: np.ndarray,
    items: pl.DataFrame | None,
    click_counts: np.ndarray,
    cold_clicks: int,
) -> list[ab.Segment]:
    returning = np.isin(users, history[C.USER_ID].unique().to_numpy().astype(str))
    cold = click_counts < cold_clicks
    segs = [
        ab.Segment("all"),
        ab.Segment("returning users", users=returning),
        ab.Segment("new users", users=~returning),
        ab.Segment("warm items", items=~cold),
        ab.Segment("cold items", items=cold),
    ]
    if items is not None and C.IMAGE_SOURCE in items.columns:
        idx = _index(vocab, items[C.ITEM_ID].to_numpy())
        source = np.full(len(vocab), "none", dtype=object)
        source[idx[idx >= 0]] = items[C.IMAGE_SOURCE].fill_null("none").to_numpy()[idx >= 0]
        for name in ("original", "generated"):
            if (source == name).any():
                segs.append(ab.Segment(f"{name} images", items=source == name))
    return segs


def trained_window(settings: Settings, specs: tuple[str, ...]) -> float:
    """The A/B window (days) that the registered rankers among `specs` were trained without
    (`holdout_days` in their meta); a clear error when none was, since every day of the log was
    then training data and no held-out window exists."""
    from recsys import tracking

    days = [0.0]
    for spec in specs:
        if _MODEL_URI.match(spec):
            folder, _ = tracking.download_model(settings, spec)
            meta = json.loads((folder / "meta.json").read_text())
            days.append(float(meta.get("holdout_days") or 0.0))
    if max(days) <= 0:
        raise ValueError("no offline A/B window: pass --holdout-days N (evaluation.holdout_days), and train "
                         "the models with the same setting so that they never see those days")
    return max(days)


def evaluate_ab(
    settings: Settings, control: str, treatment: str, logs: str | Path | None = None, track: bool = True
) -> ABRun:
    """Run the whole offline A/B comparison; writes the report and (optionally) an MLflow run."""
    cfg = settings.evaluation
    if cfg.holdout_days <= 0:  # the window the compared models were trained without
        days = trained_window(settings, (control, treatment))
        cfg = cfg.model_copy(update={"holdout_days": days})
        settings = settings.model_copy(update={"evaluation": cfg})
    ws = Workspace.at(settings.home)
    seed = settings.seed
    events = load_log(ws, logs)
    history, holdout, split = split_log(events, cfg.holdout_days)
    vocab, items = _item_catalogue(ws, events)
    hist_clicks = history.filter(pl.col(C.CLICKED))
    click_counts = np.bincount(_index(vocab, hist_clicks[C.ITEM_ID].to_numpy()), minlength=len(vocab))
    notes: list[str] = []

    policy_c, label_c = resolve_policy(settings, control, history)
    policy_t, label_t = resolve_policy(settings, treatment, history)

    # relevant: held-out clicks on items the user had not clicked before
    seen = hist_clicks.select(C.USER_ID, C.ITEM_ID).unique()
    relevant = (
        holdout.filter(pl.col(C.CLICKED))
        .select(C.USER_ID, C.ITEM_ID)
        .unique()
        .join(seen, on=[C.USER_ID, C.ITEM_ID], how="anti")
    )
    users = np.unique(relevant[C.USER_ID].to_numpy().astype(str))
    if cfg.max_users is not None and len(users) > cfg.max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, cfg.max_users, replace=False))
        notes.append(f"ranking metrics on a seeded sample of {cfg.max_users:,} users (evaluation.max_users)")
    relevant = relevant.filter(pl.col(C.USER_ID).is_in(users.tolist()))
    k = cfg.k
    ranked_c = _index(vocab, _rank_all(policy_c, users, split, k, label_c))
    ranked_t = _index(vocab, _rank_all(policy_t, users, split, k, label_t))
    emb, has_vec = _embeddings(ws, vocab)
    if emb is None:
        notes.append("intra-list diversity skipped: no item_embeddings table (run `recsys backfill`)")
    data = ab.RankingData(
        truth_rows=_index(users, relevant[C.USER_ID].to_numpy()),
        truth_items=_index(vocab, relevant[C.ITEM_ID].to_numpy()),
        n_users=len(users),
        n_items=len(vocab),
        click_counts=click_counts,
        embeddings=emb,
        has_vector=has_vec,
    )
    segments = _segments(users, history, vocab, items, click_counts, cfg.cold_item_clicks)
    ranking = ab.compare_rankings(ranked_c, ranked_t, data, segments, k, cfg.bootstrap, cfg.alpha, seed)

    explore = _served_temperature(settings)
    offline, support, ope_note, slates = _offline(
        policy_c, policy_t, history, holdout, split, vocab, cfg, seed, notes, explore
    )
    primary = ab.choose_primary(offline, support, cfg)  # the verdict's first check line says why
    truth_rows, truth_ctr, truth_note = _truth_check(
        ws, policy_c, policy_t, offline, split, holdout, cfg, seed, logs, slates, notes
    )
    result = ab.ABResult(
        control=label_c,
        treatment=label_t,
        k=k,
        window=f"{split:%Y-%m-%d %H:%M} .. {holdout[C.EVENT_TIMESTAMP].max():%Y-%m-%d %H:%M} "
        f"({cfg.holdout_days:g} days; {holdout.height:,} held-out rows)",
        n_users=len(users),
        ranking=ranking,
        verdict=ab.Verdict("inconclusive", "", ""),
        offline=offline,
        support=support,
        ope_note=ope_note,
        truth=truth_rows,
        truth_ctr=truth_ctr,
        truth_note=truth_note,
        notes=notes,
        config={**cfg.model_dump(), "seed": seed, "logs": str(logs or ws.table("impressions"))},
        primary=primary,
    )
    result.verdict = ab.decide_ab(result.deltas(), cfg, primary)
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    folder = ws.reports_dir / f"ab-{stamp}-{_slug(label_t)}-vs-{_slug(label_c)}"
    paths = write_report(result, folder)
    run_id = None
    if track:
        from recsys import tracking

        with tracking.start_run(settings, "evaluation", run_name=f"{label_t} vs {label_c}") as run:
            import mlflow

            mlflow.log_params(
                {
                    "control": label_c,
                    "treatment": label_t,
                    "k": k,
                    "bootstrap": cfg.bootstrap,
                    "holdout_days": cfg.holdout_days,
                    "primary_metric": cfg.primary_metric,
                    "min_lift": cfg.min_lift,
                }
            )
            tracking.log_lineage({"impressions": Path(logs) if logs else ws.table("impressions")})
            log_report(result, paths)
            run_id = run.info.run_id
    return ABRun(result, paths, run_id)


def _served_temperature(settings: Settings) -> float | None:
    """The softmax temperature the server would explore a ranker with, or None (deterministic)."""
    if settings.evaluation.target_exploration == "serving" and settings.serving.exploration == "softmax":
        return settings.serving.temperature
    return None


def _target_slates(policy: Policy, users: np.ndarray, as_of: datetime, width: int, label: str,
                   temperature: float | None, notes: list[str]) -> np.ndarray | StochasticSlates:
    """The target as the server would run it: a scored policy explored at `temperature`
    (Plackett-Luce over its top `exploration_pool(width)`), else its deterministic top `width`."""
    if temperature is None or not isinstance(policy, ScoredPolicy):
        return _rank_all(policy, users, as_of, width, f"{label} slates")
    pool, scored = exploration_pool(width), []
    for chunk in _user_batches(users, f"{label} pool"):
        scored.extend(policy.scored(chunk, as_of, pool))
    notes.append(f"off-policy: the {label} ({policy.name}) is evaluated as the server runs it, Plackett-Luce "
                 f"at temperature {temperature:g} over its top {pool} (evaluation.target_exploration)")
    return StochasticSlates.of(scored, temperature, width, pool)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def _offline(
    policy_c: Policy,
    policy_t: Policy,
    history: pl.DataFrame,
    holdout: pl.DataFrame,
    split: datetime,
    vocab: np.ndarray,
    cfg: Any,
    seed: int,
    notes: list[str],
    temperature: float | None = None,
):
    """Off-policy CTR of both policies on the held-out impressions, or the reason it cannot run.

    An estimator that cannot be computed on these inputs (a self-normalised one with no overlap)
    is left out of the table with a note that names it and says why."""
    prop = holdout[C.PROPENSITY] if C.PROPENSITY in holdout.columns else None
    if (
        prop is None
        or prop.null_count() == holdout.height
        or holdout[C.POSITION].null_count() == holdout.height
    ):
        return (
            None,
            {},
            (
                "the log has no logging propensities/positions (e.g. MovieLens ratings or a click-only "
                "log): IPS, SNIPS and DR need the probability with which the logging policy showed each "
                "item at each position, and DM needs impressions with non-clicks"
            ),
            None,
        )
    logged = holdout.filter(pl.col(C.POSITION).is_not_null())
    width = int(logged[C.POSITION].max()) + 1
    users = np.unique(logged[C.USER_ID].to_numpy().astype(str))
    slates = {}
    for label, pol in (("control", policy_c), ("treatment", policy_t)):
        slates[label] = _target_slates(pol, users, split, width, label, temperature, notes)
    hist_imp = history.filter(pl.col(C.POSITION).is_not_null())
    fit_on = hist_imp if hist_imp.height else logged
    model = fit_position_based_model(
        _index(vocab, fit_on[C.ITEM_ID].to_numpy()),
        fit_on[C.POSITION].to_numpy(),
        fit_on[C.CLICKED].to_numpy(),
        len(vocab),
    )
    slot_props = _slot_propensities(logged, width, notes)
    theta = None
    if slot_props is not None:  # a randomised log: examination from the propensities (unconfounded)
        rand = fit_on.filter(pl.col(C.PROPENSITY).is_not_null())
        theta = examination_from_log(rand[C.POSITION].to_numpy(), rand[C.CLICKED].to_numpy(),
                                     rand[C.PROPENSITY].to_numpy())
    inputs, support = {}, {}
    try:
        for label, slate in slates.items():
            inputs[label], support[label] = build_slate_input(
                logged[C.USER_ID].to_numpy(),
                logged[C.ITEM_ID].to_numpy(),
                logged[C.POSITION].to_numpy(),
                logged[C.CLICKED].to_numpy(),
                logged[C.PROPENSITY].to_numpy(),
                users,
                slate.items if isinstance(slate, StochasticSlates) else slate,
                reward_model=model,
                item_vocab=vocab,
                source="held-out impressions",
                request_ids=logged[C.REQUEST_ID].to_numpy(),
                slot_propensities=slot_props,
                theta=theta,
                target_marginals=slate.marginals if isinstance(slate, StochasticSlates) else None,
            )
    except OPEInputError as exc:
        return None, {}, f"the held-out impressions cannot be used for off-policy estimation: {exc}", None
    estimators = []
    for est in default_estimators(cfg.clip, item_level=slot_props is not None):
        try:
            for data in inputs.values():
                est.estimate(data)
        except NoOverlapError as exc:
            notes.append(f"off-policy estimator {est.name} left out: {exc}")
            continue
        estimators.append(est)
    if not estimators:
        return None, support, "no off-policy estimator can be computed on the held-out impressions", None
    offline = ab.compare_offline(
        inputs["control"], inputs["treatment"], estimators, cfg.bootstrap, cfg.alpha, seed
    )
    return offline, support, None, (users, slates)


def _slot_propensities(logged: pl.DataFrame, width: int, notes: list[str]) -> np.ndarray | None:
    """(m, width) logging probability of each logged item at every slot, or None (with a note)
    when the log does not carry them for every row (the item-level PBM estimators need them)."""
    if C.SLOT_PROPENSITIES not in logged.columns or logged[C.SLOT_PROPENSITIES].null_count():
        notes.append(
            f"item-level PBM estimators skipped: the log has no '{C.SLOT_PROPENSITIES}' for every "
            "held-out impression (the logging policy's probability of the item at every slot)"
        )
        return None
    lists = logged[C.SLOT_PROPENSITIES]
    short = lists.list.len() < width
    if short.any():
        notes.append(f"item-level PBM estimators skipped: {int(short.sum()):,} held-out impressions "
                     f"carry fewer than {width} slot propensities")
        return None
    return lists.list.slice(0, width).list.to_array(width).to_numpy().astype(np.float64)


def _ranked_already(slates, label: str, users: np.ndarray, width: int, seed: int):
    """The slates `_offline` ranked for these users at the split time as a simulator policy, so
    the truth check does not rank them again (a stochastic target draws each request's slate, as
    the server would); None when they do not cover the requests."""
    if slates is None or _width(slates[1][label]) != width:
        return None
    ranked_users, slate = slates[0], slates[1][label]
    row = np.minimum(np.searchsorted(ranked_users, users), len(ranked_users) - 1)
    if not (ranked_users[row] == users).all():
        return None
    index = dict(zip(ranked_users.tolist(), range(len(ranked_users)), strict=True))
    rng = np.random.default_rng([seed, 7])

    def serve(user_ids: np.ndarray, as_of: datetime) -> np.ndarray:
        rows = np.array([index[u] for u in np.asarray(user_ids).astype(str)], dtype=np.int64)
        return slate.sample(rows, rng) if isinstance(slate, StochasticSlates) else slate[rows]

    return serve


def _width(slate: np.ndarray | StochasticSlates) -> int:
    return slate.marginals.shape[2] if isinstance(slate, StochasticSlates) else slate.shape[1]


def _truth_check(
    ws: Workspace,
    policy_c: Policy,
    policy_t: Policy,
    offline,
    split: datetime,
    holdout: pl.DataFrame,
    cfg: Any,
    seed: int,
    logs,
    slates,
    notes: list[str],
):
    """The simulator's online A/B of both policies (embedded world only), on the held-out
    window's requests."""
    from recsys.data.truth import WorldTruth

    if not WorldTruth.applies(ws):
        return None, {}, "no simulator ground truth in this workspace (only the embedded world has one)"
    if logs is not None and Path(logs).resolve() != ws.table("impressions").resolve():
        return None, {}, "the log is not the embedded world's own impressions table"

    truth = WorldTruth.load(ws)
    width = truth.slate_size
    # the held-out window's own requests, served live by each policy: the online test of that
    # traffic, which is what the off-policy estimates on that window estimate
    requests = holdout.group_by(C.REQUEST_ID).agg(pl.col(C.USER_ID).first()).sort(C.REQUEST_ID)
    users = requests[C.USER_ID].to_numpy()
    ctr = {}
    for label, pol in (("control", policy_c), ("treatment", policy_t)):
        serve = _ranked_already(slates, label, users, width, seed) or as_simulator_policy(pol, width)
        try:
            res = truth.simulate_online(serve, len(users), seed, slate_size=width, as_of=split, users=users)
        except ValueError as exc:  # e.g. a policy with fewer than slate_size items for some users
            return None, {}, f"the simulator could not serve the {label} policy ({exc})"
        ctr[label] = res.expected_ctr
    if slates is not None:  # exact overlap: the simulator knows the logging policy's propensities
        users, by_arm = slates
        for label, slate in by_arm.items():
            if isinstance(slate, StochasticSlates):  # one draw per user, as the server would show
                slate = slate.sample(np.arange(len(users)), np.random.default_rng(seed))
            slots = np.broadcast_to(np.arange(slate.shape[1]), slate.shape)
            ok = slate != ""
            mu = truth.logging_propensity(
                np.broadcast_to(users[:, None], slate.shape)[ok], slate[ok], slots[ok], split
            )
            if not mu.size:
                continue  # the policy showed nothing: no slot to check
            notes.append(
                f"simulator: {(mu == 0).mean():.1%} of the {label} policy's slots have zero logging "
                "probability (e.g. a logged item moved to another position); no estimator can "
                "reweight them, so IPS/SNIPS/DR see only the rest"
            )
    rows = (
        ab.truth_rows(offline, ctr["control"], ctr["treatment"], ("control", "treatment"))
        if offline
        else None
    )
    return rows, ctr, None
