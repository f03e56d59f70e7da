"""How an item of the embedded world looks and reads: its attributes, picture and words.

Every attribute an item has is both *visible* in its picture and *named* in its text, so a
contrastive image-text model can learn to match them, and users' tastes (defined over the same
attributes) can be predicted from content alone:

- category   -> the shape drawn (a plate is a circle, a pennant a triangle, ...)
- colour     -> the fill colour of the shape
- pattern    -> the texture painted on the shape (stripes, dots, checks, zigzag, plain)
- background -> the colour behind the shape

This module imports only numpy and PIL so image workers start quickly.
"""

from __future__ import annotations

import math

import numpy as np

CATEGORIES = ("plate", "cushion", "pennant", "badge", "kite", "coaster", "patch", "ring")
SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon", "cross", "annulus")
COLOURS = ("red", "orange", "yellow", "green", "teal", "blue", "purple", "pink", "brown", "black")
RGB = {
    "red": (215, 38, 38),
    "orange": (245, 140, 20),
    "yellow": (240, 210, 30),
    "green": (40, 160, 60),
    "teal": (0, 150, 150),
    "blue": (40, 80, 215),
    "purple": (130, 50, 180),
    "pink": (240, 125, 185),
    "brown": (125, 78, 38),
    "black": (25, 25, 25),
}
PATTERNS = ("plain", "striped", "dotted", "checked", "zigzag")
BACKGROUNDS = ("white", "grey", "beige", "dark")
BG_RGB = {"white": (250, 250, 250), "grey": (150, 150, 150), "beige": (228, 208, 170), "dark": (38, 40, 58)}
BASE_PRICE = (18.0, 32.0, 9.0, 6.0, 24.0, 7.0, 5.0, 45.0)  # by category

# The attribute groups in the order of the users' taste vector (one weight per value).
GROUPS = (("category", CATEGORIES), ("colour", COLOURS), ("pattern", PATTERNS), ("background", BACKGROUNDS))
OFFSETS = tuple(int(x) for x in np.cumsum([0] + [len(v) for _, v in GROUPS])[:-1])
N_ATTRIBUTE_VALUES = sum(len(v) for _, v in GROUPS)

_PATTERN_WORDS = {
    "plain": (("plain", "solid", "plain-coloured"), ("no pattern", "a plain finish")),
    "striped": (("striped", "stripy", "pinstriped"), ("stripes", "a striped pattern")),
    "dotted": (("dotted", "polka-dot", "spotted"), ("dots", "polka dots")),
    "checked": (("checked", "chequered", "checkerboard"), ("checks", "a checkerboard pattern")),
    "zigzag": (("zigzag", "chevron", "zig-zag"), ("zigzags", "a chevron pattern")),
}
_BG_WORDS = {
    "white": ("white", "clean white", "bright white"),
    "grey": ("grey", "neutral grey", "slate grey"),
    "beige": ("beige", "warm beige", "sand-coloured"),
    "dark": ("dark", "deep navy", "dark night"),
}
_ADJECTIVES = ("Classic", "Modern", "Handmade", "Everyday", "Studio", "Vintage", "Bold", "Little", "Grand")
_FILLERS = (
    "",
    "",
    "Makes a good gift.",
    "Built to last.",
    "A favourite of our regulars.",
    "Limited run.",
    "Ships in two days.",
    "Easy to clean.",
    "Pairs well with the rest of the range.",
)
_TEMPLATES = (
    "A {colour} {pattern_adj} {category} shown on a {bg} background. {filler}",
    "{Adj} {category} in {colour} with {pattern_noun}, photographed against a {bg} backdrop. {filler}",
    "This {category} comes in {colour} and has {pattern_noun}; {bg} background. {filler}",
    "{Colour}, {pattern_adj} and ready to go: our {adj} {category}, set on {bg}. {filler}",
    "{filler} The {pattern_adj} {colour} {category}, pictured on a {bg} background.",
    "{Pattern_adj} {category}, colour {colour}, on {bg}. {filler}",
)


def describe(
    category: int, colour: int, pattern: int, background: int, rng: np.random.Generator
) -> tuple[str, str]:
    """Title and description of an item; the wording varies, the attributes named do not."""
    cat, col, pat, bg = CATEGORIES[category], COLOURS[colour], PATTERNS[pattern], BACKGROUNDS[background]
    adjs, nouns = _PATTERN_WORDS[pat]
    pattern_adj = adjs[rng.integers(len(adjs))]
    words = {
        "category": cat,
        "colour": col,
        "Colour": col.capitalize(),
        "pattern_adj": pattern_adj,
        "Pattern_adj": pattern_adj.capitalize(),
        "pattern_noun": nouns[rng.integers(len(nouns))],
        "bg": _BG_WORDS[bg][rng.integers(len(_BG_WORDS[bg]))],
        "adj": _ADJECTIVES[rng.integers(len(_ADJECTIVES))].lower(),
        "Adj": _ADJECTIVES[rng.integers(len(_ADJECTIVES))],
        "filler": _FILLERS[rng.integers(len(_FILLERS))],
    }
    text = _TEMPLATES[rng.integers(len(_TEMPLATES))].format(**words)
    text = " ".join(text.split())
    title = f"{_ADJECTIVES[rng.integers(len(_ADJECTIVES))]} {col} {pattern_adj} {cat}"
    return title, text


# --- pictures -------------------------------------------------------------------------------


def _polygon(cx: float, cy: float, r: float, n: int, rot: float, inner: float | None = None) -> list[tuple]:
    pts = []
    steps = n * 2 if inner else n
    for k in range(steps):
        rad = r if (inner is None or k % 2 == 0) else r * inner
        a = rot + 2 * math.pi * k / steps - math.pi / 2
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _draw_shape(draw, shape: str, cx: float, cy: float, r: float, rot: float) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif shape == "square":
        draw.rounded_rectangle(
            (cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85), radius=r * 0.15, fill=255
        )
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy + r * 0.15, r * 1.1, 3, rot * 0.2), fill=255)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, r * 1.05, 5, rot, inner=0.45), fill=255)
    elif shape == "diamond":
        draw.polygon(
            [(cx, cy - r * 1.1), (cx + r * 0.7, cy), (cx, cy + r * 1.1), (cx - r * 0.7, cy)], fill=255
        )
    elif shape == "hexagon":
        draw.polygon(_polygon(cx, cy, r, 6, rot), fill=255)
    elif shape == "cross":
        w = r * 0.38
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=255)
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=255)
    elif shape == "annulus":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        h = r * 0.5
        draw.ellipse((cx - h, cy - h, cx + h, cy + h), fill=0)
    else:  # pragma: no cover - guarded by the vocabulary
        raise ValueError(f"unknown shape {shape!r}")


def _texture(size: int, colour: tuple, pattern: str, rng: np.random.Generator):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), colour)
    if pattern == "plain":
        return img
    lum = sum(colour) / 3
    ink = tuple(int(c * 0.35) for c in colour) if lum > 90 else tuple(min(255, c + 150) for c in colour)
    d = ImageDraw.Draw(img)
    step = int(rng.integers(size // 14, size // 9))
    if pattern == "striped":
        w = max(2, step // 2)
        for x in range(-size, 2 * size, step):
            d.line((x, 0, x + size, size), fill=ink, width=w)
    elif pattern == "dotted":
        rad = max(2, step // 4)
        for y in range(step // 2, size, step):
            for x in range(step // 2 + (y // step % 2) * step // 2, size, step):
                d.ellipse((x - rad, y - rad, x + rad, y + rad), fill=ink)
    elif pattern == "checked":
        for y in range(0, size, step):
            for x in range(0, size, step):
                if (x // step + y // step) % 2:
                    d.rectangle((x, y, x + step - 1, y + step - 1), fill=ink)
    elif pattern == "zigzag":
        w = max(2, step // 3)
        for y in range(0, size + step, step):
            pts = [
                (x, y + (step // 2 if (x // (step // 2 or 1)) % 2 else 0))
                for x in range(0, size + step, step // 2 or 1)
            ]
            d.line(pts, fill=ink, width=w)
    return img


def render(category: int, colour: int, pattern: int, background: int, seed: int, size: int = 128):
    """Draw one item picture (a PIL image); small seeded jitter in size, position and rotation."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), BG_RGB[BACKGROUNDS[background]])
    mask = Image.new("L", (size, size), 0)
    r = size * rng.uniform(0.30, 0.40)
    cx = size / 2 + rng.uniform(-0.06, 0.06) * size
    cy = size / 2 + rng.uniform(-0.06, 0.06) * size
    _draw_shape(ImageDraw.Draw(mask), SHAPES[category], cx, cy, r, rng.uniform(-0.3, 0.3))
    tex = _texture(size, RGB[COLOURS[colour]], PATTERNS[pattern], rng)
    img.paste(tex, (0, 0), mask)
    return img


def render_batch(jobs: list[tuple[str, int, int, int, int, int, int]]) -> int:
    """Render and save `(path, category, colour, pattern, background, seed, size)` jobs as PNG.

    Runs in worker processes; each file is written to a temporary name and renamed.
    """
    import os

    for path, cat, col, pat, bg, seed, size in jobs:
        tmp = f"{path}.tmp{os.getpid()}.png"
        render(cat, col, pat, bg, seed, size).save(tmp, format="PNG", compress_level=1)
        os.replace(tmp, path)
    return len(jobs)
