"""Estimators for large action spaces and whole slates, each checked against values derived by hand.

SNDR (self-normalised DR), MIPS (marginalised IPS over item clusters) and the pseudo-inverse
slate estimator, on inputs of a few rows; then all of them through the same clustered bootstrap.
"""

from __future__ import annotations

import numpy as np
import pytest

from recsys.evaluation.ab import compare_offline
from recsys.evaluation.ope import (
    IPS,
    MIPS,
    SNDR,
    DoublyRobust,
    NoOverlapError,
    OPEInputError,
    PseudoInverse,
    check_ope_inputs,
    cluster_probability,
)

# ---------------------------------------------------------------------------------------------
# SNDR


def _sndr_input():
    # w = pi / pscore = [1/0.5, 1/0.5, 0/0.25, 1/1] = [2, 2, 0, 1]
    return check_ope_inputs(
        reward=[1, 0, 1, 0],
        pscore=[0.5, 0.5, 0.25, 1.0],
        pi=[1, 1, 0, 1],
        cluster=["a", "a", "b", "c"],
        q_logged=[0.5, 0.2, 0.4, 0.1],
        q_target=[0.3, 0.3, 0.6, 0.1],
    )


def test_sndr_by_hand() -> None:
    data = _sndr_input()
    # mean(q_target) = (0.3 + 0.3 + 0.6 + 0.1) / 4 = 0.325
    # sum w (c - q_logged) = 2 * 0.5 + 2 * (-0.2) + 0 * 0.6 + 1 * (-0.1) = 0.5;  sum w = 5
    # SNDR = 0.325 + 0.5 / 5 = 0.425;  DR = 0.325 + 0.5 / 4 = 0.45
    assert SNDR().estimate(data) == pytest.approx(0.425)
    assert DoublyRobust().estimate(data) == pytest.approx(0.45)
    num, den = SNDR().terms(data)
    assert num.shape == den.shape == (4, 2)
    np.testing.assert_allclose(den[:, 1], [2, 2, 0, 1])


def test_sndr_interval_is_a_bootstrap_of_the_sum_of_its_two_ratios() -> None:
    data = _sndr_input()
    iv = SNDR().interval(data, n_boot=400, seed=1)
    assert iv.estimate == pytest.approx(0.425)
    # users a (rows 0, 1), b (row 2), c (row 3). In any resample the mean of q_target lies in
    # [0.1, 0.6] and the correction sum w (c - q) / sum w is a weighted mean of a's 0.6 / 4 = 0.15
    # and c's -0.1 / 1 (b has w = 0), so in [-0.1, 0.15]: every replicate lies in [0, 0.75]
    assert 0.0 <= iv.low <= iv.estimate <= iv.high <= 0.75


def test_sndr_needs_a_reward_model_and_overlap() -> None:
    with pytest.raises(OPEInputError, match="needs reward-model"):
        SNDR().estimate(check_ope_inputs([0, 1], [0.5, 0.5], [1, 0]))
    no_overlap = check_ope_inputs([0, 1], [0.5, 0.5], [0, 0], q_logged=[0.1, 0.1], q_target=[0.2, 0.2])
    with pytest.raises(NoOverlapError, match="sndr"):
        SNDR().estimate(no_overlap)


# ---------------------------------------------------------------------------------------------
# MIPS

# four items in two clusters {0, 1} and {2, 3}; one slot; the logging policy is uniform over the
# items (mu = 1/4 each, so p_mu(cluster) = 1/2); the target always shows item 1.
ITEM_CLUSTER = np.array([0, 0, 1, 1])
LOGGED = np.array([0, 1, 2, 3])
CLICKED = np.array([1, 0, 1, 0])
LOGGING = np.full((4, 4), 0.25)
TARGET = np.tile([0.0, 1.0, 0.0, 0.0], (4, 1))


def test_cluster_probability_by_hand() -> None:
    np.testing.assert_allclose(cluster_probability(LOGGING, ITEM_CLUSTER, LOGGED), [0.5] * 4)
    np.testing.assert_allclose(cluster_probability(TARGET, ITEM_CLUSTER, LOGGED), [1, 1, 0, 0])
    with pytest.raises(OPEInputError, match="must be"):
        cluster_probability(LOGGING[:, :3], ITEM_CLUSTER, LOGGED)


def test_mips_by_hand_reweights_the_cluster_not_the_item() -> None:
    data = check_ope_inputs(
        CLICKED,
        pscore=[0.25] * 4,
        pi=TARGET[np.arange(4), LOGGED],  # [0, 1, 0, 0]
        pi_cluster=cluster_probability(TARGET, ITEM_CLUSTER, LOGGED),
        pscore_cluster=cluster_probability(LOGGING, ITEM_CLUSTER, LOGGED),
    )
    # IPS: weights [0, 4, 0, 0], the one matching row was not clicked -> 0
    assert IPS().estimate(data) == 0.0
    # MIPS: weights [1/0.5, 1/0.5, 0, 0] = [2, 2, 0, 0]; (2 * 1 + 2 * 0) / 4 = 0.5, the cluster's CTR
    assert MIPS().estimate(data) == pytest.approx(0.5)
    # ESS: IPS 4^2 / 4^2 = 1; MIPS (2 + 2)^2 / (4 + 4) = 2
    assert IPS().effective_sample_size(data) == pytest.approx(1.0)
    assert MIPS().effective_sample_size(data) == pytest.approx(2.0)


def test_mips_refuses_missing_or_inconsistent_cluster_probabilities() -> None:
    with pytest.raises(OPEInputError, match="mips needs cluster probabilities"):
        MIPS().estimate(check_ope_inputs([1, 0], [0.5, 0.5], [1, 0]))
    with pytest.raises(OPEInputError, match="come together"):
        check_ope_inputs([1, 0], [0.5, 0.5], [1, 0], pi_cluster=[1, 0])
    # a cluster cannot be less likely than the logged item in it
    with pytest.raises(OPEInputError, match=r"pscore_cluster .* must lie in \[pscore, 1\]"):
        check_ope_inputs([1, 0], [0.5, 0.5], [1, 0], pi_cluster=[1, 0], pscore_cluster=[0.4, 0.6])
    with pytest.raises(OPEInputError, match=r"pi_cluster .* must lie in \[pi, 1\]"):
        check_ope_inputs([1, 0], [0.5, 0.5], [1, 0], pi_cluster=[0.5, 0], pscore_cluster=[0.5, 0.6])


# ---------------------------------------------------------------------------------------------
# pseudo-inverse slate estimator

# two slots, product logging: slot 0 shows A or B, slot 1 shows C or D, each with probability
# 1/2 independently; the target always shows [A, C].
SLATES = [("A", "D"), ("A", "C"), ("B", "D"), ("B", "C")]


def _pi_input(clicks: list[tuple[int, int]]):
    items = [i for s in SLATES for i in s]
    target = ["A", "C"] * len(SLATES)
    return check_ope_inputs(
        reward=[c for pair in clicks for c in pair],
        pscore=[0.5] * 8,
        pi=[float(a == b) for a, b in zip(items, target, strict=True)],
        cluster=np.repeat(["u1", "u2", "u3", "u4"], 2),
        slate=np.repeat(["r1", "r2", "r3", "r4"], 2),
    )


def test_pseudo_inverse_by_hand() -> None:
    data = _pi_input([(1, 0), (0, 1), (1, 1), (0, 0)])
    # W = sum_k pi/mu - (L - 1): [A,D] 2 + 0 - 1 = 1; [A,C] 2 + 2 - 1 = 3; [B,D] -1; [B,C] 1
    np.testing.assert_allclose(PseudoInverse().weights(data), np.repeat([1, 3, -1, 1], 2))
    # V = (1 * 1 + 3 * 1 + (-1) * 2 + 1 * 0) / 8 = 0.25; per-slot IPS: (2 + 2) / 8 = 0.5
    assert PseudoInverse().estimate(data) == pytest.approx(0.25)
    assert IPS().estimate(data) == pytest.approx(0.5)


def test_pseudo_inverse_is_exactly_unbiased_for_a_linear_slate_reward() -> None:
    """Averaged over the four equally likely slates, R * W / L recovers the target's per-slot value
    (r(A) + r(C)) / 2 for any slot rewards: E[W R] = r(A) + r(C) (derivation in the docstring)."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        r = dict(zip("ABCD", rng.random(4), strict=True))
        weights = PseudoInverse().weights(_pi_input([(0, 0)] * 4))[::2]
        expected_value = np.mean([w * (r[a] + r[b]) / 2 for w, (a, b) in zip(weights, SLATES, strict=True)])
        assert expected_value == pytest.approx((r["A"] + r["C"]) / 2)


def test_pseudo_inverse_needs_the_slate_of_every_row() -> None:
    with pytest.raises(OPEInputError, match="pi_slate needs the slate"):
        PseudoInverse().estimate(check_ope_inputs([1, 0], [0.5, 0.5], [1, 0]))
    with pytest.raises(OPEInputError, match="slate .* id is missing"):
        check_ope_inputs([1, 0], [0.5, 0.5], [1, 0], slate=[1.0, np.nan])


# ---------------------------------------------------------------------------------------------
# one bootstrap path for all


def test_new_estimators_run_through_the_paired_clustered_bootstrap() -> None:
    rng = np.random.default_rng(3)
    n_users, n_items, width = 600, 8, 2
    cluster_of = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    users = np.repeat(np.arange(n_users), width)
    slates = np.stack([rng.choice(n_items, width, replace=False) for _ in range(n_users)])
    logged = slates.ravel()
    clicked = rng.random(logged.size) < 0.1 + 0.05 * cluster_of[logged]
    mu_item = np.full(logged.size, 1 / n_items)  # uniform marginal per slot
    logging = np.full((logged.size, n_items), 1 / n_items)

    def arm(target_items: list[int]):
        target = np.zeros((logged.size, n_items))
        target[np.arange(logged.size), np.tile(target_items, n_users)] = 1.0
        return check_ope_inputs(
            clicked,
            mu_item,
            target[np.arange(logged.size), logged],
            cluster=users,
            q_logged=np.full(logged.size, 0.15),
            q_target=np.full(logged.size, 0.15),
            pi_cluster=cluster_probability(target, cluster_of, logged),
            pscore_cluster=cluster_probability(logging, cluster_of, logged),
            slate=users,
        )

    control, treatment = arm([0, 1]), arm([6, 7])
    ests = [SNDR(), MIPS(), PseudoInverse()]
    out = compare_offline(control, treatment, ests, n_boot=200, seed=0)
    for est, o in zip(ests, out, strict=True):
        assert o.estimator == est.name
        assert o.control.estimate == pytest.approx(est.estimate(control))
        assert o.delta.delta == pytest.approx(est.estimate(treatment) - est.estimate(control))
        assert o.delta.low <= o.delta.high
    mips = out[1]
    # cluster 3 clicks at 0.25, cluster 0 at 0.10: MIPS sees the lift; its ESS beats item-level IPS
    assert mips.delta.low > 0
    assert mips.ess_treatment > IPS().effective_sample_size(treatment)
    assert np.isfinite(out[2].delta.lift)
    assert all(np.isfinite([o.control.low, o.control.high]).all() for o in out)

