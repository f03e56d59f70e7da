"""A tiny synthetic shop for the ranker's tests: items, CLIP-like vectors and a click log whose
clicks follow a hidden taste (category + vector affinity) times a position bias."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from recsys.data import columns as C


def make_world(n_items: int = 60, n_users: int = 40, n_requests: int = 600, slate: int = 6,
               dim: int = 16, seed: int = 0) -> dict[str, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    cats = ["shoes", "bags", "hats", "coats"]
    item_cat = rng.integers(0, len(cats), n_items)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    items = pl.DataFrame({
        C.ITEM_ID: [f"i{i}" for i in range(n_items)],
        C.TITLE: [f"item {i}" for i in range(n_items)],
        C.DESCRIPTION: [f"a {cats[c]}" for c in item_cat],
        C.CATEGORY: [cats[c] for c in item_cat],
        C.PRICE: rng.uniform(5, 100, n_items).round(2),
        C.IMAGE_URI: [None] * n_items,
        C.IMAGE_SOURCE: rng.choice(["original", "generated", "none"], n_items).tolist(),
        C.CREATED_AT: [start - timedelta(days=int(d)) for d in rng.integers(1, 60, n_items)],
    })
    centers = rng.normal(size=(len(cats), dim))
    vecs = centers[item_cat] + 0.5 * rng.normal(size=(n_items, dim))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    emb = pl.DataFrame({C.ITEM_ID: items[C.ITEM_ID], C.EMBEDDING: vecs.astype(np.float32).tolist(),
                        C.IMAGE_SOURCE: items[C.IMAGE_SOURCE], C.MODEL_VERSION: ["clip/v1"] * n_items})
    taste = rng.integers(0, len(cats), n_users)
    rows = []
    for r in range(n_requests):
        u = int(rng.integers(n_users))
        ts = start + timedelta(hours=int(r * 24 * 14 / n_requests))
        shown = rng.choice(n_items, slate, replace=False)
        for pos, i in enumerate(shown):
            rel = 0.7 if item_cat[i] == taste[u] else 0.05
            p_click = rel / (1 + pos) ** 0.7
            clicked = bool(rng.random() < p_click)
            rows.append((f"r{r}", f"u{u}", f"i{i}", pos, ts, clicked, 1 / slate, "random"))
    log = pl.DataFrame(rows, schema=[C.REQUEST_ID, C.USER_ID, C.ITEM_ID, C.POSITION, C.EVENT_TIMESTAMP,
                                     C.CLICKED, C.PROPENSITY, C.POLICY], orient="row")
    log = log.with_columns(pl.col(C.POSITION).cast(pl.Int32),
                           pl.col(C.EVENT_TIMESTAMP).cast(pl.Datetime("us", "UTC")))
    return {"items": items, "item_embeddings": emb, "impressions": log}


@pytest.fixture(scope="session")
def world() -> dict[str, pl.DataFrame]:
    return make_world()
