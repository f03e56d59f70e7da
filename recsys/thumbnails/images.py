"""Sample grids for MLflow: rows of images (e.g. real on top, generated below) in one picture."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image


def grid(rows: Sequence[Sequence[Image.Image | None]], cell: int = 64, pad: int = 2) -> Image.Image:
    """Tile rows of images; a None cell stays blank (an item with no real image)."""
    n_cols = max((len(r) for r in rows), default=0)
    out = Image.new("RGB", (max(n_cols, 1) * (cell + pad) + pad, max(len(rows), 1) * (cell + pad) + pad),
                    "white")
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            if im is not None:
                xy = (pad + c * (cell + pad), pad + r * (cell + pad))
                out.paste(im.convert("RGB").resize((cell, cell)), xy)
    return out
