"""Off-policy estimates against the embedded world's online A/B (the simulator's ground truth).

The log is drawn here from the truth API: the world's own Plackett-Luce logging policy
(`logging_slates`), its exact `slot_propensities`, and clicks from `click_probability`. The
truth is `simulate_online(...).expected_ctr`.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np

from recsys.data.config import WorldConfig
from recsys.data.truth import to_us
from recsys.data.world import build_truth
from recsys.evaluation.ab import compare_offline, sign_agrees
from recsys.evaluation.ope import (
    PBMIPS,
    PBMSNIPS,
    SNIPS,
    DoublyRobust,
    build_slate_input,
    examination_from_log,
    fit_position_based_model,
)

SLATE = 5


def _log(truth, n_requests: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = truth.user_activity / truth.user_activity.sum()
    user_ids = truth.user_ids[rng.choice(truth.n_users, size=n_requests, p=p)].astype(str)
    items = truth.logging_slates(user_ids, truth.end, seed=seed).ravel()
    flat_users = np.repeat(user_ids, SLATE)
    positions = np.tile(np.arange(SLATE), n_requests)
    every_slot = truth.slot_propensities(flat_users, items, truth.end)
    clicks = rng.random(items.size) < truth.click_probability(flat_users, items, positions)
    return {
        "user": flat_users,
        "item": items,
        "position": positions,
        "clicked": clicks,
        "propensity": every_slot[np.arange(items.size), positions],
        "slot_propensities": every_slot,
        "request": np.repeat(np.arange(n_requests), SLATE),
    }


def _policies(truth):
    """A fixed slate for everyone (the best legacy scores: "popular") and the oracle (true
    relevance), as policies."""
    weak = truth.item_ids[np.argsort(-truth.legacy_base)[:SLATE]].astype(str)

    def control(user_ids, as_of):
        return np.broadcast_to(weak, (len(user_ids), SLATE))

    def treatment(user_ids, as_of):
        u = truth.user_index(user_ids)
        rel = truth.relevance_idx(u[:, None], np.arange(truth.n_items)[None, :])
        return truth.item_ids[np.argsort(-rel, axis=1)[:, :SLATE]].astype(str)

    return control, treatment


def test_estimators_cover_the_online_truth_and_the_ab_sign_agrees() -> None:
    runs = 5
    estimators = [SNIPS(), DoublyRobust(), PBMIPS(), PBMSNIPS()]
    covered, agree = dict.fromkeys((e.name for e in estimators), 0), 0
    for seed in range(runs):
        cfg = WorldConfig(items=40, users=3000, days=7, slate_size=SLATE, images=False)
        truth, _ = build_truth(cfg, seed)
        log = _log(truth, n_requests=12_000, seed=seed)
        control, treatment = _policies(truth)
        users = np.unique(log["user"])
        vocab = truth.item_ids.astype(str)
        item_idx = truth.item_index(log["item"])
        model = fit_position_based_model(item_idx, log["position"], log["clicked"], truth.n_items)
        history = _log(truth, n_requests=40_000, seed=seed + 100)  # examination from earlier days
        theta = examination_from_log(history["position"], history["clicked"], history["propensity"])
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
                request_ids=log["request"],
                slot_propensities=log["slot_propensities"],
                theta=theta,
            )[0]
            for pol in (control, treatment)
        ]
        true = [
            truth.simulate_online(pol, 20_000, seed=seed, slate_size=SLATE).expected_ctr
            for pol in (control, treatment)
        ]
        assert true[1] / true[0] - 1 > 0.5  # a large true lift
        results = compare_offline(inputs[0], inputs[1], estimators, n_boot=200, seed=seed)
        for r in results:
            covered[r.estimator] += r.control.covers(true[0]) and r.treatment.covers(true[1])
        agree += all(sign_agrees(r.delta, true[1] - true[0]) for r in results)
    assert all(n >= runs - 1 for n in covered.values()), covered
    assert agree == runs


def test_full_support_of_the_world() -> None:
    """Plackett-Luce over the candidates: every available candidate can show in every slot, so
    any target slate of available items is supported; a smaller candidate set leaves the rest out."""
    cfg = WorldConfig(items=40, users=500, days=7, slate_size=SLATE, images=False)
    truth, _ = build_truth(cfg, 0)
    users = truth.user_ids[:50].astype(str)
    available = truth.item_ids[: int(truth.n_available(to_us(truth.end - timedelta(days=1))))]
    pairs_u, pairs_i = np.repeat(users, len(available)), np.tile(available, len(users))
    assert (truth.slot_propensities(pairs_u, pairs_i, truth.end) > 0).all()
    narrow, _ = build_truth(cfg.model_copy(update={"candidates": 15}), 0)
    mu = narrow.slot_propensities(pairs_u, pairs_i, truth.end)
    shown = (mu > 0).any(axis=1).reshape(len(users), -1).sum(axis=1)
    assert (shown == 15).all() and ((mu > 0).all(axis=1) == (mu > 0).any(axis=1)).all()


def _explored_run(seed: int):
    """(true CTR of the explored target, true CTR of its top 5, PBM-SNIPS interval) on one world."""
    from recsys.evaluation.policy import StochasticSlates

    truth, _ = build_truth(WorldConfig(items=40, users=3000, days=7, slate_size=SLATE, images=False), seed)
    log = _log(truth, n_requests=12_000, seed=seed)
    users = np.unique(log["user"])
    shown = int(truth.n_available(to_us(truth.end - timedelta(days=1))))  # items the log can show
    rel = truth.relevance_idx(truth.user_index(users)[:, None], np.arange(shown)[None, :])
    top = np.argsort(-rel, axis=1)[:, :15]
    ids = truth.item_ids[top].astype(str)
    scored = [list(zip(i, np.log(r[t]), strict=True)) for i, t, r in zip(ids, top, rel, strict=True)]
    target = StochasticSlates.of(scored, temperature=1.0, slots=SLATE, pool=15)
    history = _log(truth, n_requests=40_000, seed=seed + 100)
    theta = examination_from_log(history["position"], history["clicked"], history["propensity"])
    data, support = build_slate_input(
        log["user"], log["item"], log["position"], log["clicked"], log["propensity"], users,
        target.items, request_ids=log["request"], slot_propensities=log["slot_propensities"],
        theta=theta, target_marginals=target.marginals,
    )
    assert support.pair_share == 0.0
    rng, row = np.random.default_rng(seed), {u: i for i, u in enumerate(users)}
    requests = log["user"][::SLATE]  # the logged traffic, served live

    def explored(user_ids, as_of):
        return target.sample(np.array([row[u] for u in user_ids]), rng)

    def greedy(user_ids, as_of):
        return target.items[[row[u] for u in user_ids], :SLATE]

    true, top5 = (
        truth.simulate_online(pol, len(requests), seed=seed, slate_size=SLATE, users=requests).expected_ctr
        for pol in (explored, greedy)
    )
    return true, top5, PBMSNIPS().interval(data, n_boot=200, seed=seed)


def test_a_stochastic_target_is_estimated_as_it_would_be_served() -> None:
    """The target explores like the server: Plackett-Luce over its top 15 (true relevance as
    scores); the truth draws a slate per request. Estimates built from its exact marginals
    cover that truth, which is well below its deterministic top 5's."""
    runs, covered = 4, 0
    for seed in range(runs):
        true, top5, interval = _explored_run(seed)
        assert top5 > 1.1 * true  # exploration costs clicks: the two targets differ
        covered += interval.covers(true)
    assert covered >= runs - 1
