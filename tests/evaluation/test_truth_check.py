"""Off-policy estimates against the embedded world's online A/B (the simulator's ground truth).

The log is drawn here from the truth API: the world's own epsilon-greedy logging policy
(`logging_slates` + uniform exploration per position), its exact `logging_propensity`, and
clicks from `click_probability`. The truth is `simulate_online(...).expected_ctr`.
"""

from __future__ import annotations

import numpy as np

from recsys.data.config import WorldConfig
from recsys.data.truth import to_us
from recsys.data.world import build_truth
from recsys.evaluation.ab import compare_offline, sign_agrees
from recsys.evaluation.ope import SNIPS, DoublyRobust, build_slate_input, fit_position_based_model

SLATE = 5


def _log(truth, n_requests: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = truth.user_activity / truth.user_activity.sum()
    users = rng.choice(truth.n_users, size=n_requests, p=p)
    user_ids = truth.user_ids[users].astype(str)
    det = truth.item_index(truth.logging_slates(user_ids, truth.end).ravel()).reshape(n_requests, SLATE)
    # explored slots: distinct items drawn uniformly from those outside the deterministic slate
    scores = rng.random((n_requests, truth.n_items))
    np.put_along_axis(scores, det, 2.0, axis=1)
    pool = np.argsort(scores, axis=1)[:, :SLATE]
    explore = rng.random((n_requests, SLATE)) < truth.epsilon
    items = np.where(explore, pool, det)
    positions = np.broadcast_to(np.arange(SLATE), items.shape)
    item_ids = truth.item_ids[items].astype(str)
    flat_users = np.repeat(user_ids, SLATE)
    prop = truth.logging_propensity(flat_users, item_ids.ravel(), positions.ravel(), truth.end)
    clicks = rng.random(items.size) < truth.click_probability(flat_users, item_ids.ravel(), positions.ravel())
    return {
        "user": flat_users,
        "item": item_ids.ravel(),
        "position": positions.ravel(),
        "clicked": clicks,
        "propensity": prop,
    }


def _policies(truth):
    """A weak fixed slate (lowest legacy score) and the oracle (true relevance), as policies.

    The oracle skips the user's deterministic logging slate: the logging policy never shows
    those items at another position (propensity 0), so an oracle that moved them would have
    mass no log can reweight (support deficiency; see `test_support_gap_of_the_world`)."""
    weak = truth.item_ids[np.argsort(truth.legacy_base)[:SLATE]].astype(str)

    def control(user_ids, as_of):
        return np.broadcast_to(weak, (len(user_ids), SLATE))

    def treatment(user_ids, as_of):
        u = truth.user_index(user_ids)
        rel = truth.relevance_idx(u[:, None], np.arange(truth.n_items)[None, :])
        det = truth.logging_slates_idx(u, np.full(len(u), to_us(as_of)))
        np.put_along_axis(rel, det, -1.0, axis=1)
        return truth.item_ids[np.argsort(-rel, axis=1)[:, :SLATE]].astype(str)

    return control, treatment


def test_snips_and_dr_cover_the_online_truth_and_the_ab_sign_agrees() -> None:
    runs, covered, agree = 5, {"snips": 0, "dr": 0}, 0
    for seed in range(runs):
        cfg = WorldConfig(items=40, users=3000, days=7, slate_size=SLATE, epsilon=0.5, images=False)
        truth, _ = build_truth(cfg, seed)
        log = _log(truth, n_requests=12_000, seed=seed)
        control, treatment = _policies(truth)
        users = np.unique(log["user"])
        vocab = truth.item_ids.astype(str)
        item_idx = truth.item_index(log["item"])
        model = fit_position_based_model(item_idx, log["position"], log["clicked"], truth.n_items)
        inputs = [
            build_slate_input(
                log["user"],
                log["item"],
                log["position"],
                log["clicked"],
                log["propensity"],
                users,
                pol(users, truth.end),
                reward_model=model,
                item_vocab=vocab,
            )[0]
            for pol in (control, treatment)
        ]
        true = [
            truth.simulate_online(pol, 20_000, seed=seed, slate_size=SLATE).expected_ctr
            for pol in (control, treatment)
        ]
        assert true[1] / true[0] - 1 > 0.5  # a large true lift
        results = compare_offline(inputs[0], inputs[1], [SNIPS(), DoublyRobust()], n_boot=200, seed=seed)
        for r in results:
            covered[r.estimator] += r.control.covers(true[0]) and r.treatment.covers(true[1])
        agree += all(sign_agrees(r.delta, true[1] - true[0]) for r in results)
    assert covered["snips"] >= runs - 1 and covered["dr"] >= runs - 1, covered
    assert agree == runs


def test_support_gap_of_the_world() -> None:
    """An unrestricted oracle moves logged items to positions the logging policy never uses."""
    truth, _ = build_truth(
        WorldConfig(items=40, users=500, days=7, slate_size=SLATE, epsilon=0.5, images=False), 0
    )
    users = truth.user_ids[:200].astype(str)
    u = truth.user_index(users)
    rel = truth.relevance_idx(u[:, None], np.arange(truth.n_items)[None, :])
    oracle = truth.item_ids[np.argsort(-rel, axis=1)[:, :SLATE]].astype(str)
    slots = np.broadcast_to(np.arange(SLATE), oracle.shape)
    mu = truth.logging_propensity(np.repeat(users, SLATE), oracle.ravel(), slots.ravel(), truth.end)
    assert (mu == 0).mean() > 0  # slots the log cannot reweight: IPS would be biased low there
