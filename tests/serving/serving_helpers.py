"""A small real workspace (items with PNG images, a click log, item vectors) and a small real
recommender over it, so the app is exercised end to end without training anything."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Mapping, Sequence
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
from recsys.recommender import Recommendation
from recsys.rules import Rules
from recsys.workspace import Workspace
from serving.state import ServingState, load_catalogue

N_ITEMS = 40
N_USERS = 12
CATEGORIES = ("shoes", "bags", "hats")
API_KEY = "test-key"
RECENT_CLICKS = "user_behaviour__last_clicked_items"  # Feast's full feature name


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
    """A `serving.protocols.RecommendationModel` over the serving world: scores items by the dot
    product with the mean vector of the user's recent clicks (from the online feature row, as the
    real recommender reads it); users without clicks get popularity. Answers a real
    `recsys.recommender.Recommendation`; the user "explode" raises, as a ranker bug would."""

    def __init__(self, ws: Workspace, version: int = 1):
        self.catalogue = load_catalogue(ws)
        self.versions: dict[str, str | None] = {"ranker": f"ranker/v{version}",
                                                "retrieval": f"retrieval/v{version}"}
        self.unavailable: set[str] = set()

    def set_available(self, item_ids: Sequence[str], available: bool) -> int:
        (self.unavailable.difference_update if available else self.unavailable.update)(item_ids)
        return sum(1 for i in item_ids if i in self.catalogue.items)

    def recommend(self, user_id: str, k: int = 10, user_features: Mapping[str, Any] | None = None,
                  exclude: Collection[str] = (), category: str | None = None,
                  as_of: datetime | None = None, history: Sequence[str] | None = None,
                  seen: Collection[str] | None = None, rules: Rules | None = None) -> Recommendation:
        if user_id == "explode":
            raise RuntimeError("a bug in the ranker")
        cat = self.catalogue
        rules = rules or Rules()
        exclude = set(exclude) | rules.exclude | self.unavailable
        clicked = list(history)[::-1] if history is not None else \
            list((user_features or {}).get(RECENT_CLICKS) or [])  # most recent first
        rows = [cat.vector_row[i] for i in clicked if i in cat.vector_row]
        if not rows:
            items = cat.popular_for(k, exclude, category, rules)
            return Recommendation([(i, s, r) for r, (i, s) in enumerate(items, start=1)], dict(self.versions),
                                  {"popular": 0.0}, "popular", len(items), ["popular now"] * len(items))
        t = time.perf_counter()
        scores = cat.vectors @ cat.vectors[rows].mean(axis=0)
        items = []
        for n in np.argsort(-scores):
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
        return Recommendation([(i, s, r) for r, (i, s) in enumerate(items, start=1)], dict(self.versions),
                              {"rank": time.perf_counter() - t}, None, len(scores),
                              [f"because you clicked {cat.items[clicked[0]].title}"] * len(items))


class RecentClickFeatures:
    """A `serving.protocols.OnlineFeatureReader` over the click log: the row the real store
    answers (`user_behaviour__last_clicked_items`, most recent first); `down` makes it behave like
    an unreachable store."""

    def __init__(self, ws: Workspace):
        self.recent = load_catalogue(ws).recent
        self.down = False

    def user(self, user_id: str) -> dict[str, Any]:
        if self.down:
            raise ConnectionError("online store unreachable")
        return {RECENT_CLICKS: list(self.recent.get(user_id, ()))}

    def probe(self) -> None:
        self.user("__readiness_probe__")

    def replaced(self) -> bool:
        return False  # no file behind it

    def reopened(self) -> RecentClickFeatures:
        return self  # the log in memory is all there is to reopen


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
    """Test settings; answers are the ranked top k (exploration off) unless a test asks for it."""
    return load_settings(home=str(home), **{"serving.api_key": API_KEY, "serving.event_flush_seconds": 0.05,
                                            "serving.exploration": "none", **overrides})


def wait_ready(client: TestClient, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get("/readyz")
        if r.json()["reasons"] != ["loading"]:
            return
        time.sleep(0.02)
    raise TimeoutError("state never loaded")


