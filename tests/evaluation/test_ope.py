"""Off-policy estimators against a world whose true policy values are known exactly."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.evaluation.ab import compare_offline, sign_agrees
from recsys.evaluation.ope import (
    IPS,
    SNIPS,
    ClippedIPS,
    DirectMethod,
    DoublyRobust,
    OPEInputError,
    build_slate_input,
    check_ope_inputs,
    default_estimators,
    fit_position_based_model,
    support_deficiency,
)


def _input(world, log: dict, target: np.ndarray, model: bool = True):
    """Estimator input for per-user target slates (U, L) of item indices."""
    vocab = np.array([f"i{j:03d}" for j in range(world.n_items)])
    items = vocab[log["item"]]
    reward_model = None
    if model:
        reward_model = fit_position_based_model(log["item"], log["position"], log["clicked"], world.n_items)
    users = np.array([f"u{u}" for u in range(world.n_users)])
    return build_slate_input(
        users[log["user"]],
        items,
        log["position"],
        log["clicked"],
        log["propensity"],
        users,
        vocab[target],
        reward_model=reward_model,
        item_vocab=vocab,
    )


def _targets(world) -> tuple[np.ndarray, np.ndarray]:
    """A weak (global popularity) and a strong (personal top-L) target, (U, L) each."""
    pop = np.argsort(-world.relevance.mean(axis=0))[: world.slate]
    weak = np.broadcast_to(pop[::-1], (world.n_users, world.slate)).copy()
    strong = np.argsort(-world.relevance, axis=1)[:, : world.slate]
    return weak, strong


def test_estimators_are_close_to_the_true_value(world) -> None:
    log = world.log(seed=1)
    _, strong = _targets(world)
    data, support = _input(world, log, strong)
    truth = world.value(strong)
    assert not support.deficient
    for est in (IPS(), SNIPS(), DoublyRobust()):
        assert est.estimate(data) == pytest.approx(truth, rel=0.15), est.name
    # the user-blind reward model is biased for a personalised target; DR fixes that
    assert abs(DoublyRobust().estimate(data) - truth) < abs(DirectMethod().estimate(data) - truth)


def test_snips_and_dr_intervals_cover_truth_in_most_runs_and_sign_agrees(world_factory) -> None:
    covered = {"snips": 0, "dr": 0}
    agree = 0
    runs = 5
    for seed in range(runs):
        world = world_factory(n_users=8000, seed=seed)
        log = world.log(seed=100 + seed)
        weak, strong = _targets(world)
        dw, _ = _input(world, log, weak)
        ds, _ = _input(world, log, strong)
        tw, ts = world.value(weak), world.value(strong)
        assert ts / tw - 1 > 0.3  # the lift is large
        results = compare_offline(dw, ds, [SNIPS(), DoublyRobust()], n_boot=200, seed=seed)
        for r in results:
            covered[r.estimator] += r.control.covers(tw) and r.treatment.covers(ts)
        agree += sign_agrees(results[1].delta, ts - tw)
    assert covered["snips"] >= runs - 1 and covered["dr"] >= runs - 1, covered
    assert agree == runs


def test_dr_with_the_true_reward_model_has_a_narrower_interval(world) -> None:
    log = world.log(seed=2)
    _, strong = _targets(world)
    data, _ = _input(world, log, strong, model=False)
    u, i, k = log["user"], log["item"], log["position"]
    q_logged = world.relevance[u, i] * world.theta[k]
    q_target = world.relevance[u, strong[u, k]] * world.theta[k]
    exact = check_ope_inputs(data.reward, data.pscore, data.pi, u, q_logged, q_target)
    dr, ips = DoublyRobust().interval(exact, 200), IPS().interval(exact, 200)
    assert dr.high - dr.low < ips.high - ips.low
    assert dr.covers(world.value(strong))


def test_clipping_lowers_the_estimate_and_every_default_estimator_runs(world) -> None:
    log = world.log(seed=3)
    _, strong = _targets(world)
    data, _ = _input(world, log, strong)
    assert ClippedIPS(clip=5.0).estimate(data) < IPS().estimate(data)
    names = [e.name for e in default_estimators()]
    assert names == ["ips", "clipped_ips", "snips", "dm", "dr"]
    for est in default_estimators():
        iv = est.interval(data, 100)
        assert iv.low <= iv.estimate <= iv.high


def test_pbm_em_recovers_the_examination_curve(world) -> None:
    log = world.log(seed=4)
    model = fit_position_based_model(log["item"], log["position"], log["clicked"], world.n_items)
    ratio = model.theta / model.theta[0]
    np.testing.assert_allclose(ratio, world.theta / world.theta[0], atol=0.12)


@pytest.mark.parametrize(
    ("pscore", "message"),
    [
        ([0.5, np.nan, 0.2], "propensity is missing in 1 rows, e.g. rows [1]"),
        ([0.5, 0.0, 0.2], "must be > 0"),
        ([0.5, 1.5, 0.2], "must be <= 1, got > 1 in 1 rows, e.g. rows [1]"),
    ],
)
def test_bad_propensities_are_rejected_with_rows(pscore: list[float], message: str) -> None:
    with pytest.raises(OPEInputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_ope_inputs([0, 1, 0], pscore, [1, 0, 1])


def test_other_bad_inputs_are_rejected() -> None:
    with pytest.raises(OPEInputError, match="reward"):
        check_ope_inputs([0, 2, 0], [0.5] * 3, [1, 0, 1])
    with pytest.raises(OPEInputError, match="pscore has shape"):
        check_ope_inputs([0, 1, 0], [0.5] * 2, [1, 0, 1])
    with pytest.raises(OPEInputError, match="needs reward-model"):
        DoublyRobust().estimate(check_ope_inputs([0, 1], [0.5, 0.5], [1, 0]))


def test_support_deficiency_is_reported_not_ignored(world_factory) -> None:
    logged_items = np.array(["a", "b", "c", "a"])
    logged_pos = np.array([0, 1, 2, 1])
    target = np.array([["a", "b"], ["z", "a"]])  # z never logged; (a, 1) logged; (b, 1) logged
    rep = support_deficiency(target, logged_items, logged_pos)
    assert rep.item_share == pytest.approx(0.25)
    assert rep.pair_share == pytest.approx(0.25)
    assert rep.deficient and "z" in rep.describe()
    world = world_factory(n_users=200, n_items=20)
    log = world.log(seed=0)
    users = np.array([f"u{u}" for u in range(world.n_users)])
    with pytest.raises(OPEInputError, match="no target slate"):
        build_slate_input(
            users[log["user"]],
            log["item"],
            log["position"],
            log["clicked"],
            log["propensity"],
            users[:10],
            np.zeros((10, 5), dtype=str),
        )
