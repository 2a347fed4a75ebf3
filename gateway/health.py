"""Backend health as /health serves it: checked in the background at a bounded rate, so callers
never queue behind a slow backend and never multiply its probes."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import structlog

from gateway.protocol.backend import Backend, BackendHealth

log = structlog.get_logger("gateway.health")

REFRESH_S = 5.0  # a snapshot older than this is refreshed (in the background) on the next /health
CHECK_TIMEOUT_S = 10.0  # a backend whose check takes longer is reported unhealthy


@dataclass(frozen=True, slots=True)
class Checked:
    health: BackendHealth
    at: float  # time.monotonic() of the check

    def age_s(self) -> float:
        return time.monotonic() - self.at


class HealthMonitor:
    """The latest health of every backend; at most one check per backend runs at a time."""

    def __init__(self, backends: dict[str, Backend], refresh_s: float = REFRESH_S):
        self.backends = backends
        self.refresh_s = refresh_s
        self._latest: dict[str, Checked] | None = None
        self._task: asyncio.Task | None = None

    async def snapshot(self) -> dict[str, Checked]:
        """The latest results; a stale one starts a refresh and is served meanwhile. Only the very
        first call waits, for the one check every concurrent caller shares. Backends whose health
        is a local read (`Backend.local_health`) are asked every time."""
        remote = [n for n, b in self.backends.items() if not b.local_health]
        if remote:
            oldest = min((c.at for c in self._latest.values()), default=0.0) if self._latest is not None else None
            if (oldest is None or oldest + self.refresh_s < time.monotonic()) and self._task is None:
                self._task = asyncio.get_running_loop().create_task(self._refresh(remote))
            if self._latest is None:
                assert self._task is not None
                await asyncio.shield(self._task)
        latest = dict(self._latest or {})
        for name, backend in self.backends.items():
            if backend.local_health:
                latest[name] = await self._check(backend)
        return {name: latest[name] for name in self.backends}

    async def _refresh(self, names: list[str]) -> None:
        try:
            results = await asyncio.gather(*(self._check(self.backends[n]) for n in names))
            self._latest = dict(zip(names, results))
        finally:
            self._task = None

    @staticmethod
    async def _check(backend: Backend) -> Checked:
        try:
            health = await asyncio.wait_for(backend.health(), CHECK_TIMEOUT_S)
        except asyncio.TimeoutError:
            health = BackendHealth(False, f"health check took longer than {CHECK_TIMEOUT_S:g} s")
        except Exception as exc:  # noqa: BLE001 — a failing check is an unhealthy backend, not a failed /health
            log.warning("health_check_failed", backend=backend.name, error=f"{type(exc).__name__}: {exc}")
            health = BackendHealth(False, f"health check failed: {type(exc).__name__}")
        return Checked(health, time.monotonic())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
