"""POST /v1/messages and /v1/messages/count_tokens."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fnmatch
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Protocol

import orjson
import structlog
from aiohttp import web

from gateway.protocol.backend import Backend, BackendRequest
from gateway.protocol.anthropic import MessagesRequest, parse_messages_request
from gateway.context_budget import fit_context
from gateway.context_edits import apply_context_edits
from gateway.protocol.errors import GatewayError, client_disconnected
from gateway.protocol.events import Event, Started
from gateway.json_body import decode_body
from gateway.max_tokens import Fit, fit_request
from gateway.message_stream import MessageStream
from gateway.normalize import normalize, session_id
from gateway.reqlog import RequestRecord
from gateway.router import default_model
from gateway.sse import PING, encode_all
from gateway.app_state import GATEWAY, RECORD, Gateway
from gateway.tool_search import apply_tool_search

log = structlog.get_logger("gateway.messages")

APPLIED_EDITS = web.RequestKey("applied_edits", list)

SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
               "Connection": "keep-alive", "X-Accel-Buffering": "no"}


async def read_body(request: web.Request, record: RequestRecord) -> object:
    """The decoded JSON body; 413 over the configured limit, 400 for anything not JSON."""
    raw = await request.read()
    try:
        body = decode_body(raw)
    except GatewayError:
        record.read(len(raw), raw.decode("utf-8", "replace"))  # logged as text, so even this request can be replayed
        raise
    record.read(len(raw), body)
    return body


_UNKNOWN_LOGGED: set[str] = set()
_UNKNOWN_LOG_CAP = 256  # distinct types remembered; a client inventing names cannot grow it without end


def _note_unknown(req: MessagesRequest, request_id: str) -> None:
    """Tolerated unknown block types (which also go on the request's log line) are logged once per process."""
    for label in req.unknown_blocks:
        if label not in _UNKNOWN_LOGGED and len(_UNKNOWN_LOGGED) < _UNKNOWN_LOG_CAP:
            _UNKNOWN_LOGGED.add(label)
            kind, _, where = label.rpartition("@")
            log.warning("unknown_block_type", type=kind, where=where, request_id=request_id,
                        hint="passed on as text when it carries text, dropped otherwise")


async def _prepare(request: web.Request, count_only: bool) -> tuple[MessagesRequest, BackendRequest, Backend]:
    gw = request.app[GATEWAY]
    record = request[RECORD]
    body = await read_body(request, record)
    req = apply_tool_search(gw.thinking.restore(normalize(parse_messages_request(body, count_only=count_only))))
    unknown = req.unknown_blocks or None
    _note_unknown(req, record.request_id)
    req, applied = apply_context_edits(req)
    request[APPLIED_EDITS] = applied
    session = session_id(request.headers.get("X-Claude-Code-Session-Id"), req)
    record.requested(req.model, req.stream, session, unknown)
    route = await gw.router.resolve(req.model)
    record.routed(route.backend.name, route.model)
    breq = BackendRequest(req, route.model, req.max_tokens or 1, session)
    return req, breq, route.backend


async def handle_count_tokens(request: web.Request) -> web.Response:
    """Prompt tokens with the backend's tokenizer (or its documented estimate); never generates."""
    _, breq, backend = await _prepare(request, count_only=True)
    count = await backend.count_tokens(breq)
    request[RECORD].counted(count.tokens)
    return web.json_response({"input_tokens": max(1, count.tokens)}, dumps=_dumps)


def _shutting_down() -> GatewayError:
    return GatewayError(529, "the gateway is shutting down; retry the request", "overloaded_error")


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None and hasattr(task, "uncancel"):  # Python ≥ 3.11
        task.uncancel()


async def handle_messages(request: web.Request) -> web.StreamResponse:
    """Generate a message: JSON, or SSE when the body says stream:true."""
    return await guarded(request, _generate)


async def guarded(request: web.Request, generate) -> web.StreamResponse:
    """Run a generating handler as one of the gateway's in-flight requests: a shutdown that cuts
    it makes it answer `overloaded_error` instead of vanishing."""
    gw = request.app[GATEWAY]
    task = asyncio.current_task()
    assert task is not None  # aiohttp runs every handler in a task of its own
    gw.inflight.add(task)
    try:
        return await generate(request)
    except asyncio.CancelledError:
        if not gw.stopping:
            raise  # the client went away
        _uncancel()  # cut by the shutdown: answer instead of vanishing
        raise _shutting_down() from None
    finally:
        gw.inflight.discard(task)


class Wire(Protocol):
    """One client protocol's encoding of a MessageStream's events (Anthropic SSE, OpenAI chunks)."""

    ping: bytes  # written while nothing else went out for ping_interval_s

    def start(self) -> bytes:
        """The stream's first bytes (calls ms.message_start())."""

    def frames(self, events: list[dict]) -> bytes:
        """Frames for Anthropic events from MessageStream.feed."""

    def finish(self, events: list[dict]) -> bytes:
        """The stream's last bytes, from MessageStream.finish()."""

    def error(self, err: GatewayError) -> bytes:
        """The frame that ends a stream failing after its first byte."""

    def message(self) -> dict:
        """The non-streaming answer, once the MessageStream finished."""


class AnthropicWire:
    """Anthropic Messages: `event:`/`data:` frames and the Message object."""

    ping = PING

    def __init__(self, ms: MessageStream):
        self.ms = ms

    def start(self) -> bytes:
        return encode_all([self.ms.message_start()])

    def frames(self, events: list[dict]) -> bytes:
        return encode_all(events)

    def finish(self, events: list[dict]) -> bytes:
        return encode_all(events)

    def error(self, err: GatewayError) -> bytes:
        return encode_all([MessageStream.error_event(err)])

    def message(self) -> dict:
        return self.ms.answer.message


async def _generate(request: web.Request) -> web.StreamResponse:
    req, breq, backend = await _prepare(request, count_only=False)
    backend, breq = await fit_budget(request.app[GATEWAY], backend, breq, request[RECORD])
    backend, breq, fit = await fit_with_fallback(request.app[GATEWAY], backend, breq, request[RECORD])
    # message_start must never report more input than the final usage: only an estimate is halved.
    ms = MessageStream(model=req.model, input_tokens=fit.prompt_tokens if fit.exact else fit.prompt_tokens // 2,
                       show_thinking=req.thinking_enabled,
                       omit_thinking=req.thinking is not None and req.thinking.display == "omitted",
                       context_management=None if req.context_edits is None
                       else {"applied_edits": request[APPLIED_EDITS]},
                       context_clamped=fit.context_clamped)
    events = events_with_fallback(request.app[GATEWAY], backend, breq, request[RECORD])
    return await answer(request, ms, events, AnthropicWire(ms), req.stream)


async def answer(request: web.Request, ms: MessageStream, events: AsyncGenerator[list[Event], None], wire: Wire,
                 stream: bool) -> web.StreamResponse:
    """Answer from a backend's events, streamed or as JSON, and record what the client was sent."""
    record = request[RECORD]
    try:
        if stream:
            return await _respond_sse(request, ms, events, record, wire)
        return await _respond_json(ms, events, record, wire)
    finally:
        await events.aclose()
        # A cut stream never reached finish(): count what it delivered, not 0.
        usage = ms.usage if ms.finished else ms.final_usage()
        # What the client was sent (the log writes it with the bodies); nothing when it failed before message_start.
        record.answered(usage, ms.tool_names or None, ms.logged_content(), ms.engine_stats)
        for signature, thinking in ms.omitted_thinking:
            request.app[GATEWAY].thinking.remember(signature, thinking)


# Claude Code appends context-size hints such as "[1m]" to model names (the router's rule).
_SUFFIX = re.compile(r"\[[^\]]*\]$")


def fallback_reason(err: GatewayError) -> str | None:
    """Why `err`, raised before any content, sends the request to the backend's fallback (or None)."""
    if err.status in (429, 529):
        return "overloaded"  # every replica said so, after the pool tried each
    if err.status >= 500 and err.headers.get("x-should-retry") != "false":
        return "unavailable"  # every replica down (connect errors, timeouts, 5xx)
    return None


async def use_fallback(gw: Gateway, backend: Backend, breq: BackendRequest, record: RequestRecord,
                       reason: str, error: str) -> tuple[Backend, BackendRequest, Fit] | None:
    """The request moved to `backend`'s fallback: that backend, the request bound to its model and fitted
    to its context, with the log line saying what and why; None when `backend` has no fallback.

    Reusable for any reason a backend cannot take a request it was routed to (overload, outage, a
    prompt that does not fit)."""
    name = backend.config.fallback
    if name is None:
        return None
    target = gw.backends[name]
    model = await _model_on(target, breq.request.model)
    # The same request bound afresh (max_tokens is fitted below). An OpenAI client's own body is not
    # passed on: its output limit was fitted to the first backend; `request` carries the same content.
    moved = dataclasses.replace(breq, model=model, max_tokens=breq.request.max_tokens or 1, replica=None,
                                openai_body=None)
    first = record.fallback["from"] if record.fallback else backend.name
    record.routed(target.name, model, {"from": first, "to": target.name, "reason": reason, "error": error[:500]})
    log.warning("backend_fallback", request_id=record.request_id, backend=backend.name, fallback=target.name,
                reason=reason, error=error[:300])
    # If the fallback cannot fit it either, on down its chain (the config forbids loops).
    return await fit_with_fallback(gw, target, moved, record)


async def _model_on(backend: Backend, requested: str) -> str:
    """The model `backend` serves a requested name with: its mapping for the name, else its default
    (the router's rules, limited to one backend)."""
    mapping = backend.config.model_mapping
    for name in dict.fromkeys((requested, _SUFFIX.sub("", requested))):
        if name in mapping:
            return mapping[name]
        for pattern, model in mapping.items():
            if any(ch in pattern for ch in "*?[") and fnmatch.fnmatchcase(name, pattern):
                return model
    return await default_model(backend)


async def fit_budget(gw: Gateway, backend: Backend, breq: BackendRequest,
                     record: RequestRecord) -> tuple[Backend, BackendRequest]:
    """The context budget: the request as edited to fit its backend's window, or moved to the
    backend's `fallback_on_overflow`; the log line says which edits (or which move) it took."""
    try:
        budget = await fit_context(backend, breq, gw.router.backends)
    except GatewayError as err:  # it cannot even be counted (e.g. no replica left): its fallback's turn
        reason = fallback_reason(err)
        switched = await use_fallback(gw, backend, breq, record, reason, err.message) if reason else None
        if switched is None:
            raise
        return switched[0], switched[1]
    if budget.edits:
        record.edited(budget.edits)
    if budget.fallback is not None:
        record.routed(budget.backend.name, budget.request.model, budget.fallback)
    return budget.backend, budget.request


async def fit_with_fallback(gw: Gateway, backend: Backend, breq: BackendRequest,
                            record: RequestRecord) -> tuple[Backend, BackendRequest, Fit]:
    """fit_request, moving to the fallback when the backend cannot even fit the prompt for a reason
    its fallback covers (e.g. no replica left to count the prompt's tokens)."""
    try:
        fit = await fit_request(backend, breq)
    except GatewayError as err:
        reason = fallback_reason(err)
        switched = await use_fallback(gw, backend, breq, record, reason, err.message) if reason else None
        if switched is None:
            raise
        return switched
    breq.max_tokens = fit.max_tokens
    return backend, breq, fit


async def events_with_fallback(gw: Gateway, backend: Backend, breq: BackendRequest,
                               record: RequestRecord) -> AsyncGenerator[list[Event], None]:
    """The backend's events; when it fails before any content (Started carries none), its fallback's,
    down the chain. Started goes out once, so a client never sees the switch."""
    started = False
    while True:
        events = backend.stream(breq)
        delivered = False
        try:
            async for item in events:
                if type(item[0]) is Started:  # alone in the first batch (Backend.stream)
                    record.came_whole(item[0].whole)  # of the backend that answers, after a fallback too
                    if started:
                        continue
                    started = True
                else:
                    delivered = True
                yield item
            return
        except GatewayError as err:
            reason = None if delivered else fallback_reason(err)
            switched = await use_fallback(gw, backend, breq, record, reason, err.message) if reason else None
            if switched is None:
                raise
            backend, breq, _ = switched
        finally:
            record.served_by(breq.replica)
            await events.aclose()


async def _respond_json(ms: MessageStream, events: AsyncIterator[list[Event]], record: RequestRecord,
                        wire: Wire) -> web.Response:
    ms.message_start()
    async for ev in events:
        _feed(ms, ev)
        if ms.ttft_seen:
            record.mark_first_token()
    ms.finish()
    record.stopped(ms.stop_reason)
    return web.json_response(wire.message(), dumps=_dumps)


class _Pinger:
    """Writes `ping` bytes whenever nothing else went out for `interval` seconds."""

    def __init__(self, resp: web.StreamResponse, interval: float, ping: bytes = PING):
        self.resp = resp
        self.interval = interval
        self.ping = ping
        self.loop = asyncio.get_running_loop()
        self.last_write = self.loop.time()
        self.task = self.loop.create_task(self._run())

    async def write(self, data: bytes) -> None:
        self.last_write = self.loop.time()
        await self.resp.write(data)

    async def _run(self) -> None:
        while True:
            wait = self.last_write + self.interval - self.loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            self.last_write = self.loop.time()
            await self.resp.write(self.ping)

    def stop(self) -> None:
        self.task.cancel()


async def _respond_sse(request: web.Request, ms: MessageStream, events: AsyncIterator[list[Event]],
                       record: RequestRecord, wire: Wire) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    interval = gw.config.server.ping_interval_s
    # Wait for the backend to accept (or refuse) before committing to a 200: errors known
    # this early go out as JSON with their real status, so SDKs can raise and retry (C9).
    first = asyncio.ensure_future(events.__anext__())
    try:
        await asyncio.wait({first}, timeout=interval)
    except asyncio.CancelledError:
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        raise
    if first.done() and not first.cancelled():
        exc = first.exception()
        if exc is not None and not isinstance(exc, StopAsyncIteration):
            raise exc  # the backend's error, before any byte went out

    resp = web.StreamResponse(status=200, headers=SSE_HEADERS)
    resp.headers["request-id"] = record.request_id
    await resp.prepare(request)
    record.responded(200)  # a stream in flight from here on (the in-flight gauge)
    pinger = _Pinger(resp, interval, wire.ping)
    try:
        await pinger.write(wire.start())
        try:
            ev = await first  # pings keep flowing while a slow backend prefills
            frames = _feed(ms, ev)
            if frames:
                if ms.ttft_seen:
                    record.mark_first_token()
                await pinger.write(wire.frames(frames))
            async for ev in events:
                frames = _feed(ms, ev)
                if frames:
                    if ms.ttft_seen:
                        record.mark_first_token()
                    await pinger.write(wire.frames(frames))
        except StopAsyncIteration:
            pass
        except GatewayError as err:
            await _write_error(pinger, wire, err, record)
            return resp
        except (asyncio.CancelledError, ConnectionResetError) as exc:
            if gw.stopping and isinstance(exc, asyncio.CancelledError):
                # Cut by the shutdown grace period, not by the client: end the stream with an
                # error event it retries on, and let the response finish cleanly.
                _uncancel()
                with contextlib.suppress(Exception):
                    await _write_error(pinger, wire, _shutting_down(), record)
                return resp
            record.failed(client_disconnected("the client closed the stream"))
            raise
        except Exception as exc:  # a backend bug must still end the stream with an error event
            log.exception("backend_failed_mid_stream", backend=record.backend)
            await _write_error(pinger, wire, GatewayError(500, f"internal error: {type(exc).__name__}: {exc}"),
                               record)
            return resp
        pinger.stop()
        await resp.write(wire.finish(ms.finish()))
        record.stopped(ms.stop_reason)
        await resp.write_eof()
        return resp
    finally:
        pinger.stop()
        if not first.done():
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)


async def _write_error(pinger: _Pinger, wire: Wire, err: GatewayError, record: RequestRecord) -> None:
    pinger.stop()
    record.failed(err.info)
    await pinger.resp.write(wire.error(err))
    await pinger.resp.write_eof()


def _feed(ms: MessageStream, batch: list[Event]) -> list[dict]:
    """Anthropic events for one batch of backend events (written out together)."""
    if len(batch) == 1:
        return ms.feed(batch[0])
    out: list[dict] = []
    for ev in batch:
        out += ms.feed(ev)
    return out


def _dumps(obj: object) -> str:
    try:
        return orjson.dumps(obj).decode()
    except TypeError:  # tool arguments from the upstream nested past orjson's 255 levels
        return json.dumps(obj, ensure_ascii=False)
