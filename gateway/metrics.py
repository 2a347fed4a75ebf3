"""Prometheus metrics, derived from the same RequestOutcome the request log writes.

Each Gateway owns a `Metrics` with its own CollectorRegistry (not the process-global one), so
several gateways in one process — the tests start many — never share or clash on collectors.
"""
from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from gateway.config import Config
from gateway.protocol.errors import STATUS_TYPES
from gateway.outcome import RequestOutcome
from gateway.reqlog import RequestRecord

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
# Label values a client can choose are limited to what the config names, so no request can grow
# the label set (or one label value) without bound.
OTHER = "other"
_ERROR_TYPES = frozenset(STATUS_TYPES.values())
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"))
# Routes whose answers spend tokens (Anthropic and OpenAI clients alike), as route labels name them.
_GENERATING_ROUTES = frozenset(("/v1/messages", "/v1/chat/completions"))
# Errors the client caused by leaving, not failures of the backend.
_CLIENT_GONE = ("client_disconnected", "client_closed")


@dataclass
class CacheUse:
    """Prompt-cache use of one backend, as the gateway saw it in usage reports."""

    requests: int = 0
    hits: int = 0
    read_tokens: int = 0
    input_tokens: int = 0

    def to_dict(self) -> dict:
        total = self.read_tokens + self.input_tokens
        return {"requests": self.requests, "hits": self.hits, "read_tokens": self.read_tokens,
                "hit_ratio": round(self.read_tokens / total, 4) if total else 0.0}


class ModelLabels:
    """The `model` label of a requested name: an exact name the config maps, the glob that matched it,
    or the backend model it names; anything else is "other"."""

    def __init__(self, config: Config):
        self.exact: set[str] = set()
        self.globs: list[str] = []
        for backend in config.backends.values():
            for key in backend.model_mapping:
                if any(ch in key for ch in "*?["):  # the router's rule for globs
                    self.globs.append(key)
                else:
                    self.exact.add(key)

    def label(self, requested: str | None, backend_model: str | None) -> str:
        if not requested:
            return ""
        if requested in self.exact or requested == backend_model:
            return requested
        return next((g for g in self.globs if fnmatch.fnmatchcase(requested, g)), OTHER)


class Metrics:
    """The collectors of one gateway, fed one RequestOutcome at a time (in-flight gauges: the live RequestRecords)."""

    def __init__(self, backends: tuple[str, ...], labels: ModelLabels,
                 replicas: dict[str, Callable[[], list[dict] | None]] | None = None) -> None:
        self.backends = backends  # the in-flight gauges report 0 for these rather than nothing
        self.labels = labels
        # backend → its replicas' live state (Backend.replicas); the `replica` label takes only these URLs.
        self.replicas = replicas or {}
        self.replica_urls = {name: {r["url"] for r in (state() or [])} for name, state in self.replicas.items()}
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("gateway_requests", "API requests by route, status, backend and requested model",
                                ["route", "status", "backend", "model"], registry=r)
        self.latency = Histogram("gateway_request_duration_seconds", "Time from request to last byte",
                                 ["route", "backend"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("gateway_time_to_first_token_seconds", "Time from request to the first content token",
                              ["backend", "model"], buckets=TTFT_BUCKETS, registry=r)
        self.tokens = Counter("gateway_tokens", "Generation tokens by direction (input excludes cache reads)",
                              ["direction", "backend", "model"], registry=r)
        self.cache_hits = Counter("gateway_cache_hits", "Generations whose prompt was partly read from the "
                                  "backend's prompt cache", ["backend"], registry=r)
        self.cache_read_tokens = Counter("gateway_cache_read_tokens", "Prompt tokens read from the backend's cache",
                                         ["backend"], registry=r)
        self.upstream_errors = Counter("gateway_upstream_errors", "Requests that reached a backend and failed "
                                       "there (5xx, 429, 529, or an error mid-stream)", ["backend", "type"],
                                       registry=r)
        self.replica_requests = Counter("gateway_replica_requests", "Generations by the replica of a backend's "
                                        "pool that answered (or was tried last), and status",
                                        ["backend", "replica", "status"], registry=r)
        self.replica_ttft = Histogram("gateway_replica_time_to_first_token_seconds", "Time from request to the "
                                      "first content token, by replica", ["backend", "replica"],
                                      buckets=TTFT_BUCKETS, registry=r)
        self.fallbacks = Counter("gateway_fallbacks", "Requests another backend answered because theirs could "
                                 "not (fallback = \"...\")", ["backend", "fallback", "reason"], registry=r)
        self.unknown_routes = Counter("gateway_unknown_routes", "Requests to paths the gateway does not serve",
                                      ["method"], registry=r)
        self.in_flight: set[RequestRecord] = set()
        self.cache: dict[str, CacheUse] = {}
        r.register(_InFlightCollector(self))

    def track(self, record: RequestRecord) -> None:
        """A request started (counted in the in-flight gauges until `untrack`)."""
        self.in_flight.add(record)

    def untrack(self, record: RequestRecord) -> None:
        self.in_flight.discard(record)

    def observe(self, outcome: RequestOutcome, route: str) -> None:
        """Count one finished request (its outcome, as the log line records it)."""
        backend = outcome.backend or ""
        model = self.labels.label(outcome.model, outcome.backend_model) if outcome.backend else ""
        self.requests.labels(route, str(outcome.status), backend, model).inc()
        if outcome.event == "unknown_route":
            self.unknown_routes.labels(outcome.method if outcome.method in _METHODS else OTHER).inc()
            return
        if outcome.duration_ms is not None:
            self.latency.labels(route, backend).observe(outcome.duration_ms / 1000)
        if outcome.ttft_ms is not None:
            self.ttft.labels(backend, model).observe(outcome.ttft_ms / 1000)
        err = outcome.error
        if outcome.backend and err and err.type not in _CLIENT_GONE and (
                outcome.status >= 429 or outcome.status < 400):  # < 400: the stream had begun
            etype = err.type or "api_error"
            self.upstream_errors.labels(backend, etype if etype in _ERROR_TYPES else OTHER).inc()
        if outcome.backend and route in _GENERATING_ROUTES and outcome.status < 400:
            self._count_tokens(outcome, backend, model)
        if outcome.replica and outcome.replica in self.replica_urls.get(backend, ()):
            self.replica_requests.labels(backend, outcome.replica, str(outcome.status)).inc()
            if outcome.ttft_ms is not None:
                self.replica_ttft.labels(backend, outcome.replica).observe(outcome.ttft_ms / 1000)
        if outcome.fallback:
            fb = outcome.fallback
            known = set(self.backends)
            self.fallbacks.labels(fb["from"] if fb["from"] in known else OTHER, fb["to"] if fb["to"] in known else OTHER,
                                  fb["reason"]).inc()

    def _count_tokens(self, outcome: RequestOutcome, backend: str, model: str) -> None:
        if outcome.input_tokens:
            self.tokens.labels("input", backend, model).inc(outcome.input_tokens)
        if outcome.output_tokens:
            self.tokens.labels("output", backend, model).inc(outcome.output_tokens)
        cache = self.cache.setdefault(backend, CacheUse())
        cache.requests += 1
        cache.input_tokens += outcome.input_tokens or 0
        if outcome.cache_read_tokens:
            cache.hits += 1
            cache.read_tokens += outcome.cache_read_tokens
            self.cache_hits.labels(backend).inc()
            self.cache_read_tokens.labels(backend).inc(outcome.cache_read_tokens)

    def exposition(self) -> bytes:
        """The text exposition format Prometheus scrapes."""
        return generate_latest(self.registry)


class _InFlightCollector:
    """Gauges computed at scrape time from the requests now running."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def describe(self):
        return []  # computed at collect time; nothing to pre-register

    def collect(self):
        requests = GaugeMetricFamily("gateway_requests_in_flight", "API requests being answered now", labels=["backend"])
        streams = GaugeMetricFamily("gateway_streams_in_flight", "SSE responses being streamed now", labels=["backend"])
        req_counts = dict.fromkeys(self.metrics.backends, 0)
        stream_counts = dict.fromkeys(self.metrics.backends, 0)
        for rec in list(self.metrics.in_flight):
            backend = rec.backend or ""
            req_counts[backend] = req_counts.get(backend, 0) + 1
            if rec.stream and rec.status == 200:  # status is set once the SSE response is prepared
                stream_counts[backend] = stream_counts.get(backend, 0) + 1
        for backend, n in req_counts.items():
            requests.add_metric([backend], n)
        for backend, n in stream_counts.items():
            streams.add_metric([backend], n)
        yield requests
        yield streams
        up = GaugeMetricFamily("gateway_replica_up", "1 while a replica of a backend's pool is admitted, 0 while "
                               "ejected", labels=["backend", "replica"])
        busy = GaugeMetricFamily("gateway_replica_in_flight", "Requests this gateway has at a replica now",
                                 labels=["backend", "replica"])
        ejections = CounterMetricFamily("gateway_replica_ejections", "Times a replica was ejected after failing",
                                        labels=["backend", "replica"])
        for backend, state in self.metrics.replicas.items():
            for r in state() or []:
                up.add_metric([backend, r["url"]], 1 if r["ok"] else 0)
                busy.add_metric([backend, r["url"]], r["in_flight"])
                ejections.add_metric([backend, r["url"]], r["ejections"])
        yield up
        yield busy
        yield ejections


def loopback(remote: str | None) -> bool:
    """Is the peer address on this host? (Scrapes from here need no token.)"""
    if not remote:
        return False
    try:
        addr = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1 from a dual-stack socket
    return addr.is_loopback or bool(mapped and mapped.is_loopback)
