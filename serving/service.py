"""The request path as a plain object: `RecommendService` answers recommendations, similar items,
readiness and stock changes over the current `ServingState`, and keeps that state loaded (start-up,
reloads, the registry-alias poll, online-store checks). It knows nothing of HTTP: it raises
`NotReady`, `NotFound` and `recsys.rules.RuleError`, which `serving.app` turns into status codes,
so tests call it directly.

Request path of a recommendation: the user's features from the online store → the recommender
with the request's `recsys.rules.Rules` → optional exploration (propensities recorded) → response.
What cannot be used degrades the answer to popularity within the same rules, named in the response
(`degraded`, `fallback`) and counted in /metrics, never silently: no store client or a failing read
("feature_store", or "feature_error" for other errors), no models ("models"), a ranker that raises
("ranker_error"). The work per request is a few milliseconds of CPU under the GIL, so the methods on
the request path are plain functions the app runs inline (a thread pool would add hand-offs, not
parallelism: scale with workers instead).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import numpy as np

from recsys.config import Settings
from recsys.evaluation.policy import exploration_pool
from recsys.rules import Rules
from recsys.workspace import Workspace
from serving.exploration import choose_slate, seed_from
from serving.metrics import Metrics
from serving.protocols import OnlineFeatureReader
from serving.schemas import (
    AvailabilityChanged,
    RecommendationRequest,
    Recommendations,
    RecommendedItem,
    SimilarItems,
)
from serving.state import (
    FEATURE_STORE_PROBLEM,
    POPULAR_REASON,
    ServingState,
    current_materialization,
    load_state,
    open_features,
    probe_features,
    registry_versions,
)

log = logging.getLogger("serving")
NO_VERSIONS: dict[str, str | None] = {"ranker": None, "retrieval": None}


class StateLoader(Protocol):
    """Builds a `ServingState` (`serving.state.load_state`; tests pass one over small parts). It runs
    off the event loop, at start-up and on every reload."""

    def __call__(self, settings: Settings, previous: ServingState | None = None) -> ServingState: ...


class ServiceError(Exception):
    """A request the service cannot answer; the message is for the caller (no paths or hosts)."""


class NotReady(ServiceError):
    """Nothing to answer with yet (no catalogue, no models, no item vector), or a reload failed."""


class NotFound(ServiceError):
    """The request names an item the catalogue does not have, or one without an image."""


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reasons: tuple[str, ...]  # the problems without paths, URIs or hosts: for anyone
    problems: tuple[str, ...]  # the full text: for the admin
    versions: dict[str, str | None]


class StateHolder:
    """The current `ServingState`; swapped as one reference, reloads serialised by a lock."""

    def __init__(self, state: ServingState):
        self.current = state
        self.lock = asyncio.Lock()


class StoreLog:
    """A failing online store logs one line per `interval` seconds (the reason and how many reads
    failed since the last line), not a traceback per request; one line again when it recovers."""

    def __init__(self, interval: float):
        self.interval = interval
        self.failures = 0
        self.last: float | None = None  # monotonic time of the last line; None: the store is fine

    def failed(self, reason: str) -> None:
        self.failures += 1
        now = time.monotonic()
        if self.last is None or now - self.last >= self.interval:
            log.warning("online feature store failing, serving degraded (%d failed reads since the last "
                        "line; the next in %.0f s at the earliest): %s", self.failures, self.interval, reason)
            self.last, self.failures = now, 0

    def recovered(self, how: str) -> None:
        if self.last is not None or how != "answers":
            log.info("online feature store %s (%d failed reads since the last line)", how, self.failures)
        self.last, self.failures = None, 0


def feature_store_errors() -> tuple[type[BaseException], ...]:
    """The errors of a store that cannot be reached (degraded as "feature_store"); other errors of
    a read are "feature_error"."""
    try:  # Feast is heavy: imported when the first state is built, not with this module
        from features.store import FeatureStoreUnavailable
    except ImportError:
        return (ConnectionError, OSError, TimeoutError)
    return (FeatureStoreUnavailable, ConnectionError, OSError, TimeoutError)


def rules_of(req: RecommendationRequest) -> Rules:
    """The request's rules; `category` and `categories` together allow what both allow. Raises
    `recsys.rules.RuleError` for rules the schema let through but `Rules` refuses."""
    categories = frozenset(req.categories) if req.categories else None
    if req.category is not None:
        categories = frozenset({req.category}) if categories is None else categories & {req.category}
    return Rules(categories=categories, exclude_categories=frozenset(req.exclude_categories),
                 min_price=req.min_price, max_price=req.max_price, exclude=frozenset(req.exclude),
                 max_per_category=req.max_per_category, diversity=req.diversity)


def loading_state() -> ServingState:
    return ServingState(None, None, None, dict(NO_VERSIONS), ("loading",))


class RecommendService:
    """One worker's request path and the state it answers from.

    `open()` once per event loop, then `load_initial()`; the request methods (`recommend`,
    `similar`, `image_path`) are synchronous and take one reference to the state at their start,
    so a reload never shows a request half an old and half a new model."""

    def __init__(self, settings: Settings, loader: StateLoader = load_state, metrics: Metrics | None = None):
        self.settings = settings
        self.cfg = settings.serving
        self.ws = Workspace.at(settings.home)
        self.loader = loader
        self.metrics = metrics or Metrics()
        self.unavailable = feature_store_errors()
        self.store_log = StoreLog(self.cfg.store_check_seconds or 30.0)
        # item_id -> available, as set by `set_availability`; re-applied to every state this worker
        # loads until it restarts (durable stock changes go through `recsys import items`)
        self.availability: dict[str, bool] = {}
        self.holder = StateHolder(loading_state())

    @property
    def state(self) -> ServingState:
        return self.holder.current

    # ---------------------------------------------------------------- loading and swapping
    def open(self) -> None:
        """Start (again) from the "loading" state, with a lock of the running event loop."""
        self.holder = StateHolder(loading_state())

    def load(self, previous: ServingState | None) -> ServingState:
        """A new state from the loader, with the admin's availability changes applied (blocking)."""
        state = self.loader(self.settings, previous=previous)
        for flag in (False, True):
            ids = [i for i, a in self.availability.items() if a is flag]
            if ids:
                state = state.with_availability(ids, flag)[0]
        if "torch" in sys.modules:  # one torch thread per process; scale by workers
            sys.modules["torch"].set_num_threads(1)
        gc.unfreeze()  # let a previous state's objects be collected once no request holds them
        gc.collect()
        gc.freeze()  # keep the loaded models out of every later GC pass (p99)
        return state

    def swap_in(self, new: ServingState) -> None:
        self.holder.current = new
        self.metrics.set_versions(new.versions, new.ready)

    async def load_initial(self) -> None:
        """The first state; a loader that raises gives a not-ready state that says why."""
        try:
            state = await asyncio.to_thread(self.load, None)
        except Exception as exc:  # a bug in a loader must not kill the process: report it
            log.exception("loading the serving state failed")
            state = ServingState(None, None, None, dict(NO_VERSIONS),
                                 (f"loading failed: {type(exc).__name__}: {exc}",))
        self.swap_in(state)

    async def reload(self) -> tuple[bool, ServingState]:
        """Load a new state beside the old one; swap only if it is at least as usable ->
        (swapped, the new state)."""
        holder = self.holder
        async with holder.lock:
            old = holder.current
            new = await asyncio.to_thread(self.load, old)
            if new.ready or not old.ready:
                self.swap_in(new)
                self.metrics.reloads.labels("swapped").inc()
                log.info("reloaded: %s", new.versions)
                return True, new
            self.metrics.reloads.labels("kept_old").inc()
            log.warning("reload kept the previous models: %s", "; ".join(new.problems))
            return False, new

    async def poll_alias(self) -> None:
        """Reload when the registry alias moved or a new materialization landed (every
        `serving.poll_seconds`, until cancelled)."""
        while True:
            await asyncio.sleep(self.cfg.poll_seconds)
            try:
                seen = await asyncio.to_thread(registry_versions, self.settings)
                state = self.state
                materialized = await asyncio.to_thread(current_materialization, self.ws)
                if any(seen.values()) and seen != state.versions:
                    log.info("alias @%s moved %s -> %s; reloading", self.cfg.alias, state.versions, seen)
                    await self.reload()
                elif materialized != state.materialization:
                    log.info("new materialization %s; reloading item features", materialized)
                    await self.reload()
            except Exception:
                log.exception("alias poll failed; trying again in %.0f s", self.cfg.poll_seconds)

    async def check_store(self) -> None:
        """Probe the online store; reopen the client when the probe fails or its sqlite file was
        replaced (a started server that failed to open it tries to open it again)."""
        state = self.state
        features = state.features
        new: OnlineFeatureReader | None
        if features is None:
            if not any(p.startswith(FEATURE_STORE_PROBLEM) for p in state.problems):
                return  # still loading, or a state without a store
            new, problem = await asyncio.to_thread(open_features, self.settings)
            how = "opened"
        else:
            problem = await asyncio.to_thread(probe_features, features)
            replaced = features.replaced()
            if problem is None and not replaced:
                self.store_log.recovered("answers")
                if any(p.startswith(FEATURE_STORE_PROBLEM) for p in state.problems):
                    await self._swap_features(state, features, None)  # it came back by itself
                return
            try:
                new = await asyncio.to_thread(features.reopened)
                problem = await asyncio.to_thread(probe_features, new)
            except Exception as exc:
                new, problem = features, f"{FEATURE_STORE_PROBLEM}{type(exc).__name__}: {exc}"
            if problem is not None:
                new = features  # keep the old client; the next check tries again
            how = "reopened (its file was replaced)" if replaced and problem is None else "reopened"
        if problem is not None:
            self.store_log.failed(problem)
        else:
            self.store_log.recovered(how)
        await self._swap_features(state, new, problem)

    async def _swap_features(self, seen: ServingState, features: OnlineFeatureReader | None,
                             problem: str | None) -> None:
        """Swap in another store client, unless a reload replaced the state meanwhile."""
        async with self.holder.lock:
            current = self.holder.current
            if current.features is seen.features:
                self.swap_in(current.with_features(features, problem))

    async def watch_store(self) -> None:
        """`check_store` every `serving.store_check_seconds`, until cancelled."""
        while True:
            await asyncio.sleep(self.cfg.store_check_seconds)
            try:
                await self.check_store()
            except Exception as exc:  # a bug here must not stop the checks, nor fill the log
                log.warning("online store check failed: %s: %s", type(exc).__name__, exc)

    async def set_availability(self, item_ids: list[str], available: bool) -> AvailabilityChanged:
        """Mark items in or out of stock at once, in this worker and every state it loads later."""
        holder = self.holder
        async with holder.lock:  # not between a reload's read of the tables and its swap
            state = holder.current
            if state.catalogue is None and state.recommender is None:
                raise self._not_ready(state)
            new, changed, unknown = state.with_availability(item_ids, available)
            for item_id in item_ids:
                if item_id not in unknown:
                    self.availability[item_id] = available
            holder.current = new
        matched = len(set(item_ids)) - len(set(unknown))
        self.metrics.availability_changes.inc(changed)
        log.info("availability: %d of %d items set %s (%d changed, %d unknown)", matched, len(item_ids),
                 "available" if available else "unavailable", changed, len(unknown))
        return AvailabilityChanged(matched=matched, changed=changed, unknown=unknown[:20])

    async def readiness(self) -> Readiness:
        """Models, index and feature store loaded, and the online store answers a probe read now."""
        state = self.state
        if state.features is not None:
            problem = await asyncio.to_thread(probe_features, state.features)
            if problem is not None:
                self.store_log.failed(problem)
                state = replace(state, problems=(*state.problems, problem))
        return Readiness(state.ready, state.public_problems(str(self.ws.root)), state.problems,
                         state.versions)

    def public_reason(self, state: ServingState) -> str:
        return "; ".join(state.public_problems(str(self.ws.root)))

    def _not_ready(self, state: ServingState) -> NotReady:
        return NotReady("not ready: " + self.public_reason(state))

    # ---------------------------------------------------------------- the request path
    def recommend(self, req: RecommendationRequest) -> Recommendations:
        """Top-k items for `req` within its rules; degraded to popularity (and said so) where a part
        fails. Raises `NotReady` without catalogue and models, `RuleError` for rules out of bounds."""
        state = self.state
        cfg, metrics = self.cfg, self.metrics
        if state.recommender is None and state.catalogue is None:
            raise self._not_ready(state)
        request_id = uuid.uuid4().hex
        start = time.perf_counter()
        as_of = req.timestamp or datetime.now(UTC)
        if as_of.tzinfo is None:
            as_of = as_of.replace(tzinfo=UTC)
        rules = rules_of(req)
        timings: dict[str, float] = {}
        degraded: str | None = None
        user_features = None
        if state.features is None:
            degraded = "feature_store"
        else:
            t = time.perf_counter()
            try:
                user_features = state.features.user(req.user_id)
            except Exception as exc:  # a broken store must not fail the request: degrade
                degraded = "feature_store" if isinstance(exc, self.unavailable) else "feature_error"
                self.store_log.failed(f"{type(exc).__name__}: {exc}")  # a line per interval, not per request
                log.debug("reading user features failed", exc_info=True)
            # the Feast online read; the ranker reports its own feature assembly as "features"
            timings["user_features"] = time.perf_counter() - t
        if state.recommender is None:
            degraded = degraded or "models"
        explore = cfg.exploration
        ranked = None
        if degraded is None:
            pool = req.k if explore == "none" else exploration_pool(req.k)
            try:
                ranked = state.rank(req.user_id, pool, user_features, rules, as_of)
                timings.update(ranked.timings)
            except Exception:  # one bad request must not take the endpoint down: degrade, loudly
                log.exception("ranking failed for user %s; serving popularity", req.user_id)
                degraded = "ranker_error"
        if ranked is None:
            t = time.perf_counter()
            ranked = state.popular(req.user_id, req.k, rules)
            timings["popular"] = time.perf_counter() - t
            metrics.degraded.labels(degraded).inc()
            explore = "none"
        if ranked.fallback:
            explore = "none"
            metrics.fallbacks.labels(ranked.fallback_reason or ranked.fallback).inc()
        t = time.perf_counter()
        slate = choose_slate(ranked.items, req.k, explore, cfg.temperature,
                             np.random.default_rng(seed_from(request_id)) if explore != "none" else None)
        timings["explore"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - start
        for stage, seconds in timings.items():
            metrics.child(metrics.stage, stage).observe(seconds)
        cat = state.catalogue
        out = []
        for rank, (item_id, score, propensity, per_rank) in enumerate(slate, start=1):
            info = cat.items.get(item_id) if cat is not None else None
            out.append(RecommendedItem(
                item_id=item_id, rank=rank, score=score, propensity=propensity,
                slot_propensities=list(per_rank),
                title=info.title if info else None, category=info.category if info else None,
                image_source=info.image_source if info else None,
                reason=ranked.reasons.get(item_id, POPULAR_REASON if ranked.fallback else None)))
        policy = "popular" if ranked.fallback else (
            f"{ranked.ranker_version or 'ranker'}+{ranked.retrieval_version or 'retrieval'}:{explore}")
        ms = {k: round(v * 1000, 3) for k, v in timings.items()}
        # DEBUG, not INFO: a line per request cost ~0.05-0.1 ms of the ~2.5 ms; the stage timings are
        # in /metrics and in the response, degradations and failures are logged as warnings above
        log.debug("recommend request_id=%s user=%s k=%d n=%d fallback=%s degraded=%s ms=%s", request_id,
                  req.user_id, req.k, len(out), ranked.fallback, degraded, ms)
        return Recommendations(
            request_id=request_id, user_id=req.user_id, items=out, ranker_version=ranked.ranker_version,
            retrieval_version=ranked.retrieval_version, policy=policy,
            fallback=ranked.fallback, degraded=degraded is not None, timings_ms=ms)

    def similar(self, item_id: str, k: int) -> SimilarItems:
        """Nearest items by item vector (cosine). Raises `NotFound` for an item not in the
        catalogue, `NotReady` without a catalogue or without the item's vector."""
        state = self.state
        cat = state.catalogue
        if cat is None:
            raise self._not_ready(state)
        if item_id not in cat.items:
            raise NotFound(f"unknown item_id '{item_id}'")
        t = time.perf_counter()
        found = cat.similar(item_id, k)
        if found is None:
            raise NotReady(f"no item vector for '{item_id}': run `recsys backfill` first")
        self.metrics.child(self.metrics.stage, "similar").observe(time.perf_counter() - t)
        reason = f"similar to {cat.items[item_id].title or item_id}"
        items = [RecommendedItem(item_id=i, rank=r, score=s, propensity=1.0, title=cat.items[i].title,
                                 category=cat.items[i].category, image_source=cat.items[i].image_source,
                                 reason=reason)
                 for r, (i, s) in enumerate(found, start=1)]
        return SimilarItems(item_id=item_id, items=items, retrieval_version=state.versions.get("retrieval"))

    def image_path(self, item_id: str) -> Path:
        """The image file of an item in the items table (see `Catalogue.image_path`), or `NotFound`."""
        cat = self.state.catalogue
        path = cat.image_path(item_id) if cat is not None else None
        if path is None:
            raise NotFound(f"no image for item_id '{item_id}'")
        return path
