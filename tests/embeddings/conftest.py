"""Fixtures of the embeddings tests: tiny PIL-drawn catalogues written through `save_table`."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image, ImageDraw

from recsys.config import load_settings
from recsys.data import columns as C
from recsys.data.tables import save_table
from recsys.workspace import Workspace

os.environ.setdefault("RECSYS_PROGRESS", "0")

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 220), "yellow": (240, 210, 30),
           "purple": (140, 40, 170), "orange": (250, 140, 20), "black": (20, 20, 20), "pink": (250, 120, 190)}
SHAPES = {"lamp": "circle", "box": "square", "tent": "triangle", "rug": "wide", "vase": "tall"}
PATTERNS = ("plain", "striped", "dotted")
TEMPLATES = ("A {pattern} {colour} {category}.", "{colour} {category}, {pattern} finish",
             "Our {pattern} {category} in {colour}", "{category} ({colour}, {pattern})")


def draw_item(colour: str, category: str, pattern: str, size: int, rng: np.random.Generator) -> Image.Image:
    """A shape (by category) in a colour with a pattern, jittered in place and size."""
    im = Image.new("RGB", (size, size), (245, 245, 240))
    d = ImageDraw.Draw(im)
    rgb = COLOURS[colour]
    s = size * rng.uniform(0.55, 0.8)
    cx, cy = size / 2 + rng.uniform(-0.1, 0.1) * size, size / 2 + rng.uniform(-0.1, 0.1) * size
    shape = SHAPES[category]
    w, h = {"wide": (s, s * 0.45), "tall": (s * 0.45, s)}.get(shape, (s, s))
    box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    if shape == "circle":
        d.ellipse(box, fill=rgb)
    elif shape == "triangle":
        d.polygon([(cx, box[1]), (box[0], box[3]), (box[2], box[3])], fill=rgb)
    else:
        d.rectangle(box, fill=rgb)
    if pattern == "striped":
        for x in range(int(box[0]), int(box[2]), max(3, size // 12)):
            d.line([(x, box[1]), (x, box[3])], fill=(255, 255, 255), width=max(1, size // 40))
    elif pattern == "dotted":
        step = max(4, size // 10)
        for x in range(int(box[0]) + 2, int(box[2]), step):
            for y in range(int(box[1]) + 2, int(box[3]), step):
                d.ellipse((x, y, x + size // 40 + 1, y + size // 40 + 1), fill=(255, 255, 255))
    return im


def make_catalogue(ws: Workspace, n: int, seed: int = 0, image_size: int = 64,
                   missing_rate: float = 0.1) -> pl.DataFrame:
    """Write an items table of `n` PIL-drawn items (some without an image) and return it."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        category = list(SHAPES)[rng.integers(len(SHAPES))]
        pattern = PATTERNS[rng.integers(len(PATTERNS))]
        item_id = f"i{i:05d}"
        template = TEMPLATES[rng.integers(len(TEMPLATES))]
        text = template.format(colour=colour, category=category, pattern=pattern)
        uri, source = None, "none"
        if rng.random() >= missing_rate:
            path = ws.images_dir / f"{item_id}.png"
            draw_item(colour, category, pattern, image_size, rng).save(path)
            uri, source = str(path), "original"
        rows.append({C.ITEM_ID: item_id, C.TITLE: f"{colour} {category}".title(), C.DESCRIPTION: text,
                     C.CATEGORY: category, C.PRICE: float(rng.uniform(5, 100)), C.IMAGE_URI: uri,
                     C.IMAGE_SOURCE: source, C.CREATED_AT: datetime(2024, 1, 1, tzinfo=UTC)})
    items = pl.DataFrame(rows, schema_overrides={C.CREATED_AT: pl.Datetime("us", "UTC")})
    save_table(ws, "items", items)
    return items


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracking_store: dict[str, str]):
    monkeypatch.setenv("RECSYS_CONFIG", str(tmp_path / "none.toml"))
    return load_settings(**tracking_store, **{
        "home": str(tmp_path / "home"), "device": "cpu", "clip.epochs": 2, "clip.train_batch_size": 16,
        "clip.batch_size": 16, "clip.workers": 0, "clip.shard_rows": 8,
    })


@pytest.fixture
def ws(settings) -> Workspace:
    return Workspace.at(settings.home)


@pytest.fixture
def catalogue_factory():
    """`make_catalogue` as a fixture (test modules must not import conftest by name)."""
    return make_catalogue


@pytest.fixture
def catalogue(ws: Workspace) -> pl.DataFrame:
    return make_catalogue(ws, 40, seed=1)
