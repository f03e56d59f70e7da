"""The HTTP API: `create_app(settings)` builds one FastAPI app; everything it holds lives in
`app.state` (loaded in the lifespan), never in module globals.

Request path of a recommendation: admission (`Guard`: past `serving.max_in_flight` requests held,
503 + Retry-After) → the user's features from the Feast online store → the recommender with the
request's `recsys.rules.Rules` (filters and unavailable items masked before the candidate search,
then user tower → ANN top-N, seen items filtered → in-process item features → LightGBM →
per-category caps and diversity, a reason per item) → optional exploration (propensities
recorded) → response. Without models or features the answer is popularity within the same rules.
The work per request is a few milliseconds of CPU under the GIL, so endpoints are `async def` and
run it inline: a thread pool would add hand-offs, not parallelism (scale with workers instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import secrets
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from recsys.config import Settings
from recsys.data import columns as C
from recsys.rules import RuleError, Rules
from recsys.runtime import configure_threads
from recsys.workspace import Workspace
from serving import ui
from serving.events import EventWriter, QueueFull
from serving.exploration import choose_slate, seed_from
from serving.metrics import Metrics
from serving.schemas import (
    ID_MAX,
    ID_PATTERN,
    MAX_K,
    AvailabilityChange,
    AvailabilityChanged,
    Error,
    EventBatch,
    EventsAccepted,
    RecommendationQuery,
    RecommendationRequest,
    Recommendations,
    RecommendedItem,
    SimilarItems,
)
from serving.state import (
    FEATURE_STORE_PROBLEM,
    Ranked,
    ServingState,
    current_materialization,
    load_state,
    open_features,
    probe_features,
    public_reason,
    registry_versions,
)

log = logging.getLogger("serving")
Loader = Callable[..., ServingState]
UserId = Path(min_length=1, max_length=ID_MAX, pattern=ID_PATTERN, description="user id")
ItemId = Path(min_length=1, max_length=ID_MAX, pattern=ID_PATTERN, description="item id")
K = Query(10, ge=1, le=MAX_K, description="number of items, 1..100")
ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": Error, "description": "invalid input"},
    503: {"model": Error, "description": "not ready, or overloaded (with Retry-After)"},
}
ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": Error}, 403: {"model": Error}}


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


def _feature_store_errors() -> tuple[type[BaseException], ...]:
    try:
        from features.online import FeatureStoreUnavailable
    except ImportError:
        return (ConnectionError, OSError, TimeoutError)
    return (FeatureStoreUnavailable, ConnectionError, OSError, TimeoutError)


def create_app(settings: Settings, loader: Loader = load_state) -> FastAPI:
    """Build the app. `loader(settings, previous=...)` returns a `ServingState` (tests pass
    one that builds small real components); it runs off the event loop, at start-up and on
    every reload."""
    configure_threads(1)
    cfg = settings.serving
    ws = Workspace.at(settings.home)
    metrics = Metrics()
    unavailable = _feature_store_errors()
    store_log = StoreLog(cfg.store_check_seconds or 30.0)

    # item_id -> available, as set by POST /v1/admin/availability; re-applied to every state this
    # worker loads until it restarts (durable stock changes go through `recsys import items`)
    availability: dict[str, bool] = {}

    def load(previous: ServingState | None) -> ServingState:
        state = loader(settings, previous=previous)
        for flag in (False, True):
            ids = [i for i, a in availability.items() if a is flag]
            if ids:
                state = state.with_availability(ids, flag)[0]
        if "torch" in sys.modules:  # one torch thread per process; scale by workers
            sys.modules["torch"].set_num_threads(1)
        gc.unfreeze()  # let a previous state's objects be collected once no request holds them
        gc.collect()
        gc.freeze()  # keep the loaded models out of every later GC pass (p99)
        return state

    async def swap_in(new: ServingState) -> None:
        app.state.holder.current = new
        metrics.set_versions(new.versions, new.ready)

    async def initial_load() -> None:
        try:
            state = await asyncio.to_thread(load, None)
        except Exception as exc:  # a bug in a loader must not kill the process: report it
            log.exception("loading the serving state failed")
            state = ServingState(None, None, None, {"ranker": None, "retrieval": None},
                                 (f"loading failed: {type(exc).__name__}: {exc}",))
        await swap_in(state)

    async def reload() -> tuple[bool, ServingState]:
        """Load a new state beside the old one; swap only if it is at least as usable."""
        holder: StateHolder = app.state.holder
        async with holder.lock:
            old = holder.current
            new = await asyncio.to_thread(load, old)
            if new.ready or not old.ready:
                await swap_in(new)
                metrics.reloads.labels("swapped").inc()
                log.info("reloaded: %s", new.versions)
                return True, new
            metrics.reloads.labels("kept_old").inc()
            log.warning("reload kept the previous models: %s", "; ".join(new.problems))
            return False, new

    async def poll_alias() -> None:
        while True:
            await asyncio.sleep(cfg.poll_seconds)
            try:
                seen = await asyncio.to_thread(registry_versions, settings)
                state: ServingState = app.state.holder.current
                materialized = await asyncio.to_thread(current_materialization, ws)
                if any(seen.values()) and seen != state.versions:
                    log.info("alias @%s moved %s -> %s; reloading", cfg.alias, state.versions, seen)
                    await reload()
                elif materialized != state.materialization:
                    log.info("new materialization %s; reloading item features", materialized)
                    await reload()
            except Exception:
                log.exception("alias poll failed; trying again in %.0f s", cfg.poll_seconds)

    async def check_store() -> None:
        """Probe the online store; reopen the client when the probe fails or its sqlite file was
        replaced (a started server that failed to open it tries to open it again)."""
        holder: StateHolder = app.state.holder
        state: ServingState = holder.current
        features = state.features
        if features is None:
            if not any(p.startswith(FEATURE_STORE_PROBLEM) for p in state.problems):
                return  # still loading, or a state without a store
            new, problem = await asyncio.to_thread(open_features, settings)
            how = "opened"
        else:
            problem = await asyncio.to_thread(probe_features, features)
            replaced = bool(getattr(features, "replaced", lambda: False)())
            if problem is None and not replaced:
                store_log.recovered("answers")
                if any(p.startswith(FEATURE_STORE_PROBLEM) for p in state.problems):
                    await swap_features(state, features, None)  # it came back by itself
                return
            reopen = getattr(features, "reopened", None)
            if reopen is None:  # a client that cannot reopen: report it as it is
                new = features
            else:
                try:
                    new = await asyncio.to_thread(reopen)
                    problem = await asyncio.to_thread(probe_features, new)
                except Exception as exc:
                    new, problem = features, f"{FEATURE_STORE_PROBLEM}{type(exc).__name__}: {exc}"
                if problem is not None:
                    new = features  # keep the old client; the next check tries again
            how = "reopened (its file was replaced)" if replaced and problem is None else "reopened"
        if problem is not None:
            store_log.failed(problem)
        else:
            store_log.recovered(how)
        await swap_features(state, new, problem)

    async def swap_features(seen: ServingState, features: Any, problem: str | None) -> None:
        """Swap in another store client, unless a reload replaced the state meanwhile."""
        holder: StateHolder = app.state.holder
        async with holder.lock:
            current: ServingState = holder.current
            if current.features is seen.features:
                await swap_in(current.with_features(features, problem))

    async def watch_store() -> None:
        while True:
            await asyncio.sleep(cfg.store_check_seconds)
            try:
                await check_store()
            except Exception as exc:  # a bug here must not stop the checks, nor fill the log
                log.warning("online store check failed: %s: %s", type(exc).__name__, exc)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.holder = StateHolder(ServingState(None, None, None, {"ranker": None, "retrieval": None},
                                                    ("loading",)))
        # replays the write-ahead log of a writer that died (kill -9) before anything is served
        app.state.events = EventWriter(ws.events_dir, capacity=cfg.event_queue, batch=cfg.event_batch,
                                       flush_seconds=cfg.event_flush_seconds,
                                       on_write=metrics.events_written.inc, durability=cfg.event_durability,
                                       dedup_window=cfg.event_dedup_window)
        tasks = [asyncio.create_task(initial_load())]
        if cfg.poll_seconds > 0:
            tasks.append(asyncio.create_task(poll_alias()))
        if cfg.store_check_seconds > 0:
            tasks.append(asyncio.create_task(watch_store()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await asyncio.to_thread(app.state.events.close)
            log.info("event writer closed: %d events written", app.state.events.written)

    app = FastAPI(
        title="recsys",
        version="1",
        summary="Multimodal recommendations: two-tower retrieval, LightGBM ranking, Feast features.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.add_middleware(Guard, metrics=metrics, max_body=cfg.max_body_bytes, max_in_flight=cfg.max_in_flight)
    _install_error_handlers(app)

    # ---------------------------------------------------------------- the request path
    def fail(status: int, message: str) -> HTTPException:
        return HTTPException(status, message)

    async def recommend(req: RecommendationRequest) -> Recommendations:
        state: ServingState = app.state.holder.current
        if state.recommender is None and state.catalogue is None:
            raise fail(503, "not ready: " + "; ".join(state.public_problems(str(ws.root))))
        request_id = uuid.uuid4().hex
        start = time.perf_counter()
        as_of = req.timestamp or datetime.now(UTC)
        if as_of.tzinfo is None:
            as_of = as_of.replace(tzinfo=UTC)
        rules = rules_of(req)
        timings: dict[str, float] = {}
        degraded: str | None = None
        user_features: dict[str, Any] | None = None
        if state.features is None:
            degraded = "feature_store"
        else:
            t = time.perf_counter()
            try:
                user_features = state.features.user(req.user_id)
            except Exception as exc:  # a broken store must not fail the request: degrade
                degraded = "feature_store" if isinstance(exc, unavailable) else "feature_error"
                store_log.failed(f"{type(exc).__name__}: {exc}")  # a line per interval, not per request
                log.debug("reading user features failed", exc_info=True)
            # the Feast online read; the ranker reports its own feature assembly as "features"
            timings["user_features"] = time.perf_counter() - t
        if state.recommender is None:
            degraded = degraded or "models"
        explore = cfg.exploration
        ranked = None
        if degraded is None:
            pool = req.k if explore == "none" else min(max(3 * req.k, 20), 300)
            try:
                ranked = state.rank(req.user_id, pool, user_features, rules, as_of)
                timings.update(ranked.timings)
            except Exception:  # one bad request must not take the endpoint down: degrade, loudly
                log.exception("ranking failed for user %s; serving popularity", req.user_id)
                degraded = "ranker_error"
        if ranked is None:
            t = time.perf_counter()
            seen = set(state.catalogue.recent.get(req.user_id, ()) if state.catalogue else ())
            items = state.catalogue.popular_for(req.k, seen, rules=rules) if state.catalogue else []
            ranked = Ranked(items, "popular", state.versions.get("ranker"),
                            state.versions.get("retrieval"), {}, reasons=dict.fromkeys(
                                (i for i, _ in items), POPULAR_REASON))
            timings["popular"] = time.perf_counter() - t
            metrics.degraded.labels(degraded).inc()
            explore = "none"
        if ranked.fallback:
            explore = "none"
            metrics.fallbacks.labels(ranked.fallback_reason or ranked.fallback).inc()
        t = time.perf_counter()
        slate = choose_slate(ranked.items, req.k, explore, cfg.epsilon, cfg.temperature,
                             np.random.default_rng(seed_from(request_id)) if explore != "none" else None)
        timings["explore"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - start
        for stage, seconds in timings.items():
            metrics.child(metrics.stage, stage).observe(seconds)
        cat = state.catalogue
        out = []
        for rank, (item_id, score, propensity) in enumerate(slate, start=1):
            info = cat.items.get(item_id) if cat is not None else None
            out.append(RecommendedItem(
                item_id=item_id, rank=rank, score=score, propensity=propensity,
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

    # ---------------------------------------------------------------- routes
    @app.get("/v1/users/{user_id}/recommendations", response_model=Recommendations, responses=ERRORS,
             tags=["recommendations"])
    async def user_recommendations(params: Annotated[RecommendationQuery, Query()],
                                   user_id: str = UserId) -> Recommendations:
        """Top-k items for a user within the shop's rules (popularity within them for an unknown
        user); every item says why it is there (`reason`)."""
        return await recommend(RecommendationRequest(user_id=user_id, **params.model_dump()))

    @app.post("/v1/recommendations", response_model=Recommendations, responses=ERRORS,
              tags=["recommendations"])
    async def post_recommendations(body: RecommendationRequest) -> Recommendations:
        """Top-k items within the shop's rules (filters, exclusions, per-category caps, diversity)
        at a context time."""
        return await recommend(body)

    @app.get("/v1/items/{item_id}/similar", response_model=SimilarItems, responses=ERRORS, tags=["items"])
    async def similar_items(item_id: str = ItemId, k: int = K) -> SimilarItems:
        """Nearest items by item vector (cosine)."""
        state: ServingState = app.state.holder.current
        cat = state.catalogue
        if cat is None:
            raise fail(503, "not ready: " + "; ".join(state.public_problems(str(ws.root))))
        if item_id not in cat.items:
            raise fail(404, f"unknown item_id '{item_id}'")
        t = time.perf_counter()
        found = cat.similar(item_id, k)
        if found is None:
            raise fail(503, f"no item vector for '{item_id}': run `recsys backfill` first")
        metrics.child(metrics.stage, "similar").observe(time.perf_counter() - t)
        reason = f"similar to {cat.items[item_id].title or item_id}"
        items = [RecommendedItem(item_id=i, rank=r, score=s, propensity=1.0, title=cat.items[i].title,
                                 category=cat.items[i].category, image_source=cat.items[i].image_source,
                                 reason=reason)
                 for r, (i, s) in enumerate(found, start=1)]
        return SimilarItems(item_id=item_id, items=items, retrieval_version=state.versions.get("retrieval"))

    @app.post("/v1/events", status_code=202, response_model=EventsAccepted, tags=["events"],
              responses={**ERRORS, 413: {"model": Error}}, response_model_exclude_defaults=True)
    async def post_events(body: EventBatch) -> EventsAccepted:
        """Record impressions and clicks (the impressions contract). 202: on disk (write-ahead log,
        fsynced); an event whose (request_id, position) was recorded before is dropped as a duplicate."""
        now = datetime.now(UTC)
        rows = []
        for e in body.events:
            ts = e.event_timestamp or now
            ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
            rows.append({C.REQUEST_ID: e.request_id, C.USER_ID: e.user_id, C.ITEM_ID: e.item_id,
                         C.POSITION: e.position, C.EVENT_TIMESTAMP: ts, C.CLICKED: e.clicked,
                         C.PROPENSITY: e.propensity, C.POLICY: e.policy or "unknown"})
        try:
            receipt = app.state.events.append(rows)
        except QueueFull as exc:
            metrics.events_rejected.inc(len(rows))
            raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from exc
        try:
            await receipt.wait()  # group commit: one fsync for every request waiting
        except OSError as exc:
            metrics.events_rejected.inc(len(rows))
            raise HTTPException(503, f"events could not be written: {exc}",
                                headers={"Retry-After": "1"}) from exc
        metrics.events_accepted.inc(receipt.accepted)
        metrics.events_duplicates.inc(receipt.duplicates)
        return EventsAccepted(accepted=receipt.accepted, duplicates=receipt.duplicates)

    def require_admin(x_api_key: str | None) -> None:
        if not cfg.api_key:
            raise fail(403, "admin is disabled: set serving.api_key (RECSYS_SERVING__API_KEY)")
        if not x_api_key:
            raise HTTPException(401, "missing X-API-Key header", headers={"WWW-Authenticate": "ApiKey"})
        if not secrets.compare_digest(x_api_key.encode(), cfg.api_key.encode()):
            raise fail(403, "wrong API key")

    @app.post("/v1/admin/reload", tags=["admin"], responses=ADMIN_ERRORS)
    async def admin_reload(x_api_key: str | None = Header(None)) -> dict[str, Any]:
        """Reload models by alias; in-flight requests finish on the old ones. Needs X-API-Key."""
        require_admin(x_api_key)
        swapped, new = await reload()
        if not swapped:
            raise fail(503, "reload failed, kept the previous models: " + "; ".join(new.problems))
        return {"swapped": True, "versions": new.versions, "ready": new.ready, "problems": list(new.problems)}

    @app.post("/v1/admin/availability", tags=["admin"], response_model=AvailabilityChanged,
              responses={**ADMIN_ERRORS, 422: {"model": Error}, 503: {"model": Error}})
    async def admin_availability(body: AvailabilityChange,
                                 x_api_key: str | None = Header(None)) -> AvailabilityChanged:
        """Mark items in or out of stock at once: an unavailable item is never recommended. Needs
        X-API-Key. Applies to the worker that answers, and to every model it reloads, until it
        restarts; the items table's `available` column (`recsys import items`) is the durable record."""
        require_admin(x_api_key)
        holder: StateHolder = app.state.holder
        async with holder.lock:  # not between a reload's read of the tables and its swap
            state: ServingState = holder.current
            if state.catalogue is None and state.recommender is None:
                raise fail(503, "not ready: " + "; ".join(state.public_problems(str(ws.root))))
            new, changed, unknown = state.with_availability(body.item_ids, body.available)
            for item_id in body.item_ids:
                if item_id not in unknown:
                    availability[item_id] = body.available
            holder.current = new
        matched = len(set(body.item_ids)) - len(set(unknown))
        metrics.availability_changes.inc(changed)
        log.info("availability: %d of %d items set %s (%d changed, %d unknown)", matched, len(body.item_ids),
                 "available" if body.available else "unavailable", changed, len(unknown))
        return AvailabilityChanged(matched=matched, changed=changed, unknown=unknown[:20])

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, Any]:
        """The process is up (whether or not models are loaded); pid: which worker answered."""
        return {"status": "ok", "pid": os.getpid()}

    @app.get("/readyz", tags=["ops"], responses={503: {"description": "not ready, with the reasons"}})
    async def readyz(x_api_key: str | None = Header(None)) -> JSONResponse:
        """Models, index and feature store loaded, and the online store answers a probe read: 200;
        otherwise 503 with the reasons (without paths or hosts; with the admin X-API-Key also
        `details`, the full text)."""
        state: ServingState = app.state.holder.current
        if state.features is not None:
            problem = await asyncio.to_thread(probe_features, state.features)
            if problem is not None:
                store_log.failed(problem)
                state = replace(state, problems=(*state.problems, problem))
        body = {"ready": state.ready, "reasons": list(state.public_problems(str(ws.root))),
                "versions": state.versions, "pid": os.getpid()}
        if cfg.api_key and x_api_key and secrets.compare_digest(x_api_key.encode(), cfg.api_key.encode()):
            body["details"] = list(state.problems)
        return JSONResponse(body, status_code=200 if state.ready else 503)

    @app.get("/metrics", tags=["ops"])
    async def prometheus_metrics() -> Response:
        """Prometheus text format."""
        metrics.events_queued.set(app.state.events.depth)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/noop", tags=["ops"], include_in_schema=False)
    async def noop() -> dict[str, bool]:
        """The ceiling of the stack (benchmarks compare against it)."""
        return {"ok": True}

    # ---------------------------------------------------------------- the HTML page
    @app.get("/ui/users/{user_id}", response_class=HTMLResponse, tags=["ui"])
    async def user_page(user_id: str = UserId, k: int = K) -> HTMLResponse:
        """A user's recent clicks and recommendations as thumbnails."""
        recs = await recommend(RecommendationRequest(user_id=user_id, k=k))
        state: ServingState = app.state.holder.current
        return HTMLResponse(ui.user_page(user_id, state.catalogue, recs))

    @app.get("/ui/images/{item_id}", tags=["ui"], response_class=FileResponse)
    async def item_image(item_id: str = ItemId) -> FileResponse:
        """The image of an item in the items table (nothing else is served)."""
        cat = app.state.holder.current.catalogue
        path = cat.image_path(item_id) if cat is not None else None
        if path is None:
            raise fail(404, f"no image for item_id '{item_id}'")
        return FileResponse(path, headers={"Cache-Control": "max-age=3600"})

    return app


POPULAR_REASON = "popular now"


def rules_of(req: RecommendationRequest) -> Rules:
    """The request's rules; `category` and `categories` together allow what both allow."""
    categories = frozenset(req.categories) if req.categories else None
    if req.category is not None:
        categories = frozenset({req.category}) if categories is None else categories & {req.category}
    try:
        return Rules(categories=categories, exclude_categories=frozenset(req.exclude_categories),
                     min_price=req.min_price, max_price=req.max_price, exclude=frozenset(req.exclude),
                     max_per_category=req.max_per_category, diversity=req.diversity)
    except RuleError as exc:  # the schema checks the same bounds; kept for rules it does not know
        raise RequestValidationError([{"loc": ("query",), "msg": str(exc), "type": "value_error"}]) from exc


# -------------------------------------------------------------------- errors as JSON
def _install_error_handlers(app: FastAPI) -> None:
    names = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
             405: "method_not_allowed", 413: "payload_too_large", 422: "invalid_request",
             503: "unavailable"}

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": names.get(exc.status_code, "error"), "message": str(exc.detail)},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            parts.append(f"{where}: {err.get('msg')}")
        detail = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        return JSONResponse({"error": "invalid_request", "message": "; ".join(parts), "detail": detail},
                            status_code=422)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        message = public_reason(f"{type(exc).__name__}: {exc}", os.path.abspath(app.state.settings.home))
        return JSONResponse({"error": "internal", "message": message}, status_code=500)


def sheddable(path: str) -> bool:
    """The routes that do model work (recommendations, similar items, the user page); health,
    metrics, events and admin are never shed."""
    return (path == "/v1/recommendations" or path.startswith(("/v1/items/", "/ui/users/"))
            or (path.startswith("/v1/users/") and path.endswith("/recommendations")))


class Guard:
    """ASGI middleware: caps request bodies (413), sheds load (503) and counts requests and
    latency per route.

    Load shedding: the request path runs inline on the event loop, so requests do not wait
    inside the app but in the loop's queue of started tasks. A request on a `sheddable` route
    counts itself in, then yields once, so every request that has arrived meanwhile has counted
    itself in too before any model work runs; one that finds `max_in_flight` already held is
    answered 503 with `Retry-After` at once (no body read, no model work). The wait of a
    request that is served is thereby bounded by about `max_in_flight` requests' work. A
    request counts from its headers on: a client that stalls its upload holds its slot until
    it finishes, so put a proxy that buffers bodies (as nginx does by default) in front."""

    def __init__(self, app: Any, metrics: Metrics, max_body: int, max_in_flight: int = 0):
        self.app = app
        self.metrics = metrics
        self.max_body = max_body
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        counted = self.max_in_flight > 0 and sheddable(scope["path"])
        if counted:
            if self.in_flight >= self.max_in_flight:
                await self._shed(scope, send_status, start)
                return
            self.in_flight += 1
            self.metrics.in_flight.set(self.in_flight)
        try:
            if counted:
                await asyncio.sleep(0)  # let the requests that arrived meanwhile count themselves in
            length = dict(scope.get("headers") or ()).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                await self._too_large(send_status)
                return
            if scope["method"] in ("POST", "PUT", "PATCH"):
                body, too_large = await self._read_body(receive)
                if too_large:
                    await self._too_large(send_status)
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send_status)
        finally:
            if counted:
                self.in_flight -= 1
                self.metrics.in_flight.set(self.in_flight)
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            m = self.metrics
            m.child(m.requests, label, scope["method"], str(status["code"])).inc()
            m.child(m.latency, label).observe(time.perf_counter() - start)

    async def _shed(self, scope: dict, send: Callable, start: float) -> None:
        m = self.metrics
        m.shed.inc()
        message = f"this worker holds {self.max_in_flight} requests (serving.max_in_flight); retry shortly"
        response = JSONResponse({"error": "overloaded", "message": message}, status_code=503,
                                headers={"Retry-After": "1"})
        await response({"type": "http"}, _replay(b"", None), send)
        m.child(m.requests, "shed", scope["method"], "503").inc()
        m.child(m.latency, "shed").observe(time.perf_counter() - start)

    async def _read_body(self, receive: Callable) -> tuple[bytes, bool]:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return b"", True
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        return b"".join(chunks), False

    async def _too_large(self, send: Callable) -> None:
        response = JSONResponse({"error": "payload_too_large",
                                 "message": f"request body over {self.max_body} bytes"}, status_code=413)
        await response({"type": "http"}, _replay(b"", None), send)


def _replay(body: bytes, then: Callable | None) -> Callable:
    """A `receive` that hands the app the body already read, then the client's own messages."""
    sent = {"done": False}

    async def receive() -> dict:
        if not sent["done"]:
            sent["done"] = True
            return {"type": "http.request", "body": body, "more_body": False}
        if then is None:
            return {"type": "http.disconnect"}
        return await then()

    return receive


def app_from_env() -> FastAPI:
    """uvicorn factory (`serving.app:app_from_env --factory`): settings handed over by
    `recsys serve` / `start_server`, else recsys.toml and RECSYS_* variables."""
    from recsys.config import Settings, load_settings
    from serving.process import SETTINGS_ENV

    if not logging.getLogger().handlers:  # uvicorn configures only its own loggers
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        for noisy in ("alembic", "mlflow", "feast", "urllib3", "httpx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    raw = os.environ.get(SETTINGS_ENV)
    settings = Settings.model_validate_json(raw) if raw else load_settings()
    return create_app(settings)
