"""The listening socket of `serve`: bound before the backends load (a port in use fails at once),
with a cap on open connections that closes idle ones first."""
from __future__ import annotations

import asyncio
import time
from http import HTTPStatus
from ssl import SSLContext
from typing import Any

import orjson
import structlog
from aiohttp import http_exceptions, web

from gateway.protocol.errors import GatewayError

log = structlog.get_logger("gateway.listener")

_LOG_EVERY_S = 1.0
_REFUSED_LINGER_S = 1.0  # a refused connection's request bytes are drained this long so the answer is not reset


class Connections:
    """Which client connections are answering a request now (the rest wait for one: idle)."""

    def __init__(self) -> None:
        self._busy: set[Any] = set()

    def busy(self, protocol: Any) -> None:
        self._busy.add(protocol)

    def idle(self, protocol: Any) -> None:
        self._busy.discard(protocol)

    def is_busy(self, protocol: Any) -> bool:
        return protocol in self._busy


class ConnectionCap:
    """asyncio protocol factory: aiohttp's handler per connection, at most `limit` open at once.

    At the limit a new connection closes the oldest idle one (an idle keep-alive or a client still
    sending its headers); when every connection is busy answering, the new one gets 529."""

    def __init__(self, limit: int, connections: Connections):
        self.limit = limit
        self.connections = connections
        self.server: web.Server | None = None  # set once the app is set up
        self.refused = 0
        self._logged_at = float("-inf")

    def __call__(self) -> asyncio.Protocol:
        assert self.server is not None, "ConnectionCap.server must be set before serving"
        open_ = [h for h in self.server.connections if h.transport is not None]
        if len(open_) >= self.limit:
            victim = next((h for h in open_ if not self.connections.is_busy(h)), None)
            if victim is None:
                self.refused += 1
                now = time.monotonic()
                if now - self._logged_at >= _LOG_EVERY_S:  # a flood of connections must not flood stderr
                    self._logged_at = now
                    log.warning("connection_refused", reason="server.max_connections reached, every connection busy",
                                max_connections=self.limit, refused_so_far=self.refused)
                return _Refused(self.limit)
            victim.force_close()
        handler = self.server()
        handler.__class__ = AnthropicErrors  # same slots, one method more: set per connection, not per request
        return handler


class AnthropicErrors(web.RequestHandler):
    """aiohttp's connection handler, answering the requests it cannot even parse (a bad request line,
    header or chunked body) in the Anthropic error shape instead of plain text."""

    __slots__ = ()

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs it; raises if the answer had begun
        if isinstance(exc, http_exceptions.HttpProcessingError):
            # never the parser's message: it quotes the raw bytes, credentials included
            text = f"malformed HTTP request ({type(exc).__name__})"
        else:
            try:
                text = HTTPStatus(status).phrase
            except ValueError:
                text = f"HTTP {status}"
        resp = web.Response(status=status, body=orjson.dumps(GatewayError(status, text).body()),
                            content_type="application/json")
        resp.force_close()
        return resp


class _Refused(asyncio.Protocol):
    """Answers one 529 overloaded_error and closes: the client SDKs retry it."""

    def __init__(self, limit: int):
        self.limit = limit
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:  # an asyncio.Transport (uvloop's is not a subclass)
        err = GatewayError(529, f"the gateway has {self.limit} connections open (server.max_connections); "
                                "retry shortly", "overloaded_error")
        body = orjson.dumps(err.body())
        head = (f"HTTP/1.1 529 Overloaded\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Retry-After: 1\r\nConnection: close\r\n\r\n").encode()
        transport.write(head + body)
        if transport.can_write_eof():
            transport.write_eof()
        self.timer = asyncio.get_running_loop().call_later(_REFUSED_LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        pass  # the request is not read: it is refused whatever it says

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()


async def bind(host: str, port: int, cap: ConnectionCap, backlog: int = 128,
               ssl: SSLContext | None = None, reuse_port: bool = False) -> asyncio.AbstractServer:
    """Bind host:port now without accepting yet (OSError when taken); `ListenerSite` starts accepting.
    With `ssl`, every connection is HTTPS (the handshake happens before aiohttp sees a byte).
    With `reuse_port`, the workers of `serve --workers N` each bind the same port (SO_REUSEPORT)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(cap, host or None, port, backlog=backlog, start_serving=False, ssl=ssl,
                                    reuse_port=reuse_port or None)


class ListenerSite(web.BaseSite):
    """An aiohttp site over an already bound server, so AppRunner.cleanup stops it like any other."""

    __slots__ = ("_bound", "_host", "_port", "_scheme")

    def __init__(self, runner: web.AppRunner, bound: asyncio.AbstractServer, host: str, port: int,
                 scheme: str = "http"):
        super().__init__(runner)
        self._bound = bound
        self._host, self._port, self._scheme = host, port, scheme

    @property
    def name(self) -> str:
        return f"{self._scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        self._server = self._bound
        await self._bound.start_serving()


def raise_open_files_limit(connections: int) -> None:
    """Lift the soft open-files limit so `connections` sockets fit next to the log, models and upstreams."""
    try:
        import resource  # POSIX only
    except ImportError:
        return
    want = connections + 256
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < want:
            target = want if hard == resource.RLIM_INFINITY else min(want, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        pass  # the platform refuses: the cap still bounds connections, the OS limit may bite first
