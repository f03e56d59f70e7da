"""Prometheus metrics of one app instance (its own registry: no process-global state)."""

from __future__ import annotations

from typing import TypeVar, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("recsys_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("recsys_http_request_seconds", "HTTP request latency by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.stage = Histogram("recsys_stage_seconds", "Latency of each stage of the request path",
                               ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.fallbacks = Counter("recsys_fallbacks", "Responses served by a fallback policy",
                                 ["kind"], registry=r)
        self.degraded = Counter("recsys_degraded", "Responses served degraded, by reason",
                                ["reason"], registry=r)
        self.ready = Gauge("recsys_ready", "1 when models, index and features are loaded", registry=r)
        self.model = Info("recsys_model", "Model versions in use", registry=r)
        self.model_version = Gauge("recsys_model_version", "Registered version in use (0: none)",
                                   ["model"], registry=r)
        self.reloads = Counter("recsys_reloads", "Model reloads by outcome", ["outcome"], registry=r)
        self.events_accepted = Counter("recsys_events_accepted", "Events accepted into the queue",
                                       registry=r)
        self.events_rejected = Counter("recsys_events_rejected", "Events refused (queue full)",
                                       registry=r)
        self.events_written = Counter("recsys_events_written", "Events written to parquet", registry=r)
        self.events_duplicates = Counter("recsys_events_duplicates",
                                         "Events dropped: their (request_id, position) was recorded before",
                                         registry=r)
        self.events_queued = Gauge("recsys_events_queued", "Events waiting to be written", registry=r)
        self.shed = Counter("recsys_requests_shed", "Requests refused with 503 because this worker already "
                            "held serving.max_in_flight", registry=r)
        self.in_flight = Gauge("recsys_requests_in_flight", "Recommendation requests this worker holds now",
                               registry=r)
        self.availability_changes = Counter(
            "recsys_availability_changes", "Items flipped in or out of stock by the admin API", registry=r)

        self._children: dict[tuple[int | str, ...], MetricWrapperBase] = {}  # (id(metric), *labels)

    def child(self, metric: M, *labels: str) -> M:
        """`metric.labels(*labels)`, looked up once: labels() takes a lock and builds a key on
        every call, six times a request on the recommendation path."""
        key: tuple[int | str, ...] = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return cast(M, found)

    def set_versions(self, versions: dict[str, str | None], ready: bool) -> None:
        self.model.info({k: v or "none" for k, v in versions.items()})
        for name, tag in versions.items():
            number = tag.rsplit("/v", 1)[-1] if tag else "0"
            self.model_version.labels(name).set(float(number) if number.isdigit() else 0.0)
        self.ready.set(1.0 if ready else 0.0)
