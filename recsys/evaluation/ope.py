"""Off-policy estimators of a slate policy's click-through rate from logged impressions.

Assumption: the position-based click model (PBM)
---------------------------------------------------
A logged request x shows a slate (a_0, ..., a_{L-1}); the click on slot k depends only on the
user, the item in that slot and the slot:

    P(c_k = 1 | x, slate) = theta_k * r(x, a_k)        theta: (L,) examination, r in [0, 1]

so slots do not interact and the value of a policy pi (its CTR per shown slot) is additive:

    V(pi) = E_x [ 1/L * sum_k  E_{b ~ pi_k(.|x)} theta_k r(x, b) ]

Under this model each logged slot can be reweighted on its own with the *marginal* item-position
propensity mu(a_k, k | x) = P(logging policy puts a_k in slot k | x), which is what the
impressions table stores in `propensity` (Li et al. 2018, "Offline Evaluation of Ranking
Policies with Click Models", KDD; the item-position model, which the PBM satisfies).

Arrays (one row per logged impression, m rows over n requests, any slate lengths):

    reward   (m,)  c_j in {0, 1}               clicked
    pscore   (m,)  mu(a_j, k_j | x_j) in (0, 1] logging propensity
    pi       (m,)  pi(a_j, k_j | x_j) in [0, 1] target's probability of the same item in the same slot
                                              (1[target slate has a_j at k_j] for a deterministic target)
    q_logged (m,)  q(x_j, a_j, k_j)            reward model at the logged item
    q_target (m,)  sum_b pi(b, k_j | x_j) q(x_j, b, k_j)   reward model under the target, same slot
    cluster  (m,)  bootstrap unit (user index)

and, for the estimators that need them (optional):

    pi_cluster, pscore_cluster (m,)  p_pi(e(a_j) | x_j, k_j), p_mu(e(a_j) | x_j, k_j): both policies'
                                     probability of the logged item's cluster in that slot (MIPS)
    slate    (m,)  the logged slate (request) of each impression (pseudo-inverse)
    pi_exam, pscore_exam (m,)  sum_k theta_k pi(a_j, k | x_j), sum_k theta_k mu(a_j, k | x_j): both
                               policies' examination-weighted probability of the logged item in
                               any slot (the item-level PBM estimators); theta_logged (m,) = theta
                               at the logged slot; theta_target (m,) = the target's mean
                               examination per slot of that request (sum of theta over the
                               slots it fills / the request's logged slots)

with the importance weight w_j = pi_j / pscore_j. Every estimator below is a ratio of sums of
per-impression terms, `V = sum(num) / sum(den)` (SNDR: a sum of two such ratios), which is
also how its bootstrap interval (users resampled, `recsys.evaluation.bootstrap`) is computed.

Under the PBM a click at any slot also tells about the item elsewhere: the item-level estimators
(`PBMIPS`, `PBMSNIPS`, `PBMDR`) reweight by the examination-weighted probability of the item in
*any* slot, so a logged item counts wherever the target puts it (Li et al. 2018, the PBM
estimator); with a Plackett-Luce logging policy that spreads each item over many slots, their
weights are an order of magnitude smaller than the item-slot ones.

For large catalogues, where a target rarely shows the very item logged in a slot, MIPS
reweights item clusters instead of items (Saito & Joachims 2022); where whole slates are logged
by a per-slot independent policy, the pseudo-inverse estimator (Swaminathan et al. 2017) needs
only a slate reward linear in the slots.

Off-policy estimates are only as good as the overlap: mass the target puts on items the logging
policy never showed cannot be reweighted. `support_deficiency` measures it and the report shows
it; it is never silently dropped.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from recsys.evaluation.bootstrap import Interval, bootstrap_ratio_sum, cluster_sums

__all__ = [
    "OPEInput",
    "OPEInputError",
    "NoOverlapError",
    "EstimatorParameterError",
    "effective_sample_size",
    "check_ope_inputs",
    "SlateEstimator",
    "IPS",
    "ClippedIPS",
    "SNIPS",
    "DirectMethod",
    "DoublyRobust",
    "SNDR",
    "MIPS",
    "cluster_probability",
    "PseudoInverse",
    "PBMIPS",
    "PBMSNIPS",
    "PBMDR",
    "PositionBasedModel",
    "fit_position_based_model",
    "examination_from_log",
    "SupportReport",
    "support_deficiency",
    "build_slate_input",
    "default_estimators",
]


class OPEInputError(ValueError):
    """Logged data that an off-policy estimator cannot use; says which field, rule and rows."""


class NoOverlapError(OPEInputError):
    """A self-normalised estimate is 0/0: the target puts no weight on any logged impression."""


class EstimatorParameterError(ValueError):
    """An estimator built with a parameter outside its domain (e.g. a NaN or negative clip)."""


@dataclass(frozen=True)
class OPEInput:
    """Validated per-impression arrays (see the module docstring for the meaning and shapes).

    Built by `check_ope_inputs` (which maps any cluster labels to indices) or directly; either
    way `__post_init__` runs the same checks, so no estimator sees a zero, missing or > 1
    propensity, a non-binary reward, or a bootstrap unit outside [0, n_clusters).
    """

    reward: np.ndarray
    pscore: np.ndarray
    pi: np.ndarray
    cluster: np.ndarray
    n_clusters: int
    q_logged: np.ndarray | None = None
    q_target: np.ndarray | None = None
    pi_cluster: np.ndarray | None = None
    pscore_cluster: np.ndarray | None = None
    slate: np.ndarray | None = None
    pi_exam: np.ndarray | None = None
    pscore_exam: np.ndarray | None = None
    theta_logged: np.ndarray | None = None
    theta_target: np.ndarray | None = None
    source: str = field(default="logged impressions", repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, value in _validated(self).items():
            object.__setattr__(self, name, value)

    @property
    def weight(self) -> np.ndarray:
        """w = pi / pscore, shape (m,)."""
        return self.pi / self.pscore

    @property
    def effective_sample_size(self) -> float:
        """(sum w)^2 / sum w^2: how many logged impressions the reweighted estimate is worth."""
        return effective_sample_size(self.weight)


def effective_sample_size(weight: np.ndarray) -> float:
    """Kish's effective sample size (sum w)^2 / sum w^2 of importance weights (m,); 0 if all are 0."""
    w = np.asarray(weight, dtype=np.float64)
    return float(w.sum() ** 2 / max((w**2).sum(), 1e-300))


def _rows(mask: np.ndarray, limit: int = 5) -> str:
    idx = np.flatnonzero(mask)
    more = f" (+{idx.size - limit} more)" if idx.size > limit else ""
    return f"{idx.size:,} rows, e.g. rows {idx[:limit].tolist()}{more}"


def _missing_labels(labels: np.ndarray) -> np.ndarray:
    """Bool mask (m,) of NaN / None labels, whatever the array's dtype."""
    if labels.dtype.kind in "fc":
        return np.isnan(labels)
    if labels.dtype.kind == "O":
        return np.array([x is None or (isinstance(x, float) and x != x) for x in labels], dtype=bool)
    return np.zeros(labels.shape, dtype=bool)


def _as_vector(value, name: str, source: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise OPEInputError(f"{source}: {name} must be a non-empty 1-d array, got shape {arr.shape}")
    return arr


def _validated(data: OPEInput) -> dict[str, object]:
    """The checks behind `OPEInput`: coerced arrays by field name, or `OPEInputError`."""
    source = data.source
    reward = _as_vector(data.reward, "reward", source)
    m = reward.shape[0]
    arrays = {
        "pscore": data.pscore,
        "pi": data.pi,
        "cluster": data.cluster,
        "q_logged": data.q_logged,
        "q_target": data.q_target,
        "pi_cluster": data.pi_cluster,
        "pscore_cluster": data.pscore_cluster,
        "slate": data.slate,
        "pi_exam": data.pi_exam,
        "pscore_exam": data.pscore_exam,
        "theta_logged": data.theta_logged,
        "theta_target": data.theta_target,
    }
    for name, arr in arrays.items():
        if arr is not None and np.shape(arr) != (m,):
            raise OPEInputError(f"{source}: {name} has shape {np.shape(arr)}, expected ({m},) like reward")
    pscore = np.asarray(data.pscore, dtype=np.float64)
    pi = np.asarray(data.pi, dtype=np.float64)
    if np.isnan(pscore).any():
        raise OPEInputError(
            f"{source}: propensity is missing in {_rows(np.isnan(pscore))}; off-policy "
            "estimates need the logging policy's probability for every impression"
        )
    if (pscore <= 0).any():
        raise OPEInputError(
            f"{source}: propensity must be > 0 (an impression that was shown had a "
            f"positive probability), got <= 0 in {_rows(pscore <= 0)}"
        )
    if (pscore > 1).any():
        raise OPEInputError(f"{source}: propensity must be <= 1, got > 1 in {_rows(pscore > 1)}")
    if not np.isin(reward, (0.0, 1.0)).all():
        raise OPEInputError(
            f"{source}: reward (clicked) must be 0 or 1; {_rows(~np.isin(reward, (0.0, 1.0)))}"
        )
    bad_pi = np.isnan(pi) | (pi < 0) | (pi > 1)
    if bad_pi.any():
        raise OPEInputError(f"{source}: target probability pi must lie in [0, 1]; {_rows(bad_pi)}")
    out: dict[str, object] = {"reward": reward, "pscore": pscore, "pi": pi}
    for name in ("q_logged", "q_target"):
        q = getattr(data, name)
        if q is not None:
            q = np.asarray(q, dtype=np.float64)
            bad = np.isnan(q) | (q < 0) | (q > 1)
            if bad.any():
                raise OPEInputError(f"{source}: reward-model output {name} must lie in [0, 1]; {_rows(bad)}")
            out[name] = q
    if (data.pi_cluster is None) != (data.pscore_cluster is None):
        raise OPEInputError(f"{source}: pi_cluster and pscore_cluster come together (MIPS needs both)")
    if data.pscore_cluster is not None:
        ps_c = np.asarray(data.pscore_cluster, dtype=np.float64)
        pi_c = np.asarray(data.pi_cluster, dtype=np.float64)
        # the logged item's cluster holds at least the logged item's own probability
        bad = np.isnan(ps_c) | (ps_c > 1) | ~(ps_c >= pscore * (1 - 1e-9))
        if bad.any():
            raise OPEInputError(
                f"{source}: pscore_cluster (logging probability of the logged item's cluster) must lie "
                f"in [pscore, 1]; {_rows(bad)}"
            )
        bad = np.isnan(pi_c) | (pi_c < 0) | (pi_c > 1) | (pi_c < pi * (1 - 1e-9))
        if bad.any():
            raise OPEInputError(
                f"{source}: pi_cluster (target probability of the logged item's cluster) must lie in "
                f"[pi, 1]; {_rows(bad)}"
            )
        out["pscore_cluster"], out["pi_cluster"] = ps_c, pi_c
    exam = ("pi_exam", "pscore_exam", "theta_logged", "theta_target")
    given = [getattr(data, name) is not None for name in exam]
    if any(given) and not all(given):
        raise OPEInputError(f"{source}: {', '.join(exam)} come together (the PBM estimators need all four)")
    if all(given):
        values = {name: np.asarray(getattr(data, name), dtype=np.float64) for name in exam}
        for name, v in values.items():
            low_ok = v > 0 if name == "pscore_exam" else v >= 0
            bad = np.isnan(v) | ~low_ok | ~np.isfinite(v)
            if bad.any():
                rule = "> 0 (the logged item was shown)" if name == "pscore_exam" else ">= 0"
                raise OPEInputError(f"{source}: {name} must be finite and {rule}; {_rows(bad)}")
        out.update(values)
    if data.slate is not None:
        slate = np.asarray(data.slate)
        if slate.dtype.kind not in "iu":
            raise OPEInputError(
                f"{source}: slate must hold integer slate (request) indices, got dtype {slate.dtype}; "
                "build the input with check_ope_inputs to map request ids to indices"
            )
        out["slate"] = slate.astype(np.int64)
    cluster = np.asarray(data.cluster)
    if cluster.shape != (m,):
        raise OPEInputError(f"{source}: cluster has shape {cluster.shape}, expected ({m},) like reward")
    if _missing_labels(cluster).any():
        raise OPEInputError(
            f"{source}: bootstrap unit (cluster/user id) is missing in {_rows(_missing_labels(cluster))}; "
            "every impression must belong to a user"
        )
    n_clusters = data.n_clusters
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, int | np.integer) or n_clusters < 1:
        raise OPEInputError(f"{source}: n_clusters must be a positive integer, got {n_clusters!r}")
    if cluster.dtype.kind not in "iu":
        raise OPEInputError(
            f"{source}: cluster must hold integer indices in [0, n_clusters), got dtype {cluster.dtype}; "
            "build the input with check_ope_inputs to map user ids to indices"
        )
    outside = (cluster < 0) | (cluster >= n_clusters)
    if outside.any():
        raise OPEInputError(f"{source}: cluster index outside [0, {n_clusters}) in {_rows(outside)}")
    out["cluster"] = cluster.astype(np.int64)
    out["n_clusters"] = int(n_clusters)
    return out


def check_ope_inputs(
    reward: np.ndarray,
    pscore: np.ndarray,
    pi: np.ndarray,
    cluster: np.ndarray | None = None,
    q_logged: np.ndarray | None = None,
    q_target: np.ndarray | None = None,
    source: str = "logged impressions",
    pi_cluster: np.ndarray | None = None,
    pscore_cluster: np.ndarray | None = None,
    slate: np.ndarray | None = None,
    exam: dict[str, np.ndarray] | None = None,
) -> OPEInput:
    """The one door into the estimators: shapes, missing/zero/>1 propensities, ranges.

    `cluster` holds any labels (user ids); they become indices 0..n_clusters-1 here, and a
    missing (NaN / None) label is refused rather than merged into one unit. `slate` (request
    ids, for the slate estimators) is mapped the same way. `exam` holds pi_exam, pscore_exam,
    theta_logged and theta_target for the PBM estimators. Raises
    `OPEInputError` naming the field, the rule and the first offending row numbers.
    """
    reward = _as_vector(reward, "reward", source)
    m = reward.shape[0]
    if cluster is None:
        cluster_idx, n_clusters = np.arange(m), m
    else:
        labels = np.asarray(cluster)
        if labels.shape != (m,):
            raise OPEInputError(f"{source}: cluster has shape {labels.shape}, expected ({m},) like reward")
        missing = _missing_labels(labels)
        if missing.any():
            raise OPEInputError(
                f"{source}: bootstrap unit (cluster/user id) is missing in {_rows(missing)}; every "
                "impression must belong to a user (NaN ids would merge unrelated users into one)"
            )
        _, cluster_idx = np.unique(labels, return_inverse=True)
        n_clusters = int(cluster_idx.max()) + 1
    slate_idx = None
    if slate is not None:
        labels = np.asarray(slate)
        if labels.shape != (m,):
            raise OPEInputError(f"{source}: slate has shape {labels.shape}, expected ({m},) like reward")
        if _missing_labels(labels).any():
            missing = _missing_labels(labels)
            raise OPEInputError(f"{source}: slate (request) id is missing in {_rows(missing)}")
        slate_idx = np.unique(labels, return_inverse=True)[1].astype(np.int64)
    return OPEInput(
        reward=reward,
        pscore=pscore,
        pi=pi,
        cluster=cluster_idx.astype(np.int64),
        n_clusters=n_clusters,
        q_logged=q_logged,
        q_target=q_target,
        pi_cluster=pi_cluster,
        pscore_cluster=pscore_cluster,
        slate=slate_idx,
        source=source,
        **(exam or {}),
    )


@dataclass
class SlateEstimator(ABC):
    """An off-policy estimator: per-impression terms, a point estimate, a bootstrap interval.

    `terms` returns per-impression numerators and denominators, (m,) each for a ratio estimator
    V = sum(num) / sum(den), or (m, r) each for a sum of r ratios
    V = sum_c sum_j num[j, c] / sum_j den[j, c] (self-normalised DR: a mean plus a
    self-normalised correction). Either way the clustered bootstrap resamples users and
    recomputes the same ratios, so every estimator shares one interval method.
    """

    name: str = "base"

    @abstractmethod
    def terms(self, data: OPEInput) -> tuple[np.ndarray, np.ndarray]:
        """Per-impression numerator and denominator (m,) or (m, r); see the class docstring."""

    def weights(self, data: OPEInput) -> np.ndarray | None:
        """The importance weights the estimator puts on the logged impressions (m,), for the
        effective sample size; None for an estimator without weights (the direct method)."""
        return data.weight

    def effective_sample_size(self, data: OPEInput) -> float:
        """Kish's ESS of `weights` (NaN when the estimator has none)."""
        w = self.weights(data)
        return float("nan") if w is None else effective_sample_size(w)

    def _checked_terms(self, data: OPEInput) -> tuple[np.ndarray, np.ndarray]:
        num, den = self.terms(data)
        num = np.asarray(num, dtype=np.float64).reshape(len(num), -1)
        den = np.broadcast_to(np.asarray(den, dtype=np.float64).reshape(len(den), -1), num.shape)
        if not (den != 0).any(axis=0).all():
            raise NoOverlapError(
                f"{self.name}: the target policy gives zero weight to every one of the {len(den):,} "
                f"{data.source} (it never shows a logged item where it was logged), so the "
                "self-normalised estimate is 0/0; there is no overlap to estimate from"
            )
        return num, den

    def estimate(self, data: OPEInput) -> float:
        num, den = self._checked_terms(data)
        return float((num.sum(axis=0) / den.sum(axis=0)).sum())

    def cluster_terms(self, data: OPEInput) -> tuple[np.ndarray, np.ndarray]:
        """The terms summed per bootstrap unit (user): (n_clusters, r), (n_clusters, r)."""
        num, den = self._checked_terms(data)
        return cluster_sums(num, data.cluster, data.n_clusters), cluster_sums(
            den, data.cluster, data.n_clusters
        )

    def interval(self, data: OPEInput, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> Interval:
        """Percentile interval with users (clusters) resampled."""
        num, den = self.cluster_terms(data)
        return bootstrap_ratio_sum(num, den, n_boot, alpha, seed)


def _require_model(data: OPEInput, name: str) -> tuple[np.ndarray, np.ndarray]:
    if data.q_logged is None or data.q_target is None:
        raise OPEInputError(f"{name} needs reward-model outputs q_logged and q_target")
    return data.q_logged, data.q_target


@dataclass
class IPS(SlateEstimator):
    """Inverse propensity scoring (item-position model).

    V_IPS = 1/m sum_j  w_j c_j,   w_j = pi(a_j, k_j | x_j) / mu(a_j, k_j | x_j)

    Unbiased under the PBM when the logging policy covers the target (mu > 0 wherever pi > 0);
    high variance when w is large. Li et al. (2018), KDD.
    """

    name: str = "ips"

    def terms(self, data: OPEInput) -> tuple[np.ndarray, np.ndarray]:
        return data.weight * data.reward, np.ones_like(data.reward)


@dataclass
class ClippedIPS(SlateEstimator):
    """IPS with weights capped at `clip`: V = 1/m sum_j min(w_j, clip) c_j.

    Trades a downward bias for lower variance. Ionides (2008); Strehl et al. (2010).
    """

    name: str = "clipped_ips"
    clip: float = 10.0

    def __post_init__(self) -> None:
        if not (isinstance(self.clip, int | float | np.floating | np.integer) and self.clip > 0):
            raise EstimatorParameterError(
                f"{self.name}: clip must be a number > 0 (the largest importance weight kept), "
                f"got {self.clip!r}; use IPS for no clipping"
            )

    def weights(self, data: OPEInput) -> np.ndarray:
        return np.minimum(data.weight, self.clip)

    def terms(self, data: OPEInput) -> tuple[np.ndarray, np.ndarray]:
        return self.weights(data) * data.reward, np.ones_like(data.reward)


@dataclass
class SNIPS(SlateEstimator):
    """Self-normalised IPS: V = sum_j w_j c_j / sum_j w_j.

    E[w] = 1 per slot under full support, so the denominator estimates m; normalising by the
    realised weights removes most of IPS's variance at a small, vanishing bias.
    Swaminathan & Joachims (2015), "The Self-Normalized Estimator for Counterfactual Learning".
    """

    name: str = "snips"

    def terms(self, data: OPEInput) -> tuple[np.ndarray, np.ndarray]:
        w = data.weight
        return w * data.reward, w


@dataclass
class DirectMethod(SlateEstimator):
    """Direct method: V = 1/m sum_j q_target_j, the reward model's CTR of the target slates.

    No weights, so low variance, but biased wherever the reward model q is wrong.
    Beygelzimer & Langford (2009).
    """

    name: str = "dm"

    def weights(self, data: OPEInput) -> None:
        return None

    def terms(self, data: OPEInput) -> tuple[np.ndarray, np.ndarray]:
        _, q_target = _require_model(data, self.name)
        return q_target, np.ones_like(data.reward)


@dataclass
class DoublyRobust(SlateEstimator):
    """Doubly robust: V = 1/m sum_j [ q_target_j + w_j (c_j - q_logged_j) ].

    Unbiased when either the propensities or the reward model are right; the reward model
    absorbs variance IPS would carry. Dudik, Langford & Li (2011), ICML; slot-wise under the
    PBM as in Kiyohara et al. (2022), "Doubly Robust Off-Policy Evaluation for Ranking Policies
    under the Cascade Behavior Model" (the independent-slot special case).
    """

    name: str = "dr"

    def terms(self, data: OPEInput) -> tuple[np.ndarray, np.ndarray]:
        q_logged, q_target = _require_model(data, self.name)
        return q_target + data.weight * (data.reward - q_logged), np.ones_like(data.reward)


@dataclass
class SNDR(SlateEstimator):
    """Self-normalised doubly robust (SNDR):

        V = 1/m sum_j q_target_j  +  sum_j w_j (c_j - q_logged_j) / sum_j w_j

    DR with its correction term normalised by the realised weights instead of m, as SNIPS
    normalises IPS: bounded by the reward model's range plus the largest residual, far less
    variance than DR when a few weights are large, consistent under the same assumptions
    (PBM, mu > 0 wherever pi > 0) with a small, vanishing bias. Two ratios, so `terms` returns
    (m, 2): [q_target | w (c - q_logged)] over [1 | w].
    Thomas & Brunskill (2016), "Data-Efficient Off-Policy Policy Evaluation for Reinforcement
    Learning", ICML (weighted DR); Kallus & Uehara (2019), NeurIPS; `SelfNormalizedDR` in
    Open Bandit Pipeline (Saito et al. 2021).
    """

    name: str = "sndr"

    def terms(self, data: OPEInput) -> tuple[np.ndarray, np.ndarray]:
        q_logged, q_target = _require_model(data, self.name)
        w = data.weight
        num = np.stack([q_target, w * (data.reward - q_logged)], axis=1)
        den = np.stack([np.ones_like(w), w], axis=1)
        return num, den


@dataclass
class MIPS(SlateEstimator):
    """Marginalised IPS over item clusters (MIPS), slot by slot:

        V = 1/m sum_j  w_j^e c_j,   w_j^e = p_pi(e_j | x_j, k_j) / p_mu(e_j | x_j, k_j)

    where e_j = e(a_j) is the cluster of the logged item (e.g. k-means of CLIP or two-tower
    vectors) and p(e | x, k) = sum_{b: e(b) = e} p(b, k | x) is a policy's probability of
    putting *some* item of that cluster in slot k. Inputs: `pscore_cluster` = p_mu(e_j | x_j, k_j)
    and `pi_cluster` = p_pi(e_j | x_j, k_j), (m,) each (see `cluster_probability`).

    Assumptions: the PBM, and *no direct effect*: the click depends on the item only through its
    cluster, E[c | x, a, k] = E[c | x, e(a), k]; support is needed only per cluster
    (p_mu(e | x, k) > 0 wherever p_pi(e | x, k) > 0), not per item, which is what makes it
    usable with thousands of items. Coarser clusters: lower variance, more bias where the
    assumption fails. Saito & Joachims (2022), "Off-Policy Evaluation for Large Action Spaces
    via Embeddings", ICML.
    """

    name: str = "mips"

    def weights(self, data: OPEInput) -> np.ndarray:
        if data.pi_cluster is None or data.pscore_cluster is None:
            raise OPEInputError(
                f"{self.name} needs cluster probabilities pi_cluster and pscore_cluster "
                "(check_ope_inputs(..., pi_cluster=, pscore_cluster=); see cluster_probability)"
            )
        return data.pi_cluster / data.pscore_cluster

    def terms(self, data: OPEInput) -> tuple[np.ndarray, np.ndarray]:
        return self.weights(data) * data.reward, np.ones_like(data.reward)


def cluster_probability(dist: np.ndarray, item_cluster: np.ndarray, logged_item: np.ndarray) -> np.ndarray:
    """p(e(a_j) | x_j, k_j): the mass a policy's slot distribution puts on the logged item's cluster.

    dist (m, n_items): row j is the policy's distribution over items in slot k_j for request x_j
    (a one-hot row for a deterministic policy); item_cluster (n_items,) int cluster ids;
    logged_item (m,) item indices. Returns (m,) = sum_b dist[j, b] 1[item_cluster[b] = item_cluster[a_j]].
    """
    dist = np.asarray(dist, dtype=np.float64)
    item_cluster = np.asarray(item_cluster)
    logged_item = np.asarray(logged_item, dtype=np.int64)
    if dist.ndim != 2 or dist.shape[1] != item_cluster.shape[0] or dist.shape[0] != logged_item.shape[0]:
        raise OPEInputError(
            f"cluster_probability: dist {dist.shape}, item_cluster {item_cluster.shape} and logged_item "
            f"{logged_item.shape} must be (m, n_items), (n_items,), (m,)"
        )
    if _missing_labels(item_cluster).any():
        missing = _missing_labels(item_cluster)
        raise OPEInputError(f"cluster_probability: item cluster id missing for {_rows(missing)}")
    same = item_cluster[None, :] == item_cluster[logged_item][:, None]
    return (dist * same).sum(axis=1)


@dataclass
class PseudoInverse(SlateEstimator):
    """Pseudo-inverse slate estimator (PI) for a whole logged slate s_i = (s_i1, ..., s_iL):

        V = 1/(n L) sum_i  R_i W_i,   R_i = sum_k c_ik,
        W_i = 1_{s_i}^T Gamma_x^+ theta_pi = sum_k pi(s_ik, k | x_i) / mu(s_ik, k | x_i) - (L - 1)

    The closed form of W holds when the logging policy picks slots independently,
    mu(s | x) = prod_k mu(s_k, k | x) (Swaminathan et al., sec. 3: product logging policies); the
    estimator is then unbiased whenever the slate reward is *linear* in the slots,
    E[R | x, s] = sum_k phi_x(s_k, k), a weaker assumption than the PBM (no per-slot clicks are
    used, only their sum). W can be negative. Each impression row j of slate i contributes
    c_j W_i / m, so V is one ratio of per-impression sums like the others. Needs `slate` (the
    request of each row) and every slate logged whole.
    Swaminathan, Krishnamurthy, Agarwal, Dudik, Langford, Jose & Zitouni (2017), "Off-policy
    evaluation for slate recommendation", NeurIPS.
    """

    name: str = "pi_slate"

    def weights(self, data: OPEInput) -> np.ndarray:
        if data.slate is None:
            raise OPEInputError(f"{self.name} needs the slate (request) of every impression (slate=)")
        n_slates = int(data.slate.max()) + 1
        length = np.bincount(data.slate, minlength=n_slates)
        per_slate = np.bincount(data.slate, weights=data.weight, minlength=n_slates) - (length - 1)
        return per_slate[data.slate]

    def terms(self, data: OPEInput) -> tuple[np.ndarray, np.ndarray]:
        return self.weights(data) * data.reward, np.ones_like(data.reward)


def _exam(data: OPEInput, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(w, theta_logged, theta_target) of the PBM estimators, w = pi_exam / pscore_exam."""
    if data.pi_exam is None or data.pscore_exam is None:
        raise OPEInputError(
            f"{name} needs the logging policy's probability of each logged item at every slot "
            "(slot_propensities in the log) and the examination probabilities theta"
        )
    return data.pi_exam / data.pscore_exam, data.theta_logged, data.theta_target


class _ItemLevel(SlateEstimator):
    """The PBM estimators' weights: w = pi_exam / pscore_exam (see `PBMIPS`)."""

    def weights(self, data: OPEInput) -> np.ndarray:
        return _exam(data, self.name)[0]


@dataclass
class PBMIPS(_ItemLevel):
    """Item-level IPS under the PBM (Li et al. 2018, "Offline Evaluation of Ranking Policies
    with Click Models", KDD, the PBM estimator):

        V = 1/m sum_j w_j c_j,   w_j = sum_k theta_k pi(a_j, k | x_j) / sum_k theta_k mu(a_j, k | x_j)

    Why it is unbiased: E[c | x, a, k] = theta_k r(x, a), so over the logging policy
    E[sum_slots w c] = sum_a r(x, a) sum_k theta_k pi(a, k | x), the target's clicks. Support is
    needed per item (mu(a, k) > 0 for some slot k), not per (item, slot); theta is estimated
    from the randomised log (`examination_from_log`), and its scale cancels in w.
    """

    name: str = "pbm_ips"

    def terms(self, data: OPEInput) -> tuple[np.ndarray, np.ndarray]:
        return self.weights(data) * data.reward, np.ones_like(data.reward)


@dataclass
class PBMSNIPS(_ItemLevel):
    """Self-normalised PBM estimator:

        V = sum_j w_j c_j / sum_j w_j theta_(k_j) / theta_target_j

    with w as in `PBMIPS`, theta_(k_j) the examination of the logged slot and theta_target_j the
    target's mean examination per slot of that request (sum of theta over the slots it fills,
    divided by the logged slots S). Under the logging policy E[sum_slots w theta_k] = the
    target's total examination = S theta_target, so the denominator estimates m the way SNIPS's
    sum of weights does: a small, vanishing bias for much less variance than `PBMIPS` when a few
    weights are large.
    """

    name: str = "pbm_snips"

    def terms(self, data: OPEInput) -> tuple[np.ndarray, np.ndarray]:
        w, theta_logged, theta_target = _exam(data, self.name)
        scale = np.divide(1.0, theta_target, out=np.zeros_like(w), where=theta_target > 0)
        return w * data.reward, w * theta_logged * scale


@dataclass
class PBMDR(_ItemLevel):
    """Doubly robust with the item-level PBM weights:

        V = 1/m sum_j [ q_target_j + w_j (c_j - q_logged_j) ]

    The reward model's residual at the logged item is reweighted like `PBMIPS`, so the estimate
    is unbiased when the propensities are right, and lower-variance when q is close.
    """

    name: str = "pbm_dr"

    def terms(self, data: OPEInput) -> tuple[np.ndarray, np.ndarray]:
        q_logged, q_target = _require_model(data, self.name)
        return q_target + self.weights(data) * (data.reward - q_logged), np.ones_like(data.reward)


def default_estimators(clip: float = 10.0, item_level: bool = False) -> list[SlateEstimator]:
    """The estimators the A/B report runs on a log of marginal item-slot propensities (and, with
    `item_level`, on a log with every slot's propensity: the PBM estimators)."""
    base = [IPS(), ClippedIPS(clip=clip), SNIPS(), DirectMethod(), DoublyRobust(), SNDR()]
    return base + ([PBMIPS(), PBMSNIPS(), PBMDR()] if item_level else [])


# ---------------------------------------------------------------------------------------------
# reward model: the position-based model fitted by EM


@dataclass(frozen=True)
class PositionBasedModel:
    """q(x, i, k) = theta_k * r_i: examination by slot (L,) times item attractiveness (n_items,).

    User-independent on purpose (a baseline reward model for DM/DR); DR corrects its bias.
    Items the log never showed get the prior `r_unseen`.
    """

    theta: np.ndarray
    relevance: np.ndarray
    r_unseen: float

    def q(self, item_idx: np.ndarray, position: np.ndarray) -> np.ndarray:
        """q for item indices (m,) (-1 = unseen item) at slots (m,) -> (m,) in [0, 1]."""
        position = np.asarray(position)
        theta = self.theta[np.clip(position, 0, len(self.theta) - 1)]
        r = np.where(item_idx >= 0, self.relevance[np.maximum(item_idx, 0)], self.r_unseen)
        return np.clip(theta * r, 0.0, 1.0)


def fit_position_based_model(
    item_idx: np.ndarray,
    position: np.ndarray,
    clicked: np.ndarray,
    n_items: int,
    iters: int = 30,
    prior: float = 10.0,
) -> PositionBasedModel:
    """Expectation-maximisation for the PBM (Chuklin et al. 2015, "Click Models for Web Search").

    E-step, for a non-click at slot k on item i:
        P(E=1, R=0 | c=0) = theta_k (1 - r_i) / (1 - theta_k r_i)
        P(E=0, R=1 | c=0) = (1 - theta_k) r_i / (1 - theta_k r_i)
    M-step: theta_k = mean over slot k of P(E=1 | .); r_i = mean over item i of P(R=1 | .),
    shrunk towards the global click rate with `prior` pseudo-impressions.
    """
    item_idx = np.asarray(item_idx, dtype=np.int64)
    position = np.asarray(position, dtype=np.int64)
    c = np.asarray(clicked, dtype=np.float64)
    n_pos = int(position.max()) + 1
    pos_count = np.maximum(np.bincount(position, minlength=n_pos), 1)
    item_count = np.bincount(item_idx, minlength=n_items)
    base = float(c.mean())
    theta = np.full(n_pos, 0.5)
    r = np.full(n_items, min(0.99, 2 * base + 1e-3))
    r_prior = min(0.99, 2 * base + 1e-3)
    for _ in range(iters):
        t, ri = theta[position], r[item_idx]
        denom = np.maximum(1.0 - t * ri, 1e-12)
        exam = c + (1 - c) * t * (1 - ri) / denom
        rel = c + (1 - c) * (1 - t) * ri / denom
        theta = np.clip(np.bincount(position, weights=exam, minlength=n_pos) / pos_count, 1e-4, 1.0)
        r = np.clip(
            (np.bincount(item_idx, weights=rel, minlength=n_items) + prior * r_prior) / (item_count + prior),
            1e-6,
            1.0,
        )
        r_prior = float(np.average(r, weights=np.maximum(item_count, 1e-9))) if item_count.sum() else r_prior
    return PositionBasedModel(theta=theta, relevance=r, r_unseen=r_prior)


def examination_from_log(position: np.ndarray, clicked: np.ndarray, propensity: np.ndarray) -> np.ndarray:
    """theta (L,) from a randomised log, scaled to theta_0 = 1 (only ratios matter).

    Under the PBM, E[sum over impressions in slot k of c / mu(a, k | x)] = theta_k * sum over the
    logging policy's items of r(x, a) for every request x, the same sum for every slot when each
    item can be logged in every slot (a Plackett-Luce policy over its candidates); so

        theta_k  proportional to  sum_{j: k_j = k} c_j / mu(a_j, k_j | x_j)

    unbiased without a relevance model, unlike EM under a user-independent relevance, which
    confounds position with the logging policy's choice of better items for the top. The noisy
    per-slot ratios are made non-increasing by pooling adjacent violators (examination falls
    down the list), weighted by each slot's impressions.
    """
    position = np.asarray(position, dtype=np.int64)
    n_slots = int(position.max()) + 1
    raw = np.bincount(position, weights=np.asarray(clicked, dtype=np.float64) / propensity, minlength=n_slots)
    count = np.bincount(position, minlength=n_slots).astype(np.float64)
    rate = raw / np.maximum(count, 1.0)
    blocks: list[list[float]] = []  # [mean, weight, length], merged while a later block is higher
    for value, weight in zip(rate, count, strict=True):
        blocks.append([value, max(weight, 1e-12), 1])
        while len(blocks) > 1 and blocks[-1][0] > blocks[-2][0]:
            v2, w2, n2 = blocks.pop()
            v1, w1, n1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    theta = np.concatenate([np.full(n, v) for v, _, n in blocks])
    if not theta[0] > 0:
        raise OPEInputError("no clicks in the log's first slot (after pooling): cannot estimate "
                            "examination probabilities")
    return np.maximum(theta / theta[0], 1e-6)


# ---------------------------------------------------------------------------------------------
# overlap and the bridge from a log + target slates to estimator inputs


@dataclass(frozen=True)
class SupportReport:
    """How much of the target's mass the log cannot reweight.

    item_share: share of target slots whose item never appears in the log (any slot);
    pair_share: share of target slots whose (item, slot) pair never appears in the log.
    Positive values bias IPS/SNIPS/DR towards the logged part of the target's slates.
    """

    item_share: float
    pair_share: float
    target_slots: int
    examples: list[str] = field(default_factory=list)

    @property
    def deficient(self) -> bool:
        return self.pair_share > 0

    def describe(self) -> str:
        if not self.deficient:
            return "full support: every (item, slot) the target shows was logged"
        return (
            f"support deficiency: {self.item_share:.1%} of the target's slots hold items never logged "
            f"and {self.pair_share:.1%} hold (item, slot) pairs never logged (e.g. {self.examples[:3]}); "
            "estimates cover only the logged part"
        )


def support_deficiency(
    target: np.ndarray,
    logged_items: np.ndarray,
    logged_positions: np.ndarray,
    mass: np.ndarray | None = None,
) -> SupportReport:
    """Target items (n, P) vs the logged (item, slot) pairs (m,), (m,).

    mass (n, P, L): the target's probability of each of its items at each slot (a stochastic
    target); None for deterministic slates, where item j of a row is at slot j. Shares are of
    the target's mass: the expected share of its shown (item, slot) pairs the log lacks."""
    target = np.asarray(target).astype(str)
    n, width = target.shape
    if mass is None:
        mass = _one_hot_mass(target)
    valid = target != _PAD
    mass = np.where(valid[:, :, None], np.asarray(mass, dtype=np.float64), 0.0)
    logged_items = np.asarray(logged_items).astype(str)
    logged_positions = np.asarray(logged_positions, dtype=np.int64)
    codes, inverse = np.unique(np.concatenate([target.ravel(), logged_items]), return_inverse=True)
    t_code, l_code = inverse[: n * width].reshape(n, width), inverse[n * width :]
    item_seen = np.isin(t_code, l_code)  # (n, P)
    slots = mass.shape[2]
    stride = max(slots, int(logged_positions.max(initial=0)) + 1)
    pair_seen = np.isin(t_code[:, :, None] * stride + np.arange(slots), l_code * stride + logged_positions)
    total = max(float(mass.sum()), 1e-300)
    unseen = (mass.sum(axis=2) > 0) & ~item_seen
    return SupportReport(
        item_share=float((mass.sum(axis=2) * ~item_seen).sum() / total),
        pair_share=float((mass * ~pair_seen).sum() / total),
        target_slots=int(round(float(mass.sum()))),
        examples=[str(x) for x in codes[np.unique(t_code[unseen])][:5]],
    )


_PAD = ""


def _one_hot_mass(target: np.ndarray) -> np.ndarray:
    """(n, L, L) marginals of deterministic slates (n, L): item j at slot j with probability 1."""
    n, width = target.shape
    return np.broadcast_to(np.eye(width), (n, width, width)) * (target != _PAD)[:, :, None]


def _exam_inputs(
    theta: np.ndarray,
    slot_propensities: np.ndarray,
    mass: np.ndarray,
    filled: np.ndarray,
    positions: np.ndarray,
    request_ids: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """pi_exam, pscore_exam, theta_logged, theta_target (m,) for the PBM estimators.

    theta (T,) examination per slot (rescaled to max 1: only ratios matter); slot_propensities
    (m, S); mass (m, L) the target's probability of each row's logged item at each slot;
    filled (m, L) the probability that the target fills each slot for that row's user; a slot
    beyond theta's range gets the last theta."""
    theta = np.asarray(theta, dtype=np.float64) / np.max(theta)

    def at(k: np.ndarray) -> np.ndarray:
        return theta[np.clip(k, 0, len(theta) - 1)]

    theta_l = at(np.arange(mass.shape[1]))
    width = slot_propensities.shape[1]
    if request_ids is None:
        per_request = np.full(len(positions), width)
    else:
        _, inverse, counts = np.unique(np.asarray(request_ids), return_inverse=True, return_counts=True)
        per_request = counts[inverse]
    return {
        "pi_exam": np.minimum(mass @ theta_l, 1.0),
        "pscore_exam": slot_propensities @ at(np.arange(width)),
        "theta_logged": at(np.asarray(positions, dtype=np.int64)),
        "theta_target": (filled @ theta_l) / per_request,
    }


def build_slate_input(
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    positions: np.ndarray,
    clicked: np.ndarray,
    propensity: np.ndarray,
    target_users: np.ndarray,
    target_slates: np.ndarray,
    reward_model: PositionBasedModel | None = None,
    item_vocab: np.ndarray | None = None,
    source: str = "impressions",
    request_ids: np.ndarray | None = None,
    slot_propensities: np.ndarray | None = None,
    theta: np.ndarray | None = None,
    target_marginals: np.ndarray | None = None,
) -> tuple[OPEInput, SupportReport]:
    """Estimator input for a target policy from a log and the target's slate (or pool) per user.

    user_ids, item_ids, positions, clicked, propensity: (m,) logged impressions.
    target_users (u,), target_slates (u, L): the target's slate for each user ('' pads).
    reward_model + item_vocab: PBM fitted on item indices of `item_vocab` (sorted ids), for DM/DR.
    request_ids (m,): the logged slate of each impression, for the pseudo-inverse estimator.
    slot_propensities (m, S): the logging policy's probability of each logged item at every slot;
    with theta (the examination per slot, e.g. `examination_from_log`) it adds the inputs of the
    item-level PBM estimators.
    target_marginals (u, P, L): a stochastic target, e.g. Plackett-Luce over each user's ranked
    pool `target_slates` (u, P): its probability of pool item p at slot k. Then
    pi_j = target_marginals[user_j, p(item_j), position_j] and DR's q_target is the target's
    expected q at the logged slot; without it the target is deterministic,
    pi_j = 1[target_slates[user_j, position_j] == item_j]. Users missing from target_users
    raise, since they would silently drop out of the estimate.
    """
    user_ids, item_ids = np.asarray(user_ids).astype(str), np.asarray(item_ids).astype(str)
    positions = np.asarray(positions, dtype=np.int64)
    target_users = np.asarray(target_users).astype(str)
    target_slates = np.asarray(target_slates).astype(str)
    order = np.argsort(target_users)
    sorted_users = target_users[order]
    loc = np.searchsorted(sorted_users, user_ids)
    loc = np.minimum(loc, len(sorted_users) - 1)
    found = sorted_users[loc] == user_ids
    if not found.all():
        raise OPEInputError(
            f"{source}: no target slate for {_rows(~found)} (users "
            f"{np.unique(user_ids[~found])[:5].tolist()})"
        )
    row = order[loc]
    if target_marginals is None:  # deterministic slates: item j of a row at slot j
        target_marginals = _one_hot_mass(target_slates)
    pool_mass = np.asarray(target_marginals, dtype=np.float64)  # (u, P, L)
    if pool_mass.shape[:2] != target_slates.shape:
        raise ValueError(
            f"target_marginals has shape {pool_mass.shape}; expected {target_slates.shape} + (L,)"
        )
    m, width = len(item_ids), pool_mass.shape[2]
    _, code = np.unique(np.concatenate([target_slates.ravel(), item_ids]), return_inverse=True)
    pool_code = np.where(target_slates == _PAD, -1, code[: target_slates.size].reshape(target_slates.shape))
    match = pool_code[row] == code[target_slates.size :, None]  # (m, P): the logged item in the pool
    has = match.any(axis=1)
    mass = np.where(has[:, None], pool_mass[row, match.argmax(axis=1)], 0.0)  # (m, L): item per slot
    in_slate = positions < width
    slot = np.minimum(positions, width - 1)
    pi = np.where(in_slate, mass[np.arange(m), slot], 0.0)
    q_logged = q_target = None
    if reward_model is not None:
        if item_vocab is None:
            raise ValueError("item_vocab is required with a reward model")

        def index(ids: np.ndarray) -> np.ndarray:
            pos = np.minimum(np.searchsorted(item_vocab, ids), len(item_vocab) - 1)
            return np.where(item_vocab[pos] == ids, pos, -1)

        q_logged = reward_model.q(index(item_ids), positions)
        # E_target[q(item at the logged slot)] = sum_p pi(p, k_j) q(p, k_j) over the user's pool
        at_slot = pool_mass[row[:, None], np.arange(pool_mass.shape[1])[None, :], slot[:, None]]  # (m, P)
        pool_idx = index(target_slates)[row]  # (m, P)
        q_pool = reward_model.q(pool_idx, positions[:, None])
        q_target = np.where(in_slate, (at_slot * q_pool).sum(axis=1), 0.0)
    exam = None
    if slot_propensities is not None and theta is not None:
        exam = _exam_inputs(
            theta, np.asarray(slot_propensities, dtype=np.float64), mass, pool_mass.sum(axis=1)[row],
            positions, request_ids,
        )
    data = check_ope_inputs(
        clicked,
        propensity,
        pi,
        cluster=user_ids,
        q_logged=q_logged,
        q_target=q_target,
        source=source,
        slate=request_ids,
        exam=exam,
    )
    users = np.unique(row)
    support = support_deficiency(target_slates[users], item_ids, positions, pool_mass[users])
    return data, support
