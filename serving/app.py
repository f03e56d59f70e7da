"""The HTTP API: `create_app(settings)` builds one FastAPI app around one
`serving.service.RecommendService` (the request path and the state it answers from, testable
without HTTP); the app adds routing, status codes, the admin key and the event intake. Everything
it holds lives in `app.state` (the service, the event writer), never in module globals.

A request on a route that does model work is admitted first (`Guard`: past
`serving.max_in_flight` requests held, 503 + Retry-After), then answered inline on the event loop
(see `serving.service` for why).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, get_origin

from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recsys.config import Settings, load_settings
from recsys.data import columns as C
from recsys.rules import RuleError
from recsys.runtime import configure_threads
from serving import ui
from serving.events import COLUMNS as EVENT_COLUMNS
from serving.events import EventWriter, QueueFull
from serving.metrics import Metrics
from serving.process import SETTINGS_ENV
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
    SimilarItems,
)
from serving.service import NotFound, NotReady, RecommendService, StateLoader
from serving.state import load_state, public_reason
from serving.stream import start_user_feature_stream

log = logging.getLogger("serving")
UserId = Path(min_length=1, max_length=ID_MAX, pattern=ID_PATTERN, description="user id")
ItemId = Path(min_length=1, max_length=ID_MAX, pattern=ID_PATTERN, description="item id")
K = Query(10, ge=1, le=MAX_K, description="number of items, 1..100")
ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": Error, "description": "invalid input"},
    503: {"model": Error, "description": "not ready, or overloaded (with Retry-After)"},
}
ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": Error}, 403: {"model": Error}}


def create_app(settings: Settings, loader: StateLoader = load_state) -> FastAPI:
    """Build the app around one `RecommendService(settings, loader)`: the lifespan opens it, loads
    its first state and runs its alias poll and store checks beside the event writer; the routes
    call it. `loader(settings, previous=...)` returns a `ServingState` (tests pass one that builds
    small real components); it runs off the event loop, at start-up and on every reload."""
    configure_threads(1)
    service = RecommendService(settings, loader)
    cfg = settings.serving
    ws = service.ws

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.open()
        # replays the write-ahead log of a writer that died (kill -9) before anything is served
        app.state.events = EventWriter(ws.events_dir, capacity=cfg.event_queue, batch=cfg.event_batch,
                                       flush_seconds=cfg.event_flush_seconds,
                                       on_write=service.metrics.events_written.inc,
                                       durability=cfg.event_durability, dedup_window=cfg.event_dedup_window)
        # accepted events -> the users' online features (Feast push); None when off or no registry.
        # Started after the replay above, so its seed (the events folder) holds the replayed events
        app.state.stream = start_user_feature_stream(settings)
        if app.state.stream is not None:
            app.state.events.on_durable = app.state.stream.submit
            app.state.stream.register(service.metrics.registry)  # recsys_stream_* in /metrics
        tasks = [asyncio.create_task(service.load_initial())]
        if cfg.poll_seconds > 0:
            tasks.append(asyncio.create_task(service.poll_alias()))
        if cfg.store_check_seconds > 0:
            tasks.append(asyncio.create_task(service.watch_store()))
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
            if app.state.stream is not None:
                await asyncio.to_thread(app.state.stream.close)

    app = FastAPI(
        title="recsys",
        version="1",
        summary="Multimodal recommendations: two-tower retrieval, LightGBM ranking, Feast features.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.service = service
    app.add_middleware(Guard, metrics=service.metrics, max_body=cfg.max_body_bytes,
                       max_in_flight=cfg.max_in_flight)
    _install_error_handlers(app)
    _add_recommendation_routes(app, service)
    _add_event_routes(app, service.metrics)
    _add_admin_routes(app, service)
    _add_ops_routes(app, service)
    _add_ui_routes(app, service)
    return app


def parse_query(query: QueryParams) -> RecommendationQuery:
    """The query parameters of GET /v1/users/{id}/recommendations as FastAPI reads a
    `Annotated[RecommendationQuery, Query()]` parameter: list fields from every occurrence (comma
    lists split by the model), others from the last, unknown parameters ignored; errors raised as
    FastAPI raises them (`RequestValidationError`, locations under "query"). FastAPI works out each
    field's kind from its annotation on every request (~0.3 ms of the ~1.5 ms a request costs);
    this does it once."""
    values: dict[str, Any] = {}
    for name, is_list in _QUERY_FIELDS:
        if is_list:
            found = query.getlist(name)
            if found:
                values[name] = found
        elif (value := query.get(name)) is not None:
            values[name] = value
    try:
        return RecommendationQuery.model_validate(values)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("query", *e["loc"])}
                                      for e in exc.errors(include_url=False)]) from None


_QUERY_FIELDS = tuple((name, get_origin(f.annotation) is list)
                      for name, f in RecommendationQuery.model_fields.items())


@functools.cache
def query_parameters() -> list[dict[str, Any]]:
    """The OpenAPI entries FastAPI writes for `Annotated[RecommendationQuery, Query()]` (the route
    reads the query itself, see `parse_query`, and documents these)."""
    docs = FastAPI()

    @docs.get("/q")
    async def q(params: Annotated[RecommendationQuery, Query()]) -> None: ...

    return docs.openapi()["paths"]["/q"]["get"]["parameters"]


def as_json(answer: Recommendations) -> Any:
    """The answer as JSON bytes written by pydantic: the document FastAPI writes for a returned
    model, without its dump, re-validation against `response_model` and `json.dumps` (~85 µs
    instead of ~12 for ten items); `response_model` still documents the route."""
    return Response(content=answer.model_dump_json(), media_type="application/json")


def _add_recommendation_routes(app: FastAPI, service: RecommendService) -> None:
    @app.get("/v1/users/{user_id}/recommendations", response_model=Recommendations, responses=ERRORS,
             tags=["recommendations"], openapi_extra={"parameters": query_parameters()})
    async def user_recommendations(request: Request, user_id: str = UserId) -> Recommendations:
        """Top-k items for a user within the shop's rules (popularity within them for an unknown
        user); every item says why it is there (`reason`)."""
        params = parse_query(request.query_params)
        # both validated already (the user id by its path pattern): no second validation
        req = RecommendationRequest.model_construct(user_id=user_id, **dict(params))
        return as_json(service.recommend(req))

    @app.post("/v1/recommendations", response_model=Recommendations, responses=ERRORS,
              tags=["recommendations"])
    async def post_recommendations(body: RecommendationRequest) -> Recommendations:
        """Top-k items within the shop's rules (filters, exclusions, per-category caps, diversity)
        at a context time."""
        return as_json(service.recommend(body))

    @app.get("/v1/items/{item_id}/similar", response_model=SimilarItems, responses=ERRORS, tags=["items"])
    async def similar_items(item_id: str = ItemId, k: int = K) -> SimilarItems:
        """Nearest items by item vector (cosine)."""
        return service.similar(item_id, k)


def event_rows(batch: EventBatch, now: datetime) -> list[dict[str, Any]]:
    """The impressions-contract rows of a batch; events without a time get `now`, naive times are UTC,
    contract columns the API does not take are null."""
    rows = []
    for e in batch.events:
        ts = e.event_timestamp or now
        ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
        rows.append({**dict.fromkeys(EVENT_COLUMNS), C.REQUEST_ID: e.request_id, C.USER_ID: e.user_id,
                     C.ITEM_ID: e.item_id, C.POSITION: e.position, C.EVENT_TIMESTAMP: ts,
                     C.CLICKED: e.clicked, C.PROPENSITY: e.propensity, C.POLICY: e.policy or "unknown",
                     C.SLOT_PROPENSITIES: e.slot_propensities})
    return rows


def _add_event_routes(app: FastAPI, metrics: Metrics) -> None:
    @app.post("/v1/events", status_code=202, response_model=EventsAccepted, tags=["events"],
              responses={**ERRORS, 413: {"model": Error}}, response_model_exclude_defaults=True)
    async def post_events(body: EventBatch) -> EventsAccepted:
        """Record impressions and clicks (the impressions contract). 202: on disk (write-ahead log,
        fsynced); an event whose (request_id, position) was recorded before is dropped as a duplicate."""
        rows = event_rows(body, datetime.now(UTC))
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


def is_admin(api_key: str | None, x_api_key: str | None) -> bool:
    return bool(api_key and x_api_key and secrets.compare_digest(x_api_key.encode(), api_key.encode()))


def require_admin(api_key: str | None, x_api_key: str | None) -> None:
    """403 while admin is off (no serving.api_key), 401 without the header, 403 for a wrong key."""
    if not api_key:
        raise HTTPException(403, "admin is disabled: set serving.api_key (RECSYS_SERVING__API_KEY)")
    if not x_api_key:
        raise HTTPException(401, "missing X-API-Key header", headers={"WWW-Authenticate": "ApiKey"})
    if not is_admin(api_key, x_api_key):
        raise HTTPException(403, "wrong API key")


def _add_admin_routes(app: FastAPI, service: RecommendService) -> None:
    api_key = service.cfg.api_key

    @app.post("/v1/admin/reload", tags=["admin"], responses=ADMIN_ERRORS)
    async def admin_reload(x_api_key: str | None = Header(None)) -> dict[str, Any]:
        """Reload models by alias; in-flight requests finish on the old ones. Needs X-API-Key."""
        require_admin(api_key, x_api_key)
        swapped, new = await service.reload()
        if not swapped:
            raise NotReady("reload failed, kept the previous models: " + "; ".join(new.problems))
        return {"swapped": True, "versions": new.versions, "ready": new.ready, "problems": list(new.problems)}

    @app.post("/v1/admin/availability", tags=["admin"], response_model=AvailabilityChanged,
              responses={**ADMIN_ERRORS, 422: {"model": Error}, 503: {"model": Error}})
    async def admin_availability(body: AvailabilityChange,
                                 x_api_key: str | None = Header(None)) -> AvailabilityChanged:
        """Mark items in or out of stock at once: an unavailable item is never recommended. Needs
        X-API-Key. Applies to the worker that answers, and to every model it reloads, until it
        restarts; the items table's `available` column (`recsys import items`) is the durable record."""
        require_admin(api_key, x_api_key)
        return await service.set_availability(body.item_ids, body.available)


def _add_ops_routes(app: FastAPI, service: RecommendService) -> None:
    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, Any]:
        """The process is up (whether or not models are loaded); pid: which worker answered."""
        return {"status": "ok", "pid": os.getpid()}

    @app.get("/readyz", tags=["ops"], responses={503: {"description": "not ready, with the reasons"}})
    async def readyz(x_api_key: str | None = Header(None)) -> JSONResponse:
        """Models, index and feature store loaded, and the online store answers a probe read: 200;
        otherwise 503 with the reasons (without paths or hosts; with the admin X-API-Key also
        `details`, the full text)."""
        ready = await service.readiness()
        body: dict[str, Any] = {"ready": ready.ready, "reasons": list(ready.reasons),
                                "versions": ready.versions, "pid": os.getpid()}
        if is_admin(service.cfg.api_key, x_api_key):
            body["details"] = list(ready.problems)
        return JSONResponse(body, status_code=200 if ready.ready else 503)

    @app.get("/metrics", tags=["ops"])
    async def prometheus_metrics() -> Response:
        """Prometheus text format."""
        metrics = service.metrics
        metrics.events_queued.set(app.state.events.depth)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _add_ui_routes(app: FastAPI, service: RecommendService) -> None:
    @app.get("/ui/users/{user_id}", response_class=HTMLResponse, tags=["ui"])
    async def user_page(user_id: str = UserId, k: int = K) -> HTMLResponse:
        """A user's recent clicks and recommendations as thumbnails."""
        recs = service.recommend(RecommendationRequest(user_id=user_id, k=k))
        return HTMLResponse(ui.user_page(user_id, service.state.catalogue, recs))

    @app.get("/ui/images/{item_id}", tags=["ui"], response_class=FileResponse)
    async def item_image(item_id: str = ItemId) -> FileResponse:
        """The image of an item in the items table (nothing else is served)."""
        return FileResponse(service.image_path(item_id), headers={"Cache-Control": "max-age=3600"})


# -------------------------------------------------------------------- errors as JSON
def _install_error_handlers(app: FastAPI) -> None:
    names = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
             405: "method_not_allowed", 413: "payload_too_large", 422: "invalid_request",
             503: "unavailable"}

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": names.get(exc.status_code, "error"), "message": str(exc.detail)},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, exc: NotReady) -> JSONResponse:
        return await http_error(request, HTTPException(503, str(exc)))

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> JSONResponse:
        return await http_error(request, HTTPException(404, str(exc)))

    @app.exception_handler(RuleError)
    async def bad_rules(request: Request, exc: RuleError) -> JSONResponse:
        """Rules the schema let through but `recsys.rules.Rules` refuses: 422 as for the schema's."""
        return await invalid(request, RequestValidationError(
            [{"loc": ("query",), "msg": str(exc), "type": "value_error"}]))

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

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body: int, max_in_flight: int = 0):
        self.app = app
        self.metrics = metrics
        self.max_body = max_body
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_status(message: Message) -> None:
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

    async def _shed(self, scope: Scope, send: Send, start: float) -> None:
        m = self.metrics
        m.shed.inc()
        message = f"this worker holds {self.max_in_flight} requests (serving.max_in_flight); retry shortly"
        response = JSONResponse({"error": "overloaded", "message": message}, status_code=503,
                                headers={"Retry-After": "1"})
        await response({"type": "http"}, _replay(b"", None), send)
        m.child(m.requests, "shed", scope["method"], "503").inc()
        m.child(m.latency, "shed").observe(time.perf_counter() - start)

    async def _read_body(self, receive: Receive) -> tuple[bytes, bool]:
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

    async def _too_large(self, send: Send) -> None:
        response = JSONResponse({"error": "payload_too_large",
                                 "message": f"request body over {self.max_body} bytes"}, status_code=413)
        await response({"type": "http"}, _replay(b"", None), send)


def _replay(body: bytes, then: Receive | None) -> Receive:
    """A `receive` that hands the app the body already read, then the client's own messages."""
    sent = {"done": False}

    async def receive() -> Message:
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
    if not logging.getLogger().handlers:  # uvicorn configures only its own loggers
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        for noisy in ("alembic", "mlflow", "feast", "urllib3", "httpx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    raw = os.environ.get(SETTINGS_ENV)
    settings = Settings.model_validate_json(raw) if raw else load_settings()
    return create_app(settings)
