"""Offline A/B comparison of two policies: ranking metrics by segment, off-policy CTR, verdict.

Pure functions over arrays; the pipeline (`training/evaluate.py`) loads data and policies and
the report (`recsys.evaluation.report`) renders the result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from recsys.evaluation import beyond_accuracy as ba
from recsys.evaluation.bootstrap import Delta, Interval, paired_bootstrap, ratio_replicates
from recsys.evaluation.config import EvaluationConfig
from recsys.evaluation.metrics import ranking_metrics
from recsys.evaluation.ope import OPEInput, SlateEstimator, SupportReport

Decision = Literal["ship", "don't ship", "inconclusive"]
RANKING = ("recall", "ndcg", "hit", "mrr", "map")


@dataclass(frozen=True)
class Segment:
    """A slice of the evaluation: a subset of users and/or of relevant items (bool masks)."""

    name: str
    users: np.ndarray | None = None
    items: np.ndarray | None = None


@dataclass(frozen=True)
class RankingData:
    """One arm-independent evaluation set: relevant (row, item) pairs over U users, catalogue info.

    click_counts (n_items,): training clicks per item (novelty); embeddings (n_items, d) or None
    (no intra-list diversity then); has_vector (n_items,) bool where an embedding exists.
    """

    truth_rows: np.ndarray
    truth_items: np.ndarray
    n_users: int
    n_items: int
    click_counts: np.ndarray
    embeddings: np.ndarray | None = None
    has_vector: np.ndarray | None = None


def per_user_metrics(
    ranked: np.ndarray, data: RankingData, k: int, items: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """{metric@k: (U,)} accuracy metrics (relevant items restricted to `items` when given),
    novelty and ILD; NaN where a user carries no signal."""
    rows, its = data.truth_rows, data.truth_items
    if items is not None:
        keep = np.asarray(items, dtype=bool)[its]
        rows, its = rows[keep], its[keep]
    out = ranking_metrics(ranked, rows, its, ks=(k,), metrics=RANKING)
    if items is None:
        out[f"novelty@{k}"] = ba.novelty(ranked, data.click_counts)
        if data.embeddings is not None:
            out[f"ild@{k}"] = ba.intra_list_diversity(ranked, data.embeddings, data.has_vector)
    else:
        out[f"exposure@{k}"] = ba.exposure_share(ranked, items)
    return out


def compare_rankings(
    ranked_control: np.ndarray,
    ranked_treatment: np.ndarray,
    data: RankingData,
    segments: Sequence[Segment],
    k: int,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, list[Delta]]:
    """Paired-bootstrap deltas (users resampled) of every metric, per segment.

    ranked_*: (U, >=k) item indices (-1 pads) for the same users in the same order.
    """
    if ranked_control.shape[0] != data.n_users or ranked_treatment.shape[0] != data.n_users:
        raise ValueError(
            f"rankings have {ranked_control.shape[0]} and {ranked_treatment.shape[0]} rows, "
            f"expected {data.n_users} users"
        )
    rc, rt = ranked_control[:, :k], ranked_treatment[:, :k]
    out: dict[str, list[Delta]] = {}
    for seg in segments:
        users = np.ones(data.n_users, bool) if seg.users is None else np.asarray(seg.users, dtype=bool)
        if not users.any():
            continue
        mc = per_user_metrics(rc, data, k, seg.items)
        mt = per_user_metrics(rt, data, k, seg.items)
        per_user = {m: (mc[m][users], mt[m][users]) for m in mc}
        sub_c, sub_t = rc[users], rt[users]
        inc_c, inc_t = ba.incidence(sub_c, data.n_items), ba.incidence(sub_t, data.n_items)
        items = seg.items

        def cov(w: np.ndarray, inc_c=inc_c, inc_t=inc_t, items=items) -> tuple[np.ndarray, np.ndarray]:
            return ba.coverage_replicates(inc_c, w, items), ba.coverage_replicates(inc_t, w, items)

        stats = {
            f"coverage@{k}": (
                ba.coverage(sub_c, data.n_items, items),
                ba.coverage(sub_t, data.n_items, items),
                cov,
            )
        }
        out[seg.name] = paired_bootstrap(per_user, stats, n_boot=n_boot, alpha=alpha, seed=seed)
    return out


@dataclass(frozen=True)
class OfflineEstimate:
    """One estimator's CTR for both arms with intervals, and the paired delta.

    ess_*: the effective sample size of the estimator's own importance weights on each arm
    (NaN for the direct method, which has none)."""

    estimator: str
    control: Interval
    treatment: Interval
    delta: Delta
    ess_control: float
    ess_treatment: float


def compare_offline(
    control: OPEInput,
    treatment: OPEInput,
    estimators: Sequence[SlateEstimator],
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> list[OfflineEstimate]:
    """Each estimator on both arms (same log, same users) with a paired bootstrap of the delta."""
    if control.n_clusters != treatment.n_clusters or len(control.reward) != len(treatment.reward):
        raise ValueError("control and treatment inputs must come from the same log")
    stats = {}
    for est in estimators:
        nc, dc = est.cluster_terms(control)  # (n_users, r): V is a sum of r ratios
        nt, dt = est.cluster_terms(treatment)

        def fn(w: np.ndarray, nc=nc, dc=dc, nt=nt, dt=dt) -> tuple[np.ndarray, np.ndarray]:
            return ratio_replicates(w, nc, dc).sum(axis=1), ratio_replicates(w, nt, dt).sum(axis=1)

        stats[f"ctr:{est.name}"] = (est.estimate(control), est.estimate(treatment), fn)
    deltas = paired_bootstrap({}, stats, n_boot=n_boot, alpha=alpha, seed=seed, n_users=control.n_clusters)
    out = []
    for est, delta in zip(estimators, deltas, strict=True):
        out.append(
            OfflineEstimate(
                estimator=est.name,
                control=Interval(delta.control, *delta.control_interval),
                treatment=Interval(delta.treatment, *delta.treatment_interval),
                delta=delta,
                ess_control=est.effective_sample_size(control),
                ess_treatment=est.effective_sample_size(treatment),
            )
        )
    return out


@dataclass(frozen=True)
class TruthRow:
    """An estimator's interval against the simulator's online CTR for one policy."""

    policy: str
    estimator: str
    estimate: float
    low: float
    high: float
    truth: float

    @property
    def covered(self) -> bool:
        return bool(self.low <= self.truth <= self.high)


def truth_rows(
    offline: Sequence[OfflineEstimate], truth_control: float, truth_treatment: float, names: tuple[str, str]
) -> list[TruthRow]:
    rows = []
    for o in offline:
        rows.append(
            TruthRow(names[0], o.estimator, o.control.estimate, o.control.low, o.control.high, truth_control)
        )
        rows.append(
            TruthRow(
                names[1],
                o.estimator,
                o.treatment.estimate,
                o.treatment.low,
                o.treatment.high,
                truth_treatment,
            )
        )
    return rows


def sign_agrees(delta: Delta, true_delta: float) -> bool:
    """Whether the estimated direction matches the true one (a zero-crossing interval does not)."""
    if true_delta > 0:
        return delta.low > 0
    if true_delta < 0:
        return delta.high < 0
    return delta.low <= 0 <= delta.high


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reason: str
    primary: str
    checks: list[str] = field(default_factory=list)

    def line(self) -> str:
        return f"verdict: {self.decision.upper()} — {self.reason}"


def decide(deltas: Mapping[str, Delta], config: EvaluationConfig) -> Verdict:
    """Ship / don't ship / inconclusive from the primary metric and the guardrails.

    Relative lifts with their (1 - alpha) intervals [lo, hi]; min = config.min_lift:
      - don't ship: primary hi < 0 (significantly worse) or hi < min (confidently below the
        lift needed), or a guardrail confidently dropped more than its tolerance (hi < -tol);
      - ship: primary lo > 0 (significantly better), lift >= min, and every guardrail is
        confidently within tolerance (lo >= -tol);
      - inconclusive otherwise (including a primary metric that could not be computed).
    """
    primary = config.primary_metric
    checks: list[str] = []
    d = deltas.get(primary)
    if d is None or not np.isfinite(d.lift_low):
        return Verdict(
            "inconclusive",
            f"primary metric '{primary}' unavailable in this evaluation (available: {sorted(deltas)})",
            primary,
        )
    tol = config.guardrail_tolerance
    worse, unsure = [], []
    for g in config.guardrails:
        gd = deltas.get(g)
        if gd is None:
            checks.append(f"guardrail {g}: not computed")
            unsure.append(g)
            continue
        ci = f"[{gd.lift_low:+.2%}, {gd.lift_high:+.2%}]"
        checks.append(f"guardrail {g}: lift {gd.lift:+.2%} {ci}, tolerance -{tol:.1%}")
        if gd.lift_high < -tol:
            worse.append(g)
        elif not gd.lift_low >= -tol:
            unsure.append(g)
    p = f"{primary} lift {d.lift:+.2%} [{d.lift_low:+.2%}, {d.lift_high:+.2%}] (p={d.p_value:.3g})"
    if d.lift_high < 0:
        return Verdict("don't ship", f"{p}: significantly worse", primary, checks)
    if d.lift_high < config.min_lift:
        return Verdict(
            "don't ship", f"{p}: confidently below the required lift {config.min_lift:+.1%}", primary, checks
        )
    if worse:
        return Verdict(
            "don't ship", f"{p}, but guardrail(s) {worse} dropped beyond tolerance", primary, checks
        )
    if d.lift_low > 0 and d.lift >= config.min_lift:
        if unsure:
            return Verdict(
                "inconclusive",
                f"{p}, but guardrail(s) {unsure} not confirmed within tolerance",
                primary,
                checks,
            )
        return Verdict("ship", f"{p}; guardrails hold", primary, checks)
    return Verdict(
        "inconclusive",
        f"{p}: the interval does not settle it (need lift >= {config.min_lift:+.1%} "
        "with the lower bound above 0)",
        primary,
        checks,
    )


#: off-policy estimators that may carry the verdict, most preferred first: self-normalised and
#: doubly robust ones before plain reweighting, item-slot ones (the weaker item-position
#: assumption) before the item-level PBM ones; DM (no support check possible, biased where the
#: reward model is wrong) and clipped IPS (biased by construction) never do.
PRIMARY_PREFERENCE = ("sndr", "dr", "snips", "pbm_snips", "pbm_dr", "mips", "pi_slate", "pbm_ips", "ips")
#: estimators whose weights are per cluster, not per (item, slot): item-level deficiency does not apply
CLUSTER_LEVEL = ("mips",)
#: estimators that need support per item (any slot), not per (item, slot)
ITEM_LEVEL = ("pbm_ips", "pbm_snips", "pbm_dr")


@dataclass(frozen=True)
class PrimaryChoice:
    """Which off-policy estimator the verdict rests on, and why (None: too little support).

    ess: {"control": n, "treatment": n}, the effective sample size of the chosen estimator, or
    of the best-supported candidate when none qualified (what support there was)."""

    estimator: str | None
    reason: str
    ess: dict[str, float] = field(default_factory=dict)

    @property
    def metric(self) -> str | None:
        return None if self.estimator is None else f"ctr:{self.estimator}"


def _support_problem(
    o: OfflineEstimate, support: Mapping[str, SupportReport], min_ess: float, max_deficiency: float
) -> str | None:
    """Why `o` cannot carry the verdict (None: it can)."""
    ess = min(o.ess_control, o.ess_treatment)
    if not np.isfinite(ess) or ess < min_ess:
        return f"ESS {o.ess_control:,.0f} / {o.ess_treatment:,.0f} < {min_ess:,.0f}"
    if o.estimator in ITEM_LEVEL:
        worst = max((s.item_share for s in support.values()), default=0.0)
        if worst > max_deficiency:
            return f"support deficiency {worst:.1%} > {max_deficiency:.1%} of the target's items"
    elif o.estimator not in CLUSTER_LEVEL:
        worst = max((s.pair_share for s in support.values()), default=0.0)
        if worst > max_deficiency:
            return f"support deficiency {worst:.1%} > {max_deficiency:.1%} of the target's (item, slot) pairs"
    if not (np.isfinite(o.delta.lift_low) and np.isfinite(o.delta.lift_high)):
        return "no finite lift interval"
    return None


def choose_primary(
    offline: Sequence[OfflineEstimate] | None,
    support: Mapping[str, SupportReport],
    config: EvaluationConfig,
) -> PrimaryChoice:
    """The off-policy estimator to decide on, from support diagnostics alone (never from results).

    Candidates in `PRIMARY_PREFERENCE` order (or only config.offline_primary when it names one);
    the first whose effective sample size is >= config.offline_min_ess on both arms, whose
    target (item, slot) support deficiency is <= config.offline_max_support_deficiency (item-level
    estimators) and whose lift interval is finite wins. None qualifies: estimator None, and the
    reason lists each candidate's problem.
    """
    mode = config.offline_primary
    if not offline:
        return PrimaryChoice(None, "no off-policy estimates")
    if mode == "none":
        return PrimaryChoice(None, "evaluation.offline_primary is 'none'")
    by_name = {o.estimator: o for o in offline}
    if mode == "auto":
        names = [n for n in PRIMARY_PREFERENCE if n in by_name]
    elif mode in by_name:
        names = [mode]
    else:
        return PrimaryChoice(
            None, f"evaluation.offline_primary '{mode}' was not computed (computed: {sorted(by_name)})"
        )
    problems = []
    for name in names:
        o = by_name[name]
        problem = _support_problem(o, support, config.offline_min_ess, config.offline_max_support_deficiency)
        ess = {"control": o.ess_control, "treatment": o.ess_treatment}
        if problem is None:
            return PrimaryChoice(
                name,
                f"{name}: effective sample size {o.ess_control:,.0f} (control) / {o.ess_treatment:,.0f} "
                f"(treatment) >= {config.offline_min_ess:,.0f}"
                + ("" if not problems else f"; passed over: {'; '.join(problems)}"),
                ess,
            )
        problems.append(f"{name}: {problem}")
    best = max(
        (by_name[n] for n in names),
        key=lambda o: np.nan_to_num(min(o.ess_control, o.ess_treatment), nan=-1.0),
        default=None,
    )
    ess = {} if best is None else {"control": best.ess_control, "treatment": best.ess_treatment}
    return PrimaryChoice(None, "too little support for an off-policy verdict: " + "; ".join(problems), ess)


def decide_ab(deltas: Mapping[str, Delta], config: EvaluationConfig, choice: PrimaryChoice) -> Verdict:
    """The verdict: on the chosen off-policy CTR when support allows, else on config.primary_metric.

    A primary_metric that already names an off-policy CTR ('ctr:dr') is the user's choice and is
    kept; the support diagnostics are then only reported.
    """
    if choice.metric is not None and not config.primary_metric.startswith("ctr:"):
        verdict = decide(deltas, config.model_copy(update={"primary_metric": choice.metric}))
        note = f"off-policy primary: {choice.reason}"
    else:
        verdict = decide(deltas, config)
        if config.primary_metric.startswith("ctr:"):
            note = f"off-policy primary set by primary_metric; diagnostics: {choice.reason}"
        else:
            note = f"off-policy primary: none ({choice.reason}); verdict on {config.primary_metric}"
    return Verdict(verdict.decision, verdict.reason, verdict.primary, [note, *verdict.checks])


@dataclass
class ABResult:
    """Everything the report shows about one control-vs-treatment comparison."""

    control: str
    treatment: str
    k: int
    window: str
    n_users: int
    ranking: dict[str, list[Delta]]
    verdict: Verdict
    offline: list[OfflineEstimate] | None = None
    support: dict[str, SupportReport] = field(default_factory=dict)
    ope_note: str | None = None
    truth: list[TruthRow] | None = None
    truth_ctr: dict[str, float] = field(default_factory=dict)  # {"control": ctr, "treatment": ctr}
    truth_note: str | None = None
    notes: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    primary: PrimaryChoice | None = None

    def deltas(self) -> dict[str, Delta]:
        """All overall deltas by metric name: ranking ('all' segment) and off-policy ('ctr:*')."""
        out = {d.metric: d for d in self.ranking.get("all", [])}
        for o in self.offline or []:
            out[o.delta.metric] = o.delta
        return out

    def true_lift(self) -> float | None:
        if len(self.truth_ctr) != 2:
            return None
        return self.truth_ctr["treatment"] / self.truth_ctr["control"] - 1.0
