"""A small synthetic shop for the retrieval tests: items whose content vectors carry their
latent attributes, users with latent tastes, and clicks ~ softmax(taste . attributes + log
popularity). A fifth of the items appear only in the test period (cold items), and some users
click only then (cold users)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from recsys.data import columns as C
from recsys.data.splits import temporal_split

T0 = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass
class SyntheticShop:
    items: pl.DataFrame
    embeddings: pl.DataFrame
    clicks: pl.DataFrame


def make_shop(seed: int, n_items: int = 300, n_users: int = 400, clicks_per_user: int = 24,
              latent: int = 6, clip_dim: int = 32, new_share: float = 0.2) -> SyntheticShop:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n_items, latent))
    proj = rng.normal(size=(latent, clip_dim))
    clip = z @ proj + 0.5 * rng.normal(size=(n_items, clip_dim))
    clip /= np.linalg.norm(clip, axis=1, keepdims=True)
    log_pop = rng.normal(scale=1.0, size=n_items)
    new = rng.random(n_items) < new_share
    taste = rng.normal(size=(n_users, latent))
    t0 = T0
    rows = []
    for u in range(n_users):
        late_user = u % 10 == 0  # cold users: all their clicks in the test period
        times = np.sort(rng.uniform(0.9 if late_user else 0.0, 1.0, clicks_per_user))
        logits = 2.5 * taste[u] @ z.T / np.sqrt(latent) + log_pop
        for t in times:
            avail = ~new | (t >= 0.9)
            p = np.exp(logits - logits.max()) * avail
            i = int(rng.choice(n_items, p=p / p.sum()))
            rows.append((f"u{u}", f"i{i:04d}", t0 + timedelta(days=28 * float(t))))
    clicks = pl.DataFrame(rows, schema={C.USER_ID: pl.String, C.ITEM_ID: pl.String,
                                        C.EVENT_TIMESTAMP: pl.Datetime("us", "UTC")}, orient="row")
    cats = [f"c{int(np.argmax(z[i, :3]))}" for i in range(n_items)]
    items = pl.DataFrame({
        C.ITEM_ID: [f"i{i:04d}" for i in range(n_items)], C.CATEGORY: cats,
        C.PRICE: np.round(np.exp(rng.normal(3, 1, n_items)), 2),
        C.IMAGE_SOURCE: rng.choice(["original", "generated", "none"], n_items).tolist(),
    })
    embeddings = pl.DataFrame({C.ITEM_ID: items[C.ITEM_ID], C.EMBEDDING: clip.astype(np.float32).tolist()},
                              schema={C.ITEM_ID: pl.String, C.EMBEDDING: pl.List(pl.Float32)})
    return SyntheticShop(items, embeddings, clicks)


def split_shop(shop: SyntheticShop):
    """Train < day 22.4 <= valid < day 25.2 (when new items and cold users arrive) <= test."""
    return temporal_split(shop.clicks, valid_start=T0 + timedelta(days=28 * 0.8),
                          test_start=T0 + timedelta(days=28 * 0.9))
