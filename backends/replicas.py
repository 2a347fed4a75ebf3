"""Replica pools: several servers behind one backend, with session affinity and failover.

A session goes to the healthy replica ranked first by rendezvous (highest-random-weight) hashing
of (session id, replica URL): every gateway process computes the same order without talking to
the others, and only the sessions of a replica that leaves move. Requests without a session go
to the replica with the fewest requests in flight. A replica that fails (connect error, 5xx,
timeout) is ejected; it is probed again after a backoff that doubles with each failed probe, and
re-admitted when a probe answers.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import structlog

from gateway.protocol.errors import GatewayError
from gateway.protocol.events import Event, Started

log = structlog.get_logger("backends.replicas")

BACKOFF_S = 1.0  # first ejection; doubled by each failed probe
MAX_BACKOFF_S = 8.0
OVERLOADED = (429, 529)

C = TypeVar("C")  # the SDK client of a replica
H = TypeVar("H")  # the HTTP client under it


@dataclass(eq=False)
class Replica(Generic[C, H]):
    """One server of a pool, and what this gateway process has seen of it."""

    url: str  # as configured, credentials removed: the hash key, log field and metrics label
    root: str  # server root (no /v1)
    api_base: str  # root + /v1
    client: C  # the transport to it (an openai.AsyncOpenAI for the OpenAI-style backends)
    # The HTTP client under `client` (its connection pool), for the server's endpoints beyond the
    # SDK's: one stack and one pool per replica.
    http: H
    headers: dict = field(default_factory=dict)
    in_flight: int = 0
    requests: int = 0
    failures: int = 0  # requests that failed here since the last success
    ejections: int = 0
    ejected_at: float | None = None  # time.monotonic(); None: admitted
    admitted_at: float | None = None  # when a probe last let it back in
    next_probe: float = 0.0
    backoff_s: float = BACKOFF_S
    last_error: str = ""
    facts: dict = field(default_factory=dict)  # server facts learned per replica (llama.cpp slots)

    @property
    def admitted(self) -> bool:
        return self.ejected_at is None

    def state(self) -> dict:
        """What /health shows of this replica."""
        out = {"url": self.url, "ok": self.admitted, "in_flight": self.in_flight, "requests": self.requests,
               "ejections": self.ejections}
        if self.ejected_at is not None:
            out["ejected_s_ago"] = round(time.monotonic() - self.ejected_at, 1)
            out["next_probe_in_s"] = round(max(0.0, self.next_probe - time.monotonic()), 1)
        if self.last_error:
            out["last_error"] = self.last_error
        return out


def rendezvous_weight(session_id: str, url: str) -> int:
    """The HRW weight of `url` for a session: the same in every process, on every platform."""
    digest = hashlib.blake2b(f"{session_id}\x00{url}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class ReplicaPool(Generic[C, H]):
    """The replicas of one backend, their health and the order a request tries them in."""

    def __init__(self, backend: str, replicas: list[Replica[C, H]],
                 probe: Callable[[Replica[C, H]], Awaitable[None]] | None = None,
                 redact: Callable[[str], str] = str):
        self.backend = backend
        self.replicas = replicas
        self.probe = probe  # raises when the replica does not answer
        self.redact = redact  # errors kept for /health may quote the backend's credentials back
        self._prober: asyncio.Task | None = None
        self._turn = 0  # rotates the tie-break between equally busy replicas

    def __len__(self) -> int:
        return len(self.replicas)

    def order(self, session_id: str | None) -> list[Replica[C, H]]:
        """Replicas in the order a request tries them: admitted ones first (by rendezvous rank for
        a session, else fewest in flight), ejected ones last, as a last resort."""
        if session_id:
            ranked = sorted(self.replicas, key=lambda r: rendezvous_weight(session_id, r.url), reverse=True)
        else:
            # Ties (an idle pool, one request at a time) go round the replicas instead of all to the first.
            n, turn = len(self.replicas), self._turn
            self._turn += 1
            ranked = sorted(self.replicas, key=lambda r: (r.in_flight, (self.replicas.index(r) - turn) % n))
        return [r for r in ranked if r.admitted] + [r for r in ranked if not r.admitted]

    def primary(self) -> Replica[C, H]:
        """The first admitted replica in config order (for calls that need any one server)."""
        return next((r for r in self.replicas if r.admitted), self.replicas[0])

    def succeeded(self, replica: Replica[C, H]) -> None:
        replica.failures = 0
        if replica.ejected_at is not None:
            self.admit(replica, "a request succeeded")

    def failed(self, replica: Replica[C, H], error: str, eject: bool) -> None:
        """A request failed on `replica`; connection failures, timeouts and 5xx eject it (from a
        pool of several: a lone server is tried whatever its state, so ejecting it changes nothing)."""
        replica.failures += 1
        replica.last_error = self.redact(error)
        if eject and replica.ejected_at is None and len(self.replicas) > 1:
            now = time.monotonic()
            replica.ejected_at = now
            replica.ejections += 1
            # Failing again soon after coming back (it answers probes but not requests): wait longer.
            flapping = replica.admitted_at is not None and now - replica.admitted_at < 4 * MAX_BACKOFF_S
            replica.backoff_s = min(replica.backoff_s * 2, MAX_BACKOFF_S) if flapping else BACKOFF_S
            replica.next_probe = now + replica.backoff_s
            log.warning("replica_ejected", backend=self.backend, replica=replica.url, error=replica.last_error,
                        probe_in_s=replica.backoff_s)
            self._start_prober()

    def admit(self, replica: Replica[C, H], why: str) -> None:
        if replica.ejected_at is None:
            return
        replica.ejected_at = None
        replica.admitted_at = time.monotonic()
        replica.failures = 0
        log.warning("replica_admitted", backend=self.backend, replica=replica.url, why=why)

    # -- active probes of ejected replicas ----------------------------------------------------

    def _start_prober(self) -> None:
        if self.probe is None or (self._prober is not None and not self._prober.done()):
            return
        try:
            self._prober = asyncio.get_running_loop().create_task(self._probe_ejected())
        except RuntimeError:  # no running loop (a synchronous caller): the next request starts it
            pass

    async def _probe_ejected(self) -> None:
        assert self.probe is not None
        while ejected := [r for r in self.replicas if not r.admitted]:
            now = time.monotonic()
            due = [r for r in ejected if r.next_probe <= now]
            for replica in due:
                try:
                    await self.probe(replica)
                except Exception as exc:  # noqa: BLE001 — any failure keeps it out, longer
                    replica.last_error = self.redact(f"probe: {exc}"[:300])
                    replica.backoff_s = min(replica.backoff_s * 2, MAX_BACKOFF_S)
                    replica.next_probe = time.monotonic() + replica.backoff_s
                else:
                    self.admit(replica, "a probe answered")
            pending = [r.next_probe for r in self.replicas if not r.admitted]
            if pending:
                await asyncio.sleep(max(0.05, min(pending) - time.monotonic()))

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            await asyncio.gather(self._prober, return_exceptions=True)

    # -- failover -----------------------------------------------------------------------------

    async def failover(self, session_id: str | None,
                       attempt: Callable[[Replica[C, H]], AsyncGenerator[list[Event], None]],
                       chosen: Callable[[Replica[C, H]], None] | None = None) -> AsyncGenerator[list[Event], None]:
        """The items of `attempt(replica)` for the first replica that delivers content.

        A replica failing before any content (Started is not content: it carries nothing the client
        sees) is marked and the next one in `order` is tried; after content, its error goes to the
        client. 4xx errors other than 429 are the request's fault and end the attempt at once. When
        every replica fails, the last error is raised (overloaded when each one said so)."""
        errors: list[GatewayError] = []
        for replica in self.order(session_id):
            delivered = False
            replica.in_flight += 1
            replica.requests += 1
            if chosen is not None:
                chosen(replica)
            try:
                # aclosing: a client that leaves closes this generator, and the replica's response
                # must be released then, not when the garbage collector finds it.
                async with contextlib.aclosing(attempt(replica)) as items:
                    async for item in items:
                        # Each attempt's Started goes on (alone in its batch, Backend.stream): it says how
                        # that replica answers (whole or streamed); the consumer sends message_start once.
                        if type(item[0]) is not Started:
                            delivered = True
                        yield item
            except GatewayError as err:
                # x-should-retry: false marks our own misconfiguration (a wrong key), the same everywhere.
                retryable = (err.status >= 500 or err.status == 429) and err.headers.get("x-should-retry") != "false"
                if retryable:
                    self.failed(replica, err.message[:300], eject=err.status not in OVERLOADED)
                if delivered or not retryable:
                    raise
                errors.append(err)
                log.info("replica_failover", backend=self.backend, replica=replica.url, status=err.status,
                         error=self.redact(err.message[:300]))
                continue
            finally:
                replica.in_flight -= 1
            self.succeeded(replica)
            return
        raise all_failed(self.backend, len(self.replicas), errors)


def all_failed(backend: str, count: int, errors: list[GatewayError]) -> GatewayError:
    """The error for a request every replica failed (the last one's, saying how many were tried)."""
    last = errors[-1]
    if count == 1:
        return last
    if all(e.status in OVERLOADED for e in errors):
        return GatewayError(last.status, f"every replica of backend '{backend}' is overloaded; last: {last.message}",
                            last.type, last.headers)
    return GatewayError(last.status, f"no replica of backend '{backend}' could answer ({count} tried); "
                                     f"last: {last.message}", last.type, last.headers)
