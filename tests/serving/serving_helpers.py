"""A small real workspace (items with PNG images, a click log, item vectors) and a small real
recommender over it, so the app is exercised end to end without training anything."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from fastapi.testclient import TestClient
from PIL import Image

from recsys.config import Settings, load_settings
from recsys.data import columns as C
from recsys.data.contracts import validate_impressions, validate_items
from recsys.data.tables import save_table
from recsys.rules import Rules
from recsys.workspace import Workspace
from serving.state import ServingState, load_catalogue

N_ITEMS = 40
N_USERS = 12
CATEGORIES = ("shoes", "bags", "hats")
API_KEY = "test-key"


def build_world(home: Path, seed: int = 0) -> Workspace:
    """Items (2/3 with images, some generated), users' clicks, fused item vectors."""
    rng = np.random.default_rng(seed)
    ws = Workspace.at(home)
    rows = []
    for i in range(N_ITEMS):
        item_id = f"i{i:03d}"
        uri, source = None, None
        if i % 3 != 2:
            path = (ws.thumbnails_dir if i % 3 == 1 else ws.images_dir) / f"{item_id}.png"
            img = Image.new("RGB", (32, 32), tuple(int(c) for c in rng.integers(0, 255, 3)))
            img.paste(tuple(int(c) for c in rng.integers(0, 255, 3)), (8, 8, 24, 24))
            img.save(path)
            uri, source = str(path), ("generated" if i % 3 == 1 else "original")
        rows.append({C.ITEM_ID: item_id, C.TITLE: f"Item {i}", C.DESCRIPTION: f"a thing number {i}",
                     C.CATEGORY: CATEGORIES[i % 3], C.PRICE: float(i), C.IMAGE_URI: uri,
                     C.IMAGE_SOURCE: source})
    items = validate_items(pl.DataFrame(rows), "items")
    items.raise_if_bad()
    save_table(ws, "items", items.good)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    imp = []
    for u in range(N_USERS):
        for j in range(6):
            item = int(rng.integers(0, N_ITEMS // 2)) if u % 2 else int(rng.integers(N_ITEMS // 2, N_ITEMS))
            imp.append({C.REQUEST_ID: f"r{u}-{j}", C.USER_ID: f"u{u}", C.ITEM_ID: f"i{item:03d}",
                        C.POSITION: "0", C.EVENT_TIMESTAMP: (start + timedelta(hours=u * 10 + j)).isoformat(),
                        C.CLICKED: "true", C.PROPENSITY: "1.0", C.POLICY: "test"})
    imps = validate_impressions(pl.DataFrame(imp), "impressions")
    imps.raise_if_bad()
    save_table(ws, "impressions", imps.good)
    vecs = rng.normal(size=(N_ITEMS, 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    emb = pl.DataFrame({C.ITEM_ID: [r[C.ITEM_ID] for r in rows], C.EMBEDDING: vecs.tolist()},
                       schema={C.ITEM_ID: pl.String, C.EMBEDDING: pl.List(pl.Float32)})
    save_table(ws, "item_embeddings", emb)
    return ws


class VectorRecommender:
    """Scores items by the dot product with the mean vector of the user's clicks; unknown users
    get popularity. The interface is the one serving calls (`recommend` + `versions`)."""

    def __init__(self, ws: Workspace, version: int = 1):
        self.catalogue = load_catalogue(ws)
        self.versions = {"ranker": f"ranker/v{version}", "retrieval": f"retrieval/v{version}"}

    def recommend(self, user_id: str, k: int, user_features: dict | None, exclude: set[str],
                  category: str | None, as_of: datetime, rules: Rules | None = None) -> dict[str, Any]:
        if user_id == "explode":
            raise RuntimeError("a bug in the ranker")
        cat = self.catalogue
        rules = rules or Rules()
        exclude = set(exclude) | rules.exclude
        clicked = (user_features or {}).get("last_clicked") or []
        rows = [cat.vector_row[i] for i in clicked if i in cat.vector_row]
        if not rows:
            items = cat.popular_for(k, exclude, category, rules)
            return {"items": items, "fallback": "popular", "timings": {"popular": 0.0},
                    "reasons": ["popular now"] * len(items)}
        t = time.perf_counter()
        scores = cat.vectors @ cat.vectors[rows].mean(axis=0)
        order = np.argsort(-scores)
        items = []
        for n in order:
            item_id = cat.vector_ids[n]
            if item_id in exclude or item_id in clicked:
                continue
            if category is not None and cat.items[item_id].category != category:
                continue
            if not cat.items[item_id].allowed_by(rules):
                continue
            items.append((item_id, float(scores[n])))
            if len(items) == k:
                break
        return {"items": items, "fallback": None, "timings": {"rank": time.perf_counter() - t},
                "reasons": [f"because you clicked {cat.items[clicked[0]].title}"] * len(items)}


class RecentClickFeatures:
    """User features from the click log (recent clicks, most recent first, under `key`);
    `down` makes it behave like an unreachable store."""

    def __init__(self, ws: Workspace, key: str = "last_clicked"):
        self.recent = load_catalogue(ws).recent
        self.key = key
        self.down = False

    def user(self, user_id: str) -> dict[str, Any]:
        if self.down:
            raise ConnectionError("online store unreachable")
        return {self.key: list(self.recent.get(user_id, ()))}


class Loader:
    """Builds a fresh state per call (a new version each time), optionally slowly."""

    def __init__(self, ws: Workspace, delay: float = 0.0):
        self.ws = ws
        self.delay = delay
        self.calls = 0
        self.features = RecentClickFeatures(ws)
        self.lock = threading.Lock()

    def __call__(self, settings: Settings, previous: ServingState | None = None) -> ServingState:
        with self.lock:
            self.calls += 1
            version = self.calls
        time.sleep(self.delay)
        rec = VectorRecommender(self.ws, version)
        return ServingState(catalogue=load_catalogue(self.ws), recommender=rec, features=self.features,
                            versions=dict(rec.versions), problems=())


def make_settings(home: Path, **overrides: Any) -> Settings:
    return load_settings(home=str(home), **{"serving.api_key": API_KEY, "serving.event_flush_seconds": 0.05,
                                            **overrides})


def wait_ready(client: TestClient, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get("/readyz")
        if r.json()["reasons"] != ["loading"]:
            return
        time.sleep(0.02)
    raise TimeoutError("state never loaded")


