"""The item-level PBM estimators: by hand, against a world with known values, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.evaluation.ope import (
    PBMDR,
    PBMIPS,
    PBMSNIPS,
    OPEInputError,
    build_slate_input,
    check_ope_inputs,
    examination_from_log,
    fit_position_based_model,
)


def _slot_propensities(world, log: dict) -> np.ndarray:
    """mu(item, j) at every slot j of each logged row: (1 - eps) 1[base_j = item] + eps / n_items."""
    base = world.base[None, :] == log["item"][:, None]
    return (1 - world.eps) * base + world.eps / world.n_items


def _input(world, log: dict, target: np.ndarray, theta: np.ndarray):
    vocab = np.array([f"i{j:03d}" for j in range(world.n_items)])
    users = np.array([f"u{u}" for u in range(world.n_users)])
    model = fit_position_based_model(log["item"], log["position"], log["clicked"], world.n_items)
    request = log["user"]  # one request per user
    return build_slate_input(
        users[log["user"]], vocab[log["item"]], log["position"], log["clicked"], log["propensity"],
        users, vocab[target], reward_model=model, item_vocab=vocab, request_ids=request,
        slot_propensities=_slot_propensities(world, log), theta=theta,
    )[0]


def test_pbm_estimators_by_hand() -> None:
    # row 0: clicked, the target puts the item where examination is 0.5, the log 0.25 -> w = 2
    # row 1: not clicked, the target never shows the item -> w = 0
    data = check_ope_inputs(
        [1, 0], [0.2, 0.3], [0.0, 0.0], q_logged=[0.2, 0.1], q_target=[0.3, 0.3],
        exam={"pi_exam": [0.5, 0.0], "pscore_exam": [0.25, 0.5], "theta_logged": [1.0, 0.5],
              "theta_target": [0.75, 0.75]},
    )
    assert PBMIPS().estimate(data) == pytest.approx((2 * 1 + 0) / 2)
    # sum w c / sum w theta_logged / theta_target = 2 / (2 * 1 / 0.75)
    assert PBMSNIPS().estimate(data) == pytest.approx(0.75)
    # mean of q_target + w (c - q_logged) = (0.3 + 2 * 0.8 + 0.3 + 0) / 2
    assert PBMDR().estimate(data) == pytest.approx(1.1)
    assert PBMIPS().effective_sample_size(data) == pytest.approx(1.0)


def test_pbm_estimators_recover_the_true_value(world) -> None:
    log = world.log(seed=2)
    theta = examination_from_log(log["position"], log["clicked"], log["propensity"])
    strong = np.argsort(-world.relevance, axis=1)[:, : world.slate]
    data = _input(world, log, strong, theta)
    truth = world.value(strong)
    for est in (PBMIPS(), PBMSNIPS(), PBMDR()):
        assert est.estimate(data) == pytest.approx(truth, rel=0.15), est.name
    # item-level weights: far more effective samples than the item-slot ones for the same target
    assert PBMIPS().effective_sample_size(data) > 3 * data.effective_sample_size


def test_examination_from_a_randomised_log(world) -> None:
    log = world.log(seed=4)
    theta = examination_from_log(log["position"], log["clicked"], log["propensity"])
    np.testing.assert_allclose(theta, world.theta / world.theta[0], atol=0.12)
    assert (np.diff(theta) <= 0).all()  # pooled to non-increasing
    with pytest.raises(OPEInputError, match="first slot"):  # no clicks: nothing to scale by
        examination_from_log(np.array([0, 1]), np.array([0, 0]), np.array([0.5, 0.5]))


def test_examination_inputs_come_together_and_are_checked() -> None:
    exam = {"pi_exam": [0.5], "pscore_exam": [0.25], "theta_logged": [1.0], "theta_target": [1.0]}
    with pytest.raises(OPEInputError, match="come together"):
        check_ope_inputs([1], [0.2], [0.0], exam={"pi_exam": [0.5]})
    with pytest.raises(OPEInputError, match="pscore_exam must be finite and > 0"):
        check_ope_inputs([1], [0.2], [0.0], exam={**exam, "pscore_exam": [0.0]})
    with pytest.raises(OPEInputError, match="theta_logged"):
        check_ope_inputs([1], [0.2], [0.0], exam={**exam, "theta_logged": [np.nan]})
    plain = check_ope_inputs([1], [0.2], [0.0])
    with pytest.raises(OPEInputError, match="slot_propensities"):
        PBMIPS().estimate(plain)
