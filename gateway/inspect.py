"""The request inspector: GET /inspect, a page (plain HTML and one script, no build step, no CDN)
that shows the gateway's latest request-log lines live, one request's whole record with its
answer, and a session's context growth.

The page and its script hold no data and open without a token; the data routes under
/inspect/api/ follow the /v1/* rule: with server.auth_token set they need it (the page asks for
it and sends it as x-api-key), without one they are open — as /v1/* is: `serve` then listens on
loopback only, unless server.allow_public says otherwise.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import orjson
from aiohttp import web

from gateway.protocol.backend import BackendUnavailable
from gateway.protocol.errors import GatewayError
from gateway.app_state import GATEWAY

_STATIC = Path(__file__).with_name("static")
_PAGES = {"/inspect": ("inspect.html", "text/html"), "/inspect/inspect.js": ("inspect.js", "text/javascript"),
          "/inspect/inspect.css": ("inspect.css", "text/css")}
# The page loads nothing from elsewhere, and nothing elsewhere may frame it.
_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
_WINDOW_LOOKUP_S = 2.0


def add_inspector(app: web.Application, authorized: Callable[[web.Request, str], bool]) -> None:
    """Register the inspector's routes; `authorized` is the gateway's token check."""

    def guard(request: web.Request) -> None:
        token = request.app[GATEWAY].config.server.auth_token
        if token and not authorized(request, token):
            raise GatewayError(401, "invalid x-api-key or Authorization bearer token")

    async def page(request: web.Request) -> web.Response:
        name, kind = _PAGES[request.path]
        return web.Response(body=(_STATIC / name).read_bytes(), content_type=kind, charset="utf-8",
                            headers=_HEADERS)

    async def records(request: web.Request) -> web.Response:
        """{"seq": last line number, "records": [the head of each line newer than ?after=N]}."""
        guard(request)
        gw = request.app[GATEWAY]
        try:
            after = int(request.query.get("after", "0"))
        except ValueError:
            raise GatewayError(400, "after: must be an integer (the seq of the last line seen)") from None
        lines = gw.reqlog.recent(after)
        heads = []
        for seq, line in lines:
            rec = _decode(line)
            if rec is None:
                continue
            rec.pop("body", None)
            response = rec.pop("response", None)
            rec["seq"] = seq
            rec["answer_preview"] = _preview(response)
            heads.append(rec)
        windows = await _windows(gw, {(r.get("backend"), r.get("backend_model")) for r in heads})
        seq = lines[-1][0] if lines else after
        return _json({"seq": seq, "records": heads, "context_windows": windows})

    async def record(request: web.Request) -> web.Response:
        """One whole line, as the log holds it (body and response included when log.bodies is on)."""
        guard(request)
        wanted = request.match_info["request_id"]
        needle = b'"request_id":' + orjson.dumps(wanted)
        for _, line in reversed(request.app[GATEWAY].reqlog.recent()):
            if needle in line and (_decode(line) or {}).get("request_id") == wanted:
                return web.Response(body=line, content_type="application/json", headers=_HEADERS)
        raise GatewayError(404, f"{wanted} is not among the gateway's latest requests; "
                                "older ones are in the request log (claude-gateway-replay show ID)")

    for path in _PAGES:
        app.router.add_get(path, page)
    app.router.add_get("/inspect/api/records", records)
    app.router.add_get("/inspect/api/records/{request_id}", record)


def _decode(line: bytes) -> dict | None:
    """A log line as a dict; only its head when the body nests deeper than orjson reads."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        pass
    i = line.find(b',"body":')
    try:
        return orjson.loads(line[:i] + b"}") if i > 0 else None
    except orjson.JSONDecodeError:
        return None


def _preview(response: object) -> str:
    """The first words of an answer, for the list."""
    if not isinstance(response, list):
        return ""
    parts = []
    for block in response:
        if isinstance(block, dict):
            if block.get("type") == "text":
                parts.append(str(block.get("text") or ""))
            elif block.get("type") == "tool_use":
                # incomplete: held back from the client (cut stream, length stop), as the detail view says
                parts.append(f"[{block.get('name')}, cut short]" if block.get("incomplete") else f"[{block.get('name')}]")
    return " ".join(parts)[:160]


async def _windows(gw, pairs: set[tuple[str | None, str | None]]) -> dict[str, int]:
    """Context window per "backend/model" seen (for the session chart); unknown ones are left out."""
    out: dict[str, int] = {}
    for backend_name, model in pairs:
        backend = gw.backends.get(backend_name) if backend_name else None
        if backend is None or not model:
            continue
        try:
            window = await asyncio.wait_for(backend.context_window(model), _WINDOW_LOOKUP_S)
        except (BackendUnavailable, GatewayError, asyncio.TimeoutError, OSError):
            continue  # an unreachable backend: the chart simply has no window line
        if window:
            out[f"{backend_name}/{model}"] = window
    return out


def _json(data: dict) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json", headers=_HEADERS)
