"""A tiny position-based-model world with exactly known propensities and policy values.

Relevance r[u, i] comes from latent tastes; examination theta_k decays with the slot. The
logging policy is epsilon-greedy over a fixed popularity slate: with probability 1 - eps it
shows the base slate, otherwise a uniformly random ordered slate of distinct items, so the
marginal item-slot propensity is exactly mu(i, k) = (1 - eps) 1[base_k = i] + eps / n_items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest


@dataclass
class PBMWorld:
    relevance: np.ndarray  # (U, I)
    theta: np.ndarray  # (L,)
    base: np.ndarray  # (L,) item indices of the logging policy's greedy slate
    eps: float

    @property
    def n_users(self) -> int:
        return self.relevance.shape[0]

    @property
    def n_items(self) -> int:
        return self.relevance.shape[1]

    @property
    def slate(self) -> int:
        return len(self.theta)

    def value(self, slates: np.ndarray) -> float:
        """True CTR per slot of per-user slates (U, L)."""
        r = np.take_along_axis(self.relevance, slates, axis=1)
        return float((r * self.theta).mean())

    def log(self, seed: int) -> dict[str, np.ndarray]:
        """One request per user; flat impression arrays (U*L,)."""
        rng = np.random.default_rng(seed)
        n_users, n_items, width = self.n_users, self.n_items, self.slate
        explore = rng.random(n_users) < self.eps
        random_slates = np.argsort(rng.random((n_users, n_items)), axis=1)[:, :width]
        slates = np.where(explore[:, None], random_slates, self.base[None, :])
        positions = np.broadcast_to(np.arange(width), slates.shape)
        mu = (1 - self.eps) * (slates == self.base[None, :]) + self.eps / n_items
        p_click = np.take_along_axis(self.relevance, slates, axis=1) * self.theta
        clicks = rng.random(slates.shape) < p_click
        users = np.broadcast_to(np.arange(n_users)[:, None], slates.shape)
        return {
            "user": users.ravel(),
            "item": slates.ravel(),
            "position": positions.ravel(),
            "clicked": clicks.ravel(),
            "propensity": mu.ravel(),
        }


def make_world(
    n_users: int = 20_000, n_items: int = 20, slate: int = 5, eps: float = 0.5, seed: int = 0
) -> PBMWorld:
    rng = np.random.default_rng(seed)
    tastes = rng.normal(size=(n_users, 4))
    attrs = rng.normal(size=(n_items, 4))
    relevance = 0.6 / (1 + np.exp(-(tastes @ attrs.T) + 1.0))
    theta = 1.0 / (1.0 + np.arange(slate)) ** 0.8
    base = np.argsort(-relevance.mean(axis=0))[slate : 2 * slate]  # a mediocre greedy slate
    return PBMWorld(relevance=relevance, theta=theta, base=base, eps=eps)


@pytest.fixture(scope="session")
def world() -> PBMWorld:
    return make_world()


@pytest.fixture(scope="session")
def world_factory():
    """`make_world(n_users=..., n_items=..., slate=..., eps=..., seed=...)` for seeded repeats."""
    return make_world
