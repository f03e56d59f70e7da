"""What one server holds in memory, loaded as a whole and swapped as a whole.

A `ServingState` is immutable: a request takes a reference at its start and finishes on it,
so a reload (admin call or alias poll) swaps one reference and no request ever sees half of
an old and half of a new model. Every component loads independently; what is missing is a
`problem` (shown by `/readyz`) rather than a crash, and the parts that did load still serve
(popularity from the catalogue, similar items from the item vectors).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import polars as pl

from recsys.config import Settings
from recsys.data import columns as C
from recsys.data.tables import image_roots as import_folders
from recsys.data.tables import load_table
from recsys.rules import Rules
from recsys.workspace import Workspace

if TYPE_CHECKING:  # heavy imports (Feast, LightGBM) stay out of module import
    from recsys.recommender import Recommendation
    from serving.protocols import OnlineFeatureReader, RecommendationModel

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif"}


@dataclass(frozen=True)
class ItemInfo:
    item_id: str
    title: str | None
    category: str | None
    image_uri: str | None
    image_source: str | None
    price: float | None = None
    available: bool = True  # in stock; an unavailable item is never recommended

    def allowed_by(self, rules: Rules) -> bool:
        """Whether the item is in stock and the rules' filters let it through."""
        return self.available and rules.allows(self.category, self.price)


@dataclass(frozen=True)
class Catalogue:
    """Items, click popularity and each user's recent clicks, from the workspace tables."""

    items: dict[str, ItemInfo]
    popular: tuple[str, ...]  # most clicked first; every item appears
    clicks: dict[str, int]
    recent: dict[str, tuple[str, ...]]  # user_id -> last clicked item ids, newest first
    vectors: np.ndarray | None = None  # (n, d) L2-normalised item vectors, rows as `vector_ids`
    vector_ids: tuple[str, ...] = ()
    vector_row: dict[str, int] = field(default_factory=dict)
    vector_source: str | None = None
    image_roots: tuple[Path, ...] = ()  # resolved folders images may come from; first: the workspace

    def popular_for(self, k: int, exclude: set[str], category: str | None = None,
                    rules: Rules | None = None) -> list[tuple[str, float]]:
        """Top-k available items by clicks within the filters and per-category caps of `rules`:
        the cold-start and degraded answer (no diversity: popularity has no item vectors to spread)."""
        rules = rules or Rules()
        if category is not None:
            rules = replace(rules, categories=frozenset({category}))
        exclude = exclude | rules.exclude
        cap = rules.max_per_category
        per_category: dict[str | None, int] = {}
        out: list[tuple[str, float]] = []
        for item_id in self.popular:
            info = self.items[item_id]
            if item_id in exclude or not info.allowed_by(rules):
                continue
            if cap is not None:
                if per_category.get(info.category, 0) >= cap:
                    continue
                per_category[info.category] = per_category.get(info.category, 0) + 1
            out.append((item_id, float(self.clicks.get(item_id, 0))))
            if len(out) == k:
                break
        return out

    def with_availability(self, item_ids: Sequence[str], available: bool) -> tuple[Catalogue, int, list[str]]:
        """A copy with `item_ids` marked in or out of stock -> (catalogue, how many changed, unknown ids)."""
        changed = {i: replace(self.items[i], available=available) for i in dict.fromkeys(item_ids)
                   if i in self.items and self.items[i].available != available}
        unknown = [i for i in item_ids if i not in self.items]
        if not changed:
            return self, 0, unknown
        return replace(self, items={**self.items, **changed}), len(changed), unknown

    def similar(self, item_id: str, k: int) -> list[tuple[str, float]] | None:
        """Nearest items by cosine of their vectors; None when the item has no vector."""
        row = self.vector_row.get(item_id)
        if self.vectors is None or row is None:
            return None
        sims = self.vectors @ self.vectors[row]
        sims[row] = -np.inf
        k = min(k, len(sims) - 1)
        top = np.argpartition(-sims, k)[:k] if k < len(sims) else np.arange(len(sims))
        top = top[np.argsort(-sims[top])]
        return [(self.vector_ids[i], float(sims[i])) for i in top[:k]]

    def image_path(self, item_id: str) -> Path | None:
        """The item's image file: only for items in the table, only local image files, and only
        from under `image_roots` once links and `..` are resolved (an item whose image_uri is
        `../../etc/passwd` or a link out of the roots gets nothing). A relative image_uri is
        relative to the workspace."""
        info = self.items.get(item_id)
        if info is None or not info.image_uri or "://" in info.image_uri or not self.image_roots:
            return None
        path = Path(info.image_uri)
        if not path.is_absolute():
            path = self.image_roots[0] / path
        try:
            path = path.resolve(strict=True)
        except (OSError, RuntimeError):  # missing, a link loop
            return None
        if not any(path.is_relative_to(root) for root in self.image_roots):
            log.warning("image of item %s is outside the allowed image roots; not served", item_id)
            return None
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            return None
        return path


def allowed_image_roots(ws: Workspace, configured: Sequence[str | Path] = ()) -> tuple[Path, ...]:
    """Folders `/ui/images` may serve from: the workspace, the folders imports read their items
    files from (`recsys.data.tables.image_roots`), and `serving.image_roots`."""
    roots: list[Path] = []
    for folder in (ws.root, *import_folders(ws), *configured):
        path = Path(folder).expanduser()
        path = (path if path.is_absolute() else ws.root / path).resolve()
        if path not in roots:
            roots.append(path)
    return tuple(roots)


def load_catalogue(
    ws: Workspace, recent_clicks: int = 12, image_roots: Sequence[str | Path] = ()
) -> Catalogue:
    """Read items, clicks and item vectors; raises FileNotFoundError without an items table.
    `image_roots`: folders besides the workspace and the import folders that images may come from."""
    items_df = load_table(ws, "items")
    cols = set(items_df.columns)
    items = {
        r[C.ITEM_ID]: ItemInfo(r[C.ITEM_ID], r.get(C.TITLE), r.get(C.CATEGORY),
                               r.get(C.IMAGE_URI) if C.IMAGE_URI in cols else None,
                               r.get(C.IMAGE_SOURCE) if C.IMAGE_SOURCE in cols else None,
                               price=r.get(C.PRICE) if C.PRICE in cols else None,
                               available=r.get(C.AVAILABLE) is not False)  # missing or null: in stock
        for r in items_df.iter_rows(named=True)
    }
    clicks: dict[str, int] = {}
    recent: dict[str, tuple[str, ...]] = {}
    if ws.table("impressions").exists():
        imp = pl.scan_parquet(ws.table("impressions")).filter(pl.col(C.CLICKED))
        counts = imp.group_by(C.ITEM_ID).len().collect()
        clicks = dict(zip(counts[C.ITEM_ID].to_list(), counts["len"].to_list(), strict=True))
        if recent_clicks:
            last = (imp.sort(C.EVENT_TIMESTAMP, descending=True)
                    .group_by(C.USER_ID, maintain_order=True).head(recent_clicks)
                    .group_by(C.USER_ID, maintain_order=True).agg(pl.col(C.ITEM_ID)).collect())
            recent = {u: tuple(i for i in ids if i in items)
                      for u, ids in zip(last[C.USER_ID].to_list(), last[C.ITEM_ID].to_list(), strict=True)}
    popular = tuple(sorted(items, key=lambda i: (-clicks.get(i, 0), i)))
    roots = allowed_image_roots(ws, image_roots)
    cat = Catalogue(items=items, popular=popular, clicks=clicks, recent=recent, image_roots=roots)
    vectors = _load_item_vectors(ws, items)
    if vectors is not None:
        ids, mat = vectors
        cat = Catalogue(items=items, popular=popular, clicks=clicks, recent=recent, vectors=mat,
                        vector_ids=tuple(ids), vector_row={i: n for n, i in enumerate(ids)},
                        vector_source="item_embeddings", image_roots=roots)
    return cat


def _load_item_vectors(ws: Workspace, items: dict[str, ItemInfo]) -> tuple[list[str], np.ndarray] | None:
    """The fused CLIP item vectors (item_embeddings table), L2-normalised, or None."""
    if not ws.table("item_embeddings").exists():
        return None
    df = pl.read_parquet(ws.table("item_embeddings"), columns=[C.ITEM_ID, C.EMBEDDING])
    df = df.filter(pl.col(C.ITEM_ID).is_in(list(items)) & pl.col(C.EMBEDDING).is_not_null())
    if not df.height:
        return None
    mat = np.asarray(df[C.EMBEDDING].to_list(), dtype=np.float32)
    mat /= np.maximum(np.linalg.norm(mat, axis=1, keepdims=True), 1e-12)
    return df[C.ITEM_ID].to_list(), mat


_URI = re.compile(r"\b[A-Za-z][\w+.-]*://\S*")
_HOST_PORT = re.compile(
    r"\b(?:\d{1,3}(?:\.\d{1,3}){3}|(?:[\w-]+\.)*[A-Za-z][\w-]*|\[[0-9A-Fa-f:]+\]):\d{1,5}\b"
)
_PATH = re.compile(r"(?<![\w.])(?<!models:)(?:~|\.{1,2})?/[^\s'\",;)\]]+")
_RELATIVE_FILE = re.compile(r"(?<![\w.:/@-])(?:[\w.-]+/)+[\w.-]*\.[A-Za-z]\w*\b")  # feast/online.db


def public_reason(text: str, *hide: str) -> str:
    """`text` with URIs (database, Redis, file), host:port pairs and file paths replaced by
    `<uri>`, `<host>` and `<path>` (workspace-relative file paths such as `feast/online.db` too):
    a reason that says what is wrong, not where things live.
    `hide`: literal strings (e.g. the workspace folder, which may contain spaces) to replace first."""
    for literal in hide:
        if literal:
            text = re.sub(re.escape(literal) + r"[^\s'\",;)\]]*", "<path>", text)
    text = _URI.sub("<uri>", text)
    text = _HOST_PORT.sub("<host>", text)
    return _RELATIVE_FILE.sub("<path>", _PATH.sub("<path>", text))


POPULAR_REASON = "popular now"


@dataclass(frozen=True)
class Ranked:
    """A ranked list as the response is built from it: the recommender's answer (`of`) or the
    catalogue's popularity (`ServingState.popular`)."""

    items: list[tuple[str, float]]  # best first
    fallback: Literal["popular"] | None  # a popularity answer, or None: ranked
    ranker_version: str | None
    retrieval_version: str | None
    timings: dict[str, float]  # stage -> seconds
    fallback_reason: str | None = None  # why, as the recommender said it (e.g. unknown user)
    reasons: dict[str, str] = field(default_factory=dict)  # item_id -> why it is recommended

    @classmethod
    def of(cls, rec: Recommendation, versions: dict[str, str | None]) -> Ranked:
        """The recommender's (item, score, rank) rows; its versions, else the state's `versions`.
        A recommendation with a `fallback` (a user it cannot rank) is a popularity answer."""
        items = [(item_id, score) for item_id, score, _ in rec.items]
        return cls(
            items=items,
            fallback="popular" if rec.fallback else None,
            fallback_reason=rec.fallback or None,
            ranker_version=rec.versions.get("ranker") or versions.get("ranker"),
            retrieval_version=rec.versions.get("retrieval") or versions.get("retrieval"),
            timings=dict(rec.timings),
            reasons={item_id: why for (item_id, _), why in zip(items, rec.reasons, strict=False) if why},
        )


@dataclass(frozen=True)
class ServingState:
    catalogue: Catalogue | None
    recommender: RecommendationModel | None
    features: OnlineFeatureReader | None
    versions: dict[str, str | None]
    problems: tuple[str, ...]
    materialization: str | None = None  # online-store materialization the item features come from
    loaded_at: float = field(default_factory=time.time)

    @property
    def ready(self) -> bool:
        return not self.problems

    def with_features(self, features: OnlineFeatureReader | None, problem: str | None) -> ServingState:
        """A copy with another online-store client; feature-store problems replaced by `problem`."""
        kept = tuple(p for p in self.problems if not p.startswith(FEATURE_STORE_PROBLEM))
        return replace(self, features=features, problems=kept + ((problem,) if problem else ()))

    def public_problems(self, *hide: str) -> tuple[str, ...]:
        """The problems without paths, URIs or hosts (see `public_reason`): what an
        unauthenticated caller may read; the full text is in the server log."""
        return tuple(public_reason(p, *hide) for p in self.problems)

    def rank(self, user_id: str, k: int, user_features: dict[str, Any] | None, rules: Rules,
             as_of: datetime) -> Ranked:
        """Ask the recommender for k ranked items within the shop's rules."""
        if self.recommender is None:
            raise RuntimeError("no recommender loaded")
        rec = self.recommender.recommend(user_id, k, user_features=user_features,
                                         exclude=set(rules.exclude), category=None, as_of=as_of, rules=rules)
        return Ranked.of(rec, self.versions)

    def popular(self, user_id: str, k: int, rules: Rules) -> Ranked:
        """The degraded answer: the catalogue's most clicked items within `rules`, the user's recent
        clicks left out (empty without a catalogue)."""
        cat = self.catalogue
        seen = set(cat.recent.get(user_id, ())) if cat is not None else set()
        items = cat.popular_for(k, seen, rules=rules) if cat is not None else []
        return Ranked(items, "popular", self.versions.get("ranker"), self.versions.get("retrieval"), {},
                      reasons=dict.fromkeys((i for i, _ in items), POPULAR_REASON))

    def with_availability(self, item_ids: Sequence[str],
                          available: bool) -> tuple[ServingState, int, list[str]]:
        """Mark items in or out of stock in the recommender (in place: `Recommender.set_available`
        swaps its item table atomically) and in a new catalogue -> (state, how many changed, unknown
        ids). The caller swaps the returned state in."""
        if self.recommender is not None:
            self.recommender.set_available(list(item_ids), available)
        if self.catalogue is None:
            return self, 0, []
        catalogue, changed, unknown = self.catalogue.with_availability(item_ids, available)
        return replace(self, catalogue=catalogue), changed, unknown


FEATURE_STORE_PROBLEM = "feature store: "


def open_features(settings: Settings) -> tuple[OnlineFeatureReader | None, str | None]:
    """A new online-store client that has answered a probe read -> (client, None), or
    (None, problem) when the repo is not applied yet or the store cannot be read."""
    try:
        from features.online import OnlineFeatures  # Feast: imported when a state loads, not with serving

        features = OnlineFeatures(settings)
        features.probe()  # the repo is applied and the store answers
    except Exception as exc:  # not materialized yet, or the store is unreachable or corrupt
        return None, f"{FEATURE_STORE_PROBLEM}{type(exc).__name__}: {exc}"
    return features, None


def probe_features(features: OnlineFeatureReader) -> str | None:
    """One cheap read through the client requests use -> None when it answers, else the problem
    (worded as `load_state` words it)."""
    try:
        features.probe()
    except Exception as exc:
        return f"{FEATURE_STORE_PROBLEM}{type(exc).__name__}: {exc}"
    return None


def load_state(settings: Settings, previous: ServingState | None = None) -> ServingState:
    """Load catalogue, feature-store client and recommender; missing parts become problems.
    The feature store is always opened anew (`previous` is not reused): after a corrupted or
    replaced `feast/online.db` is restored, one reload reads the file again."""
    ws = Workspace.at(settings.home)
    problems: list[str] = []
    catalogue = None
    try:
        catalogue = load_catalogue(ws, settings.serving.recent_clicks, settings.serving.image_roots)
    except FileNotFoundError as exc:
        problems.append(f"catalogue: {exc}")
    features, problem = open_features(settings)  # a reload reopens: never `previous.features`
    if problem:
        problems.append(problem)
    recommender = None
    versions: dict[str, str | None] = {"ranker": None, "retrieval": None}
    try:
        from recsys.recommender import Recommender  # LightGBM and torch: imported when a state loads

        recommender = Recommender.load(settings, ranker_uri=f"models:/ranker@{settings.serving.alias}")
        versions = _versions_of(recommender)
        _warm_up(recommender, catalogue)
    except Exception as exc:  # no registered model yet, or it cannot be read
        problems.append(f"models (@{settings.serving.alias}): {type(exc).__name__}: {exc}")
    state = ServingState(catalogue=catalogue, recommender=recommender, features=features,
                         versions=versions, problems=tuple(problems),
                         materialization=current_materialization(ws))
    for p in problems:
        log.warning("not ready: %s", p)
    return state


def _warm_up(recommender: RecommendationModel, catalogue: Catalogue | None) -> None:
    """One full request before traffic: the first torch/LightGBM call pays lazy initialisation
    (~80 ms measured), which would otherwise land on a user's request."""
    if catalogue is None or not catalogue.popular:
        return
    try:
        recommender.recommend("__warmup__", 10, user_features=None, exclude=set(), category=None,
                              as_of=datetime.now(UTC), history=list(catalogue.popular[:3]))
    except Exception as exc:  # warming is an optimisation, never a reason to fail loading
        log.warning("warm-up request failed: %s: %s", type(exc).__name__, exc)


def _versions_of(recommender: RecommendationModel) -> dict[str, str | None]:
    return {"ranker": recommender.versions.get("ranker"), "retrieval": recommender.versions.get("retrieval")}


def registry_versions(settings: Settings) -> dict[str, str | None]:
    """Versions the alias points at now (for the poll); None where nothing is registered."""
    from recsys import tracking  # MLflow: only when the alias poll runs

    out: dict[str, str | None] = {}
    for name in ("ranker", "retrieval"):
        try:
            out[name] = tracking.resolve(settings, f"models:/{name}@{settings.serving.alias}").tag
        except LookupError:
            out[name] = None
    return out


def current_materialization(ws: Workspace) -> str | None:
    """Version of the last materialization into the online store (None: never, or no Feast)."""
    try:
        from features.jobs import materialization_version
    except ImportError:
        return None
    return materialization_version(ws)
