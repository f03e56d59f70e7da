"""Which k of the ranked candidates a response shows, and with what probability.

Every shown item carries its *position propensity*: the probability that this policy put this
item at this position, given the items already placed above it. Off-policy estimators
(IPS, SNIPS, DR) read it from the impressions log.

- `none`: deterministic top-k; every propensity is 1.
- `epsilon`: slot by slot, the best remaining candidate with probability 1-eps, a uniformly
  drawn remaining candidate with probability eps:
  p(i at slot j) = (1-eps) * [i is the best remaining] + eps / n_remaining.
- `softmax`: Plackett-Luce sampling without replacement over score / temperature:
  p(i at slot j) = exp(s_i/T) / sum over remaining r of exp(s_r/T).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

Policy = str  # "none" | "epsilon" | "softmax"


def choose_slate(
    ranked: Sequence[tuple[str, float]],
    k: int,
    policy: Policy = "none",
    epsilon: float = 0.1,
    temperature: float = 1.0,
    rng: np.random.Generator | None = None,
) -> list[tuple[str, float, float]]:
    """Pick up to `k` of `ranked` (best first) -> [(item_id, score, propensity)] in shown order."""
    if policy == "none" or len(ranked) <= 1:
        return [(i, s, 1.0) for i, s in ranked[:k]]
    if rng is None:
        rng = np.random.default_rng()
    ids = [i for i, _ in ranked]
    scores = np.asarray([s for _, s in ranked], dtype=np.float64)
    remaining = list(range(len(ids)))  # indices, kept best-first
    out: list[tuple[str, float, float]] = []
    for _ in range(min(k, len(ids))):
        n = len(remaining)
        if policy == "epsilon":
            pos = int(rng.integers(n)) if rng.random() < epsilon else 0
            p = epsilon / n + ((1.0 - epsilon) if pos == 0 else 0.0)
        elif policy == "softmax":
            logits = scores[remaining] / temperature
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            pos = int(rng.choice(n, p=probs))
            p = float(probs[pos])
        else:
            raise ValueError(f"unknown exploration policy '{policy}'; expected none, epsilon or softmax")
        idx = remaining.pop(pos)
        out.append((ids[idx], float(scores[idx]), float(p)))
    return out


def seed_from(request_id: str) -> int:
    """A reproducible seed per request: the same request id replays the same slate."""
    return int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "little")
