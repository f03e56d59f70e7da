"""Prompts from item text: what the thumbnail model is asked to draw.

A description is the prompt. Edge cases are decided here, once:
- empty or blank description: fall back to the title, then the category; nothing left is a
  `PromptError` naming the item (the generation batch records it and goes on);
- very long text: cut at a word boundary to `max_chars` (CLIP's tokenizer truncates at its
  context length anyway; cutting here keeps the recorded prompt equal to what was used);
- any script (non-Latin included) is kept as Unicode NFC: CLIP's byte-level BPE encodes it.
"""

from __future__ import annotations

import re
import unicodedata


class PromptError(ValueError):
    """An item has no text to draw from."""


_SPACE = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def normalise(text: str | None) -> str:
    if text is None:
        return ""
    text = unicodedata.normalize("NFC", str(text))
    return _SPACE.sub(" ", _CONTROL.sub(" ", text)).strip()


def truncate(text: str, max_chars: int) -> str:
    """Cut to at most `max_chars`, at the last space when there is one in the second half."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    return cut[:space] if space > max_chars // 2 else cut


def prompt_for(item_id: str, description: str | None, title: str | None = None,
               category: str | None = None, max_chars: int = 300) -> str:
    """The prompt for one item; raises `PromptError` when it has no text at all."""
    for text in (description, title, category):
        clean = normalise(text)
        if clean:
            return truncate(clean, max_chars)
    raise PromptError(f"item {item_id!r}: description, title and category are all empty; "
                      f"nothing to draw a thumbnail from")
