"""The aiohttp application: routes, auth, request ids, Anthropic-shaped errors, request log."""
from __future__ import annotations

import asyncio
import hmac

import orjson
import structlog
from aiohttp import HttpVersion11, web
from aiohttp.typedefs import Handler

from gateway.protocol.errors import ErrorInfo, GatewayError, client_disconnected, openai_error_body
from gateway.inspect import add_inspector
from gateway.message_stream import new_id
from gateway.messages import handle_count_tokens, handle_messages
from gateway.metrics import CONTENT_TYPE, CacheUse, loopback
from gateway.models_api import handle_get_model, handle_list_models
from gateway.openai_api import handle_chat_completions
from gateway.reqlog import RequestRecord, redact_headers
from gateway.app_state import GATEWAY, RECORD, Gateway

log = structlog.get_logger("gateway.server")

REFUSED_BODY_DRAIN_S = 1.0
# Routes whose calls go into the request log; everything else is probes and health checks.
_LOGGED_PREFIXES = ("/v1/messages", "/v1/v1/messages", "/v1/models", "/v1/v1/models", "/v1/chat/completions",
                    "/v1/v1/chat/completions")
# Routes of the OpenAI API: their errors take OpenAI's shape, their log lines say api "openai".
_OPENAI_PATHS = frozenset({"/v1/chat/completions", "/v1/v1/chat/completions"})


def _dumps(obj: object) -> str:
    return orjson.dumps(obj).decode()


def error_response(err: GatewayError, request_id: str, openai: bool = False) -> web.Response:
    """The JSON error response (status, body, retry headers, request-id)."""
    body = openai_error_body(err) if openai else err.body(request_id)
    resp = web.json_response(body, status=err.status, dumps=_dumps)
    resp.headers.update(err.headers)
    resp.headers["request-id"] = request_id
    return resp


def _authorized(request: web.Request, token: str) -> bool:
    expected = token.encode()
    candidates = [request.headers.get("x-api-key", "")]
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        candidates.append(auth[7:].strip())
    # compare_digest on every candidate: timing does not reveal which header or how much matched.
    ok = False
    for c in candidates:
        # surrogateescape: header bytes that are not UTF-8 (aiohttp keeps them as lone surrogates)
        # compare as the bytes they were instead of crashing the request with a 500.
        ok |= hmac.compare_digest(c.encode("utf-8", "surrogateescape"), expected)
    return ok


def _refusal(request: web.Request, gw: Gateway) -> GatewayError | None:
    """Why this request is refused before its body is read (browser checks, auth, content type, size)."""
    server = gw.config.server
    if (err := gw.browser_guard.refusal(request)) is not None:
        return err
    if _unknown_route(request):
        return None  # answered 404 by handle_unknown, which never reads the body
    token = server.auth_token
    if token and request.path.startswith("/v1/") and not _authorized(request, token):
        return GatewayError(401, "invalid x-api-key or Authorization bearer token")
    if request.method == "POST":
        if not _json_content_type(request.content_type):
            shown = request.headers.get("Content-Type", "none")[:100]
            return GatewayError(415, f"content-type must be application/json, got {shown!r}",
                                "invalid_request_error")
        length = request.content_length
        if length is not None and length > server.max_body_mb * 1024 * 1024:
            return _too_large(server.max_body_mb)
    return None


def _unknown_route(request: web.Request) -> bool:
    return request.match_info.route.handler is handle_unknown


def _json_content_type(mimetype: str) -> bool:
    # What the Anthropic SDKs and Claude Code send; a browser cannot send it cross-site without a
    # CORS preflight, which this server never approves.
    return mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))


def _too_large(max_body_mb: float) -> GatewayError:
    return GatewayError(413, f"request body exceeds the {max_body_mb:g} MB limit (server.max_body_mb)")


async def _read_body(request: web.Request, timeout_s: float) -> None:
    """Read the whole body now (handlers get it from aiohttp's cache) within server.body_timeout_s."""
    try:
        await asyncio.wait_for(request.read(), timeout_s)
    except asyncio.TimeoutError:
        raise GatewayError(408, f"the request body did not arrive within {timeout_s:g} s (server.body_timeout_s)",
                           "invalid_request_error") from None


async def expect_handler(request: web.Request) -> None:
    """`Expect: 100-continue`: invite the body only for a request that will not be refused."""
    if request.version != HttpVersion11:
        return
    if request.headers.get("Expect", "").lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"Unknown Expect: {request.headers.get('Expect')}")
    if not _unknown_route(request) and _refusal(request, request.app[GATEWAY]) is None:
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")


@web.middleware
async def gateway_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, browser checks, auth on /v1/*, one error shape for every failure, one log line per API call."""
    gw = request.app[GATEWAY]
    request_id = new_id("req_")
    path = request.path
    record = RequestRecord(request_id=request_id, method=request.method, path=path, query=request.query_string,
                           user_agent=request.headers.get("User-Agent"))
    if request.raw_path != (f"{path}?{record.query}" if record.query else path):  # what `curl ID` re-sends
        record.raw_path = request.raw_path
    request[RECORD] = record
    openai = path in _OPENAI_PATHS
    if openai:
        record.api = "openai"
    logged = path.startswith(_LOGGED_PREFIXES)
    if logged:
        gw.metrics.track(record)
    gw.connections.busy(request.protocol)
    try:
        if (refused := _refusal(request, gw)) is not None:
            raise refused
        if request.method == "POST" and request.can_read_body and not _unknown_route(request):
            await _read_body(request, gw.config.server.body_timeout_s)
        resp = await handler(request)
        if not resp.prepared:
            resp.headers["request-id"] = request_id
        if not record.status:
            record.status = resp.status
        return resp
    except GatewayError as exc:
        record.status, record.error = exc.status, exc.info
        return error_response(exc, request_id, openai)
    except web.HTTPRequestEntityTooLarge:
        err = _too_large(gw.config.server.max_body_mb)
        record.status, record.error = 413, err.info
        return error_response(err, request_id, openai)
    except web.HTTPException as exc:
        err = GatewayError(exc.status, exc.reason or "error")
        record.status, record.error = exc.status, err.info
        return error_response(err, request_id, openai)
    except web.RequestPayloadError as exc:  # a broken chunked/compressed body, or the client left mid-body
        err = GatewayError(400, f"the request body could not be read: {type(exc.__cause__ or exc).__name__}")
        record.status, record.error = 400, err.info
        return error_response(err, request_id, openai)
    except ConnectionResetError:
        record.status = 499  # the client went away mid-response; nobody is left to answer
        raise
    except Exception as exc:
        log.exception("unhandled_error", request_id=request_id, path=path)
        err = GatewayError(500, f"internal error: {type(exc).__name__}")
        record.status, record.error = 500, err.info
        return error_response(err, request_id, openai)
    finally:
        gw.connections.idle(request.protocol)
        if logged or record.event == "unknown_route":
            record.finish(record.status or 499)  # 499: the client went away before an answer
            if record.status >= 400 and record.error is None:  # every failed line says why (log_replay --errors-only)
                record.error = (client_disconnected("the client went away before an answer") if record.status == 499
                                else ErrorInfo("api_error", f"HTTP {record.status}"))
            gw.metrics.untrack(record)
            gw.metrics.observe(record, _route_label(request, record))
            gw.reqlog.write(record)


def _route_label(request: web.Request, record: RequestRecord) -> str:
    """The route template for metrics labels (bounded: never the raw path of an unknown route)."""
    if record.event == "unknown_route":
        return "unknown"
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else request.path
    return route.replace("/v1/v1/", "/v1/", 1)


async def handle_root(request: web.Request) -> web.Response:
    """Claude Code's start-up probe (HEAD /) and a human-readable hello."""
    return web.Response(text="claude-gateway: Anthropic Messages API at /v1/messages\n")


async def handle_hello(request: web.Request) -> web.Response:
    """Claude Code's connection warm-up (HEAD /api/hello at start): 200, no auth, like `/`."""
    return web.Response(text="ok\n")


async def handle_health(request: web.Request) -> web.Response:
    """Each backend's state, models and context window, from the latest background check."""
    gw = request.app[GATEWAY]
    backends = {}
    for name, checked in (await gw.health.snapshot()).items():
        h = checked.health
        cache = gw.metrics.cache.get(name)
        backends[name] = {"type": gw.backends[name].config.type, "ok": h.ok, "detail": h.detail, "models": h.models,
                          "context_window": h.context_window, "checked_s_ago": round(checked.age_s(), 1),
                          "cache": (cache or CacheUse()).to_dict()}
        if (replicas := gw.backends[name].replicas()) is not None:
            backends[name]["replicas"] = replicas  # live: what this process sees of each server now
        if h.resident is not None:  # an in-process engine: which models are loaded, which preload is loading
            backends[name]["resident"], backends[name]["loading"] = h.resident, h.loading
    ok = all(b["ok"] for b in backends.values())
    loading = ok and any(b.get("loading") for b in backends.values())
    answer = {"status": "loading" if loading else "ok" if ok else "degraded", "backends": backends}
    if gw.worker is not None:  # `serve --workers N`: which process answered
        answer["worker"] = gw.worker.describe()
    return web.json_response(answer, dumps=_dumps)


async def handle_metrics(request: web.Request) -> web.Response:
    """Prometheus exposition. With server.auth_token set, scrapes from this host need no token
    (a local Prometheus rarely has one); from elsewhere the token is required as for /v1/*."""
    gw = request.app[GATEWAY]
    token = gw.config.server.auth_token
    if token and not loopback(request.remote) and not _authorized(request, token):
        raise GatewayError(401, "invalid x-api-key or Authorization bearer token")
    body = gw.metrics.exposition()
    if gw.worker is not None:  # `serve --workers N`: every worker's counts, added up
        body = await gw.worker.metrics(body)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def handle_event_logging(request: web.Request) -> web.Response:
    """Claude Code telemetry: accepted and dropped, quickly."""
    return web.json_response({}, dumps=_dumps)


async def handle_unknown(request: web.Request) -> web.Response:
    """Any other route: an Anthropic-shaped 404, recorded as unknown_route so new probes show up."""
    record = request[RECORD]
    record.event = "unknown_route"
    record.headers = redact_headers(request.headers)
    # Never read: an unauthenticated client must not make the gateway buffer what it will refuse
    # (see runner_options for what happens to the unread bytes).
    record.body_bytes = request.content_length
    raise GatewayError(404, f"no route for {request.method} {request.path}")


def runner_options(gateway: Gateway) -> dict:
    """AppRunner keyword arguments that carry the [server] read limits into aiohttp's connection handler."""
    return {
        "handler_cancellation": True,
        # aiohttp closes a connection that has not delivered a complete request within this long,
        # counted from its opening (or its previous answer), however slowly bytes trickle in.
        "keepalive_timeout": gateway.config.server.header_timeout_s,
        # A body left unread (a refused request) is never buffered: after the answer, incoming bytes are
        # discarded for at most this long, then the connection closes. The short drain lets the client
        # read the answer instead of a TCP reset; aiohttp's default drains for 10 s.
        "lingering_time": REFUSED_BODY_DRAIN_S,
    }


def create_app(gateway: Gateway) -> web.Application:
    """The aiohttp application for a Gateway; starts and closes its backends with the app."""
    app = web.Application(middlewares=[gateway_middleware],
                          client_max_size=int(gateway.config.server.max_body_mb * 1024 * 1024))
    app[GATEWAY] = gateway
    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/", handle_root), ("GET", "/api/hello", handle_hello), ("GET", "/health", handle_health),
        ("GET", "/metrics", handle_metrics)]
    # A base URL that ends in /v1 makes SDKs call /v1/v1/…: serve both.
    for prefix in ("/v1", "/v1/v1"):
        routes += [("POST", f"{prefix}/messages", handle_messages),
                   ("POST", f"{prefix}/messages/count_tokens", handle_count_tokens),
                   ("POST", f"{prefix}/chat/completions", handle_chat_completions),
                   ("GET", f"{prefix}/models", handle_list_models),
                   ("GET", prefix + "/models/{model_id:.+}", handle_get_model)]
    routes += [("POST", "/api/event_logging/batch", handle_event_logging)]
    for method, path, handler in routes:
        if method == "GET":  # add_get also answers HEAD (Claude Code's start-up probe is HEAD /)
            app.router.add_get(path, handler, expect_handler=expect_handler)
        else:
            app.router.add_route(method, path, handler, expect_handler=expect_handler)
    add_inspector(app, _authorized)
    # Last: (?s) makes a path holding a decoded newline an unknown route too, not an unlogged 404.
    app.router.add_route("*", "/{tail:(?s:.*)}", handle_unknown, expect_handler=expect_handler)

    async def on_startup(_app: web.Application) -> None:
        await gateway.start()
        gateway.begin_preload()

    async def on_cleanup(_app: web.Application) -> None:
        await gateway.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app
