"""Fixtures of the thumbnail tests: a tiny PIL-drawn catalogue, a tiny random CLIP, small settings."""

from __future__ import annotations

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

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220)}
SHAPES = ("circle", "square")
SMALL = {
    "device": "cpu", "clip.model": "recsys-clip-tiny", "clip.batch_size": 16,
    "thumbnails.resolution": 16, "thumbnails.output_size": 32, "thumbnails.channels": [16, 32],
    "thumbnails.epochs": 2, "thumbnails.batch_size": 8, "thumbnails.steps": 4,
    "thumbnails.generate_batch_size": 4, "thumbnails.grid_items": 2, "thumbnails.eval_items": 4,
    "thumbnails.eval_corpus": 12, "thumbnails.eval_seeds": 2, "thumbnails.recall_k": 3,
    "thumbnails.eval_holdout": 0.2,
}


def draw(colour: str, shape: str, size: int = 48) -> Image.Image:
    im = Image.new("RGB", (size, size), (245, 245, 240))
    d = ImageDraw.Draw(im)
    box = (size * 0.2, size * 0.2, size * 0.8, size * 0.8)
    (d.ellipse if shape == "circle" else d.rectangle)(box, fill=COLOURS[colour])
    return im


def make_items(ws: Workspace, n: int = 24, missing: int = 4) -> pl.DataFrame:
    """`n` items cycling over 2 colours x 2 shapes; the last `missing` have no image, and among
    those: one with blank text everywhere, one very long description, one in Japanese."""
    rows = []
    for i in range(n):
        colour, shape = list(COLOURS)[i % 2], SHAPES[(i // 2) % 2]
        item_id = f"it{i:03d}"
        text = f"A {colour} {shape} on a white background."
        uri, source = None, "none"
        if i < n - missing:
            path = ws.images_dir / f"{item_id}.png"
            draw(colour, shape).save(path)
            uri, source = str(path), "original"
        rows.append({C.ITEM_ID: item_id, C.TITLE: f"{colour} {shape}", C.DESCRIPTION: text,
                     C.CATEGORY: shape, C.PRICE: 1.0, C.IMAGE_URI: uri, C.IMAGE_SOURCE: source,
                     C.CREATED_AT: datetime(2024, 1, 1, tzinfo=UTC)})
    if missing >= 3:
        rows[-1].update({C.DESCRIPTION: "   ", C.TITLE: "", C.CATEGORY: ""})
        rows[-2].update({C.DESCRIPTION: "a blue square, " * 500})
        rows[-3].update({C.DESCRIPTION: "白い背景に赤い丸"})
    items = pl.DataFrame(rows, schema_overrides={C.CREATED_AT: pl.Datetime("us", "UTC")})
    save_table(ws, "items", items)
    return items


@pytest.fixture(scope="session")
def clip_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny CLIP saved as a file, to be loaded through `clip.pretrained`."""
    from recsys.embeddings.config import ClipConfig
    from recsys.embeddings.encoder import ClipEncoder

    path = tmp_path_factory.mktemp("clip") / "tiny.pt"
    ClipEncoder(ClipConfig(model="recsys-clip-tiny")).save_checkpoint(path)
    return path


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracking_store: dict[str, str],
             clip_checkpoint: Path):
    monkeypatch.setenv("RECSYS_CONFIG", str(tmp_path / "none.toml"))
    return load_settings(**tracking_store, **SMALL, home=str(tmp_path / "home"),
                         **{"clip.pretrained": str(clip_checkpoint)})


@pytest.fixture
def ws(settings) -> Workspace:
    return Workspace.at(settings.home)


@pytest.fixture(scope="session")
def encoder(clip_checkpoint: Path):
    from recsys.embeddings.config import ClipConfig
    from recsys.embeddings.encoder import ClipEncoder

    return ClipEncoder(ClipConfig(model="recsys-clip-tiny", pretrained=str(clip_checkpoint)))


@pytest.fixture(scope="session")
def small() -> dict:
    """Settings overrides that keep every thumbnail stage to seconds (test modules must not
    import conftest by name: tests/conftest.py shares the module name)."""
    return dict(SMALL)


@pytest.fixture(scope="session")
def items_factory():
    return make_items


@pytest.fixture
def unit_vectors():
    def make(n: int, d: int, seed: int = 0) -> np.ndarray:
        x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return make
