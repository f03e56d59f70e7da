"""EASE (`recsys.retrieval.ease`) against a 3 × 3 example computed by hand."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy import sparse

from recsys.data import columns as C
from recsys.retrieval.ease import EaseModel, choose_lambda, click_matrix, ease_weights

# users × items: u1 clicked {a, b}, u2 {a}, u3 {a, b, c}
X = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1]], np.float32)
# G = XᵀX = [[3,2,1],[2,2,1],[1,1,1]]; with λ = 1, A = G + I = [[4,2,1],[2,3,1],[1,1,2]], det A = 13,
# P = A⁻¹ = adj(A) / 13 = [[5,-3,-1],[-3,7,-2],[-1,-2,8]] / 13, and B_ij = -P_ij / P_jj (i != j):
B_BY_HAND = np.array([[0, 3 / 7, 1 / 8],
                      [3 / 5, 0, 2 / 8],
                      [1 / 5, 2 / 7, 0]], np.float32)


def _clicks() -> pl.DataFrame:
    users, items = np.nonzero(X)
    return pl.DataFrame({C.USER_ID: [f"u{u + 1}" for u in users], C.ITEM_ID: ["abc"[i] for i in items]})


def test_weights_match_the_hand_computed_example() -> None:
    b = ease_weights(sparse.csr_matrix(X), lam=1.0)
    np.testing.assert_allclose(b, B_BY_HAND, atol=1e-6)
    # a user's scores are the summed weights from the items they clicked: u2 clicked only a
    np.testing.assert_allclose(X[1] @ b, [0, 3 / 7, 1 / 8], atol=1e-6)


def test_fit_orders_items_by_clicks_and_round_trips(tmp_path) -> None:
    clicks = pl.concat([_clicks(), _clicks().head(1)])  # a repeated click counts once
    model = EaseModel.fit(clicks, lam=1.0)
    assert model.item_ids == ["a", "b", "c"] and model.users == 3
    np.testing.assert_allclose(model.item_clicks, [3, 2, 1])
    np.testing.assert_allclose(model.weights, B_BY_HAND, atol=1e-6)
    model.save(tmp_path / "m")
    back = EaseModel.load(tmp_path / "m")
    np.testing.assert_array_equal(back.weights, model.weights)
    assert (back.item_ids, back.lam, back.users) == (model.item_ids, 1.0, 3)
    x, users = click_matrix(clicks, model.item_ids, ["u2", "nobody"])
    np.testing.assert_allclose(model.scores(x), [[0, 3 / 7, 1 / 8], [0, 0, 0]], atol=1e-6)
    assert users == ["u2", "nobody"]


def test_max_items_keeps_the_most_clicked() -> None:
    model = EaseModel.fit(_clicks(), lam=1.0, max_items=2)
    assert model.item_ids == ["a", "b"] and model.weights.shape == (2, 2)


def test_lambda_is_chosen_on_the_validation_part() -> None:
    rng = np.random.default_rng(0)
    # two tastes: users of group g click items of block g; validation holds one more click each
    rows, valid = [], []
    for u in range(60):
        block = np.arange(10) + 10 * (u % 2)
        picks = rng.choice(block, 5, replace=False)
        rows += [(f"u{u}", f"i{i}") for i in picks[:4]]
        valid.append((f"u{u}", f"i{picks[4]}"))
    train = pl.DataFrame(rows, schema=[C.USER_ID, C.ITEM_ID], orient="row")
    valid_df = pl.DataFrame(valid, schema=[C.USER_ID, C.ITEM_ID], orient="row")
    best, table = choose_lambda(train, valid_df, (1.0, 10.0, 1e6))
    assert set(table) == {1.0, 10.0, 1e6} and best == max(table, key=table.get)
    assert table[best] > 0.45  # the block structure is found (a random order scores 0.28)
    with pytest.raises(ValueError, match="λ > 0"):
        ease_weights(sparse.csr_matrix(X), lam=0.0)
