"""The aiohttp application: routes, auth, request ids, Anthropic-shaped errors, request log."""
from __future__ import annotations

import hmac

import orjson
import structlog
from aiohttp import web

from gateway.errors import GatewayError
from gateway.inspect import add_inspector
from gateway.messages import handle_count_tokens, handle_messages
from gateway.metrics import CONTENT_TYPE, CacheUse, loopback
from gateway.message_stream import new_id
from gateway.models_api import handle_get_model, handle_list_models
from gateway.reqlog import RequestRecord, redact_headers
from gateway.state import GATEWAY, RECORD, Gateway

log = structlog.get_logger("gateway.server")

# Routes whose calls go into the request log; everything else is probes and health checks.
_LOGGED_PREFIXES = ("/v1/messages", "/v1/v1/messages", "/v1/models", "/v1/v1/models")


def _dumps(obj: object) -> str:
    return orjson.dumps(obj).decode()


def error_response(err: GatewayError, request_id: str) -> web.Response:
    """The JSON error response (status, body, retry headers, request-id)."""
    resp = web.json_response(err.body(request_id), status=err.status, dumps=_dumps)
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


@web.middleware
async def gateway_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Request id, auth on /v1/*, one error shape for every failure, one log line per API call."""
    gw = request.app[GATEWAY]
    request_id = new_id("req_")
    path = request.path
    record = RequestRecord(request_id=request_id, method=request.method, path=path, query=request.query_string,
                           user_agent=request.headers.get("User-Agent"))
    if request.raw_path != (f"{path}?{record.query}" if record.query else path):  # what `curl ID` re-sends
        record.raw_path = request.raw_path
    request[RECORD] = record
    logged = path.startswith(_LOGGED_PREFIXES)
    if logged:
        gw.metrics.track(record)
    try:
        token = gw.config.server.auth_token
        known = request.match_info.route.handler is not handle_unknown
        if token and known and path.startswith("/v1/") and not _authorized(request, token):
            raise GatewayError(401, "invalid x-api-key or Authorization bearer token")
        resp = await handler(request)
        if not resp.prepared:
            resp.headers["request-id"] = request_id
        if not record.status:
            record.status = resp.status
        return resp
    except GatewayError as err:
        record.status = err.status
        record.error = {"type": err.type, "message": err.message}
        return error_response(err, request_id)
    except web.HTTPRequestEntityTooLarge:
        err = GatewayError(413, f"request body exceeds the {gw.config.server.max_body_mb:g} MB limit "
                                "(server.max_body_mb)")
        record.status, record.error = 413, {"type": err.type, "message": err.message}
        return error_response(err, request_id)
    except web.HTTPException as exc:
        err = GatewayError(exc.status, exc.reason or "error")
        record.status, record.error = exc.status, {"type": err.type, "message": err.message}
        return error_response(err, request_id)
    except ConnectionResetError:
        record.status = 499  # the client went away mid-response; nobody is left to answer
        raise
    except Exception as exc:
        log.exception("unhandled_error", request_id=request_id, path=path)
        err = GatewayError(500, f"internal error: {type(exc).__name__}")
        record.status, record.error = 500, {"type": err.type, "message": err.message}
        return error_response(err, request_id)
    finally:
        if logged or record.event == "unknown_route":
            record.finish(record.status or 499)  # 499: the client went away before an answer
            if record.status >= 400 and record.error is None:  # every failed line says why (log_replay --errors-only)
                record.error = ({"type": "client_disconnected", "message": "the client went away before an answer"}
                                if record.status == 499 else {"type": "api_error", "message": f"HTTP {record.status}"})
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
    """Each backend's state, models and context window."""
    gw = request.app[GATEWAY]
    backends = {}
    for name, backend in gw.backends.items():
        h = await backend.health()
        cache = gw.metrics.cache.get(name)
        backends[name] = {"type": backend.config.type, "ok": h.ok, "detail": h.detail, "models": h.models,
                          "context_window": h.context_window,
                          "cache": (cache or CacheUse()).to_dict()}
    ok = all(b["ok"] for b in backends.values())
    return web.json_response({"status": "ok" if ok else "degraded", "backends": backends}, dumps=_dumps)


async def handle_metrics(request: web.Request) -> web.Response:
    """Prometheus exposition. With server.auth_token set, scrapes from this host need no token
    (a local Prometheus rarely has one); from elsewhere the token is required as for /v1/*."""
    gw = request.app[GATEWAY]
    token = gw.config.server.auth_token
    if token and not loopback(request.remote) and not _authorized(request, token):
        raise GatewayError(401, "invalid x-api-key or Authorization bearer token")
    return web.Response(body=gw.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})


async def handle_event_logging(request: web.Request) -> web.Response:
    """Claude Code telemetry: accepted and dropped, quickly."""
    return web.json_response({}, dumps=_dumps)


async def handle_unknown(request: web.Request) -> web.Response:
    """Any other route: an Anthropic-shaped 404, recorded as unknown_route so new probes show up."""
    record = request[RECORD]
    record.event = "unknown_route"
    record.headers = redact_headers(request.headers)
    if request.can_read_body:
        record.body_bytes = len(await request.read())
    raise GatewayError(404, f"no route for {request.method} {request.path}")


def create_app(gateway: Gateway) -> web.Application:
    """The aiohttp application for a Gateway; starts and closes its backends with the app."""
    app = web.Application(middlewares=[gateway_middleware],
                          client_max_size=int(gateway.config.server.max_body_mb * 1024 * 1024))
    app[GATEWAY] = gateway
    app.router.add_get("/", handle_root)
    app.router.add_get("/api/hello", handle_hello)  # aiohttp answers HEAD on every GET route
    app.router.add_get("/health", handle_health)
    app.router.add_get("/metrics", handle_metrics)
    # A base URL that ends in /v1 makes SDKs call /v1/v1/…: serve both.
    for prefix in ("/v1", "/v1/v1"):
        app.router.add_post(f"{prefix}/messages", handle_messages)
        app.router.add_post(f"{prefix}/messages/count_tokens", handle_count_tokens)
        app.router.add_get(f"{prefix}/models", handle_list_models)
        app.router.add_get(prefix + "/models/{model_id:.+}", handle_get_model)
    app.router.add_post("/api/event_logging/batch", handle_event_logging)
    add_inspector(app, _authorized)
    # (?s): a path holding a decoded newline is an unknown route too, not an unlogged 404.
    app.router.add_route("*", "/{tail:(?s:.*)}", handle_unknown)

    async def on_startup(_app: web.Application) -> None:
        await gateway.start()

    async def on_cleanup(_app: web.Application) -> None:
        await gateway.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app
