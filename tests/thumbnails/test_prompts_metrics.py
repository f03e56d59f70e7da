"""Prompts from item text (edge cases) and the quality metrics (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.thumbnails.metrics import derangement, mismatched_scores, paired_scores, recall_at_k
from recsys.thumbnails.prompts import PromptError, prompt_for


def test_prompt_falls_back_to_title_then_category():
    assert prompt_for("a", "  A red\n\tcircle  ", "t") == "A red circle"
    assert prompt_for("a", "   ", "Red circle", "plate") == "Red circle"
    assert prompt_for("a", None, "", "plate") == "plate"
    with pytest.raises(PromptError, match="item 'a'.*all empty"):
        prompt_for("a", " ", None, "")


def test_long_prompt_is_cut_at_a_word():
    text = "a blue square, " * 500
    p = prompt_for("x", text, max_chars=100)
    assert len(p) <= 100 and p.endswith(("square,", "blue", "a", "square"))
    assert text.startswith(p)


def test_non_latin_text_is_kept_and_control_characters_dropped():
    assert prompt_for("x", "白い背景に赤い丸") == "白い背景に赤い丸"
    assert prompt_for("x", "Café\x00 crème") == "Café crème"


def test_derangement_has_no_fixed_point():
    rng = np.random.default_rng(0)
    for n in (2, 3, 10, 101):
        perm = derangement(n, rng)
        assert sorted(perm) == list(range(n)) and not np.any(perm == np.arange(n))
    with pytest.raises(ValueError):
        derangement(1, rng)


def test_scores_and_recall(unit_vectors):
    x = unit_vectors(20, 8)
    assert np.allclose(paired_scores(x, x), 1.0)
    assert mismatched_scores(x, x, np.random.default_rng(0)).mean() < 0.5
    targets = np.arange(20)
    assert recall_at_k(x, x, targets, 1) == 1.0
    # every target shows the same vector (a placeholder): ties are broken at random in expectation
    same = np.repeat(unit_vectors(1, 8, seed=5), 20, axis=0)
    assert recall_at_k(x, same, targets, 5) == pytest.approx(5 / 20)
    with pytest.raises(ValueError, match="differ in shape"):
        paired_scores(x, x[:3])
