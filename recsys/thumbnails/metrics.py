"""How good are generated thumbnails: CLIP score and retrieval recall (pure numpy).

CLIP score (Hessel et al., 2021, without the 2.5 rescale): the cosine between an image's CLIP
vector and its description's text vector, averaged over items. Compared across three pairings:
generated thumbnail + its description, real image + its description (the ceiling), and real
image + another item's description (mismatched: the floor a picture that fits nothing gets).
"""

from __future__ import annotations

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def paired_scores(images: np.ndarray, texts: np.ndarray) -> np.ndarray:
    """cos(image_i, text_i) for each row i; (n, d), (n, d) -> (n,)."""
    if images.shape != texts.shape:
        raise ValueError(f"image vectors {images.shape} and text vectors {texts.shape} differ in shape")
    return np.einsum("nd,nd->n", _unit(images), _unit(texts))


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation with no fixed point (every item gets another item's text); n >= 2."""
    if n < 2:
        raise ValueError("mismatched pairs need at least 2 items")
    perm = rng.permutation(n)
    return np.roll(perm, 1)[np.argsort(perm)]  # i -> the element after i in a random cycle


def mismatched_scores(images: np.ndarray, texts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """cos(image_i, text_j) with j a random other item: the score of a wrong picture."""
    return paired_scores(images, texts[derangement(len(texts), rng)])


def recall_at_k(queries: np.ndarray, corpus: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Share of queries whose target row of `corpus` is among the top `k` by cosine.

    Ties are broken at random in expectation: with g corpus rows scoring strictly higher than
    the target and e rows (target included) scoring equal, the chance the target makes the top
    k is clip((k - g) / e, 0, 1). This matters for the "no image" variant, where every hidden
    item shows the same placeholder vector.
    """
    scores = _unit(queries) @ _unit(corpus).T
    own = scores[np.arange(len(targets)), targets][:, None]
    tol = 1e-9
    greater = (scores > own + tol).sum(axis=1)
    equal = (np.abs(scores - own) <= tol).sum(axis=1)
    return float(np.clip((k - greater) / equal, 0.0, 1.0).mean())
