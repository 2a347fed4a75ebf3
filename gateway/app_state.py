"""What the aiohttp app shares between handlers: the Gateway object and the per-request record."""
from __future__ import annotations

import asyncio

import structlog
from aiohttp import web

from backends import create_backend
from gateway.protocol.backend import Backend, BackendUnavailable
from gateway.browser_guard import BrowserGuard
from gateway.config import Config
from gateway.health import HealthMonitor
from gateway.listener import Connections
from gateway.metrics import Metrics, ModelLabels
from gateway.reqlog import RequestLog, RequestRecord
from gateway.router import Router
from gateway.thinking_store import ThinkingStore
from gateway.worker import WorkerRole

log = structlog.get_logger("gateway")


class Gateway:
    """Config, backends, router and request log of one running server."""

    def __init__(self, config: Config, backends: dict[str, Backend] | None = None,
                 worker: WorkerRole | None = None):
        self.config = config
        self.worker = worker  # set in each process of `serve --workers N`
        self.backends = backends if backends is not None else {
            name: create_backend(bcfg) for name, bcfg in config.backends.items()}
        self.router = Router(config, self.backends)
        lc = config.log
        self.reqlog = RequestLog(lc.requests or None, lc.bodies, config.secrets(), rotate_bytes=int(lc.rotate_mb * 1024 * 1024),
                                 keep=lc.keep, compress=lc.gzip, shared=worker is not None)
        self.metrics = Metrics(tuple(self.backends), ModelLabels(config),
                               {name: b.replicas for name, b in self.backends.items()})
        self.health = HealthMonitor(self.backends)
        self.browser_guard = BrowserGuard(config.server)
        self.connections = Connections()  # which connections are mid-request (the connection cap spares them)
        self.unavailable: dict[str, str] = {}
        self.stopping = False  # set on SIGTERM/SIGINT: see cut_inflight
        self.inflight: set[asyncio.Task] = set()  # running /v1/messages handlers
        self.thinking = ThinkingStore()  # thinking sent with display "omitted", for the next turn
        self.preloads: list[asyncio.Task] = []  # each backend's preload, started once the app runs

    async def start(self) -> None:
        """Start every backend; one that is not reachable yet is reported, not fatal.

        BackendStartError (a backend that can never work as configured) propagates.
        """
        for name, backend in self.backends.items():
            try:
                await backend.start()
            except BackendUnavailable as exc:
                self.unavailable[name] = str(exc)
                log.warning("backend_unreachable", backend=name, detail=str(exc),
                            hint="requests routed to it fail with api_error until it answers")

    def begin_preload(self) -> None:
        """Load the models `preload` names in the background: the server answers (and /health says
        "loading") meanwhile, and the first request for such a model waits for its load, not a new one."""
        loop = asyncio.get_running_loop()
        self.preloads = [loop.create_task(b.preload(), name=f"preload-{n}") for n, b in self.backends.items()
                         if b.preload_names()]

    def cut_inflight(self) -> None:
        """The shutdown grace period is over: cancel the /v1/messages handlers still running (each
        answers its client with an overloaded_error before the connection closes)."""
        for task in list(self.inflight):
            task.cancel()

    async def close(self) -> None:
        for task in self.preloads:
            task.cancel()
        await asyncio.gather(*self.preloads, return_exceptions=True)
        await self.health.close()
        for backend in self.backends.values():
            await backend.close()
        await asyncio.to_thread(self.reqlog.close)  # drains the writer thread's queue


GATEWAY = web.AppKey("gateway", Gateway)
RECORD = web.RequestKey("record", RequestRecord)
__all__ = ["GATEWAY", "RECORD", "Gateway", "RequestRecord"]
