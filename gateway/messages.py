"""POST /v1/messages and /v1/messages/count_tokens."""
from __future__ import annotations

import asyncio
import contextlib
import json
from typing import AsyncIterator

import orjson
import structlog
from aiohttp import web

from backends.base import BackendRequest
from gateway.anthropic import MessagesRequest, parse_messages_request
from gateway.context_budget import fit_context
from gateway.context_edits import apply_context_edits
from gateway.errors import GatewayError
from gateway.events import Event
from gateway.json_body import decode_body
from gateway.limits import fit_request
from gateway.message_stream import MessageStream
from gateway.normalize import normalize, session_id
from gateway.reqlog import RequestRecord
from gateway.sse import PING, encode_all
from gateway.state import GATEWAY, RECORD
from gateway.tool_search import apply_tool_search

log = structlog.get_logger("gateway.messages")

APPLIED_EDITS = web.RequestKey("applied_edits", list)

SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
               "Connection": "keep-alive", "X-Accel-Buffering": "no"}


async def read_body(request: web.Request, record: RequestRecord) -> object:
    """The decoded JSON body; 413 over the configured limit, 400 for anything not JSON."""
    raw = await request.read()
    record.body_bytes = len(raw)
    try:
        body = decode_body(raw)
    except GatewayError:
        record.body = raw.decode("utf-8", "replace")  # logged as text, so even this request can be replayed
        raise
    record.body = body
    return body


_UNKNOWN_LOGGED: set[str] = set()
_UNKNOWN_LOG_CAP = 256  # distinct types remembered; a client inventing names cannot grow it without end


def _note_unknown(req: MessagesRequest, record: RequestRecord) -> None:
    """Tolerated unknown block types go on the request's log line; each is logged once per process."""
    if not req.unknown_blocks:
        return
    record.unknown_blocks = req.unknown_blocks
    for label in req.unknown_blocks:
        if label not in _UNKNOWN_LOGGED and len(_UNKNOWN_LOGGED) < _UNKNOWN_LOG_CAP:
            _UNKNOWN_LOGGED.add(label)
            kind, _, where = label.rpartition("@")
            log.warning("unknown_block_type", type=kind, where=where, request_id=record.request_id,
                        hint="passed on as text when it carries text, dropped otherwise")


async def _prepare(request: web.Request, count_only: bool) -> tuple[MessagesRequest, BackendRequest, object]:
    gw = request.app[GATEWAY]
    record = request[RECORD]
    body = await read_body(request, record)
    req = apply_tool_search(gw.thinking.restore(normalize(parse_messages_request(body, count_only=count_only))))
    _note_unknown(req, record)
    req, applied = apply_context_edits(req)
    request[APPLIED_EDITS] = applied
    record.model = req.model
    record.stream = req.stream
    record.session_id = session_id(request.headers.get("X-Claude-Code-Session-Id"), req)
    route = await gw.router.resolve(req.model)
    record.backend, record.backend_model = route.backend.name, route.model
    breq = BackendRequest(req, route.model, req.max_tokens or 1, record.session_id)
    return req, breq, route.backend


async def handle_count_tokens(request: web.Request) -> web.Response:
    """Prompt tokens with the backend's tokenizer (or its documented estimate); never generates."""
    _, breq, backend = await _prepare(request, count_only=True)
    count = await backend.count_tokens(breq)
    request[RECORD].input_tokens = count.tokens
    return web.json_response({"input_tokens": max(1, count.tokens)}, dumps=_dumps)


def _shutting_down() -> GatewayError:
    return GatewayError(529, "the gateway is shutting down; retry the request", "overloaded_error")


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None and hasattr(task, "uncancel"):  # Python ≥ 3.11
        task.uncancel()


async def handle_messages(request: web.Request) -> web.StreamResponse:
    """Generate a message: JSON, or SSE when the body says stream:true."""
    gw = request.app[GATEWAY]
    task = asyncio.current_task()
    gw.inflight.add(task)
    try:
        return await _generate(request)
    except asyncio.CancelledError:
        if not gw.stopping:
            raise  # the client went away
        _uncancel()  # cut by the shutdown: answer instead of vanishing
        raise _shutting_down() from None
    finally:
        gw.inflight.discard(task)


async def _generate(request: web.Request) -> web.StreamResponse:
    req, breq, backend = await _prepare(request, count_only=False)
    record = request[RECORD]
    budget = await fit_context(backend, breq, request.app[GATEWAY].router.backends)
    backend, breq = budget.backend, budget.request
    if budget.edits:
        record.context_edits = budget.edits
    if budget.fallback is not None:
        record.fallback = budget.fallback
        record.backend, record.backend_model = backend.name, breq.model
    fit = await fit_request(backend, breq)
    breq.max_tokens = fit.max_tokens
    # message_start must never report more input than the final usage: the estimate is halved.
    ms = MessageStream(model=req.model, input_tokens=fit.prompt_tokens if fit.exact else fit.prompt_tokens // 2,
                       show_thinking=req.thinking_enabled,
                       omit_thinking=req.thinking is not None and req.thinking.display == "omitted",
                       context_management=None if req.context_edits is None
                       else {"applied_edits": request[APPLIED_EDITS]})
    events = backend.stream(breq)
    try:
        if req.stream:
            return await _respond_sse(request, ms, events, record)
        return await _respond_json(ms, events, record)
    finally:
        await events.aclose()
        # A cut stream never reached finish(): count what it delivered, not 0.
        usage = ms.usage if ms.finished else ms.final_usage()
        # What the client was sent (the log writes it with the bodies); nothing when it failed before message_start.
        record.response = ms.answer.content() if ms.answer.message else None
        record.input_tokens = usage.input_tokens
        record.output_tokens = usage.output_tokens
        record.cache_read_tokens = usage.cache_read_input_tokens
        record.tool_names = ms.tool_names or None
        for signature, thinking in ms.omitted_thinking:
            request.app[GATEWAY].thinking.remember(signature, thinking)
        if ms.engine_stats is not None:
            stats = ms.engine_stats
            record.prefill_tps, record.decode_tps = stats.prefill_tps, stats.decode_tps
            record.peak_memory_mb = stats.peak_memory_mb


async def _respond_json(ms: MessageStream, events: AsyncIterator[Event], record: RequestRecord) -> web.Response:
    ms.message_start()
    async for ev in events:
        _feed(ms, ev)
        if ms.ttft_seen:
            record.mark_first_token()
    ms.finish()
    record.stop_reason = ms.stop_reason
    return web.json_response(ms.answer.message, dumps=_dumps)


class _Pinger:
    """Writes `ping` events whenever nothing else went out for `interval` seconds."""

    def __init__(self, resp: web.StreamResponse, interval: float):
        self.resp = resp
        self.interval = interval
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
            await self.resp.write(PING)

    def stop(self) -> None:
        self.task.cancel()


async def _respond_sse(request: web.Request, ms: MessageStream, events: AsyncIterator[Event],
                       record: RequestRecord) -> web.StreamResponse:
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
    record.status = 200
    pinger = _Pinger(resp, interval)
    try:
        await pinger.write(encode_all([ms.message_start()]))
        try:
            ev = await first  # pings keep flowing while a slow backend prefills
            frames = _feed(ms, ev)
            if frames:
                if ms.ttft_seen:
                    record.mark_first_token()
                await pinger.write(encode_all(frames))
            async for ev in events:
                frames = _feed(ms, ev)
                if frames:
                    if ms.ttft_seen and record.ttft_ms is None:
                        record.mark_first_token()
                    await pinger.write(encode_all(frames))
        except StopAsyncIteration:
            pass
        except GatewayError as err:
            await _write_error(pinger, err, record)
            return resp
        except (asyncio.CancelledError, ConnectionResetError) as exc:
            if gw.stopping and isinstance(exc, asyncio.CancelledError):
                # Cut by the shutdown grace period, not by the client: end the stream with an
                # error event it retries on, and let the response finish cleanly.
                _uncancel()
                with contextlib.suppress(Exception):
                    await _write_error(pinger, _shutting_down(), record)
                return resp
            record.error = {"type": "client_disconnected", "message": "the client closed the stream"}
            raise
        except Exception as exc:  # a backend bug must still end the stream with an error event
            log.exception("backend_failed_mid_stream", backend=record.backend)
            await _write_error(pinger, GatewayError(500, f"internal error: {type(exc).__name__}: {exc}"), record)
            return resp
        pinger.stop()
        await resp.write(encode_all(ms.finish()))
        record.stop_reason = ms.stop_reason
        await resp.write_eof()
        return resp
    finally:
        pinger.stop()
        if not first.done():
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)


async def _write_error(pinger: _Pinger, err: GatewayError, record: RequestRecord) -> None:
    pinger.stop()
    record.error = {"type": err.type, "message": err.message}
    await pinger.resp.write(encode_all([MessageStream.error_event(err)]))
    await pinger.resp.write_eof()


def _feed(ms: MessageStream, item: Event | list[Event]) -> list[dict]:
    """Anthropic events for one backend item: an event, or the list of events of one upstream read."""
    if type(item) is not list:
        return ms.feed(item)
    out: list[dict] = []
    for ev in item:
        out += ms.feed(ev)
    return out


def _dumps(obj: object) -> str:
    try:
        return orjson.dumps(obj).decode()
    except TypeError:  # tool arguments from the upstream nested past orjson's 255 levels
        return json.dumps(obj, ensure_ascii=False)
