"""GET /v1/models (paginated, Anthropic shape) and GET /v1/models/{id}."""
from __future__ import annotations

from datetime import datetime, timezone

import orjson
from aiohttp import web

from gateway.errors import invalid, not_found
from gateway.state import GATEWAY, Gateway

EPOCH = "1970-01-01T00:00:00Z"
DEFAULT_LIMIT = 20
MAX_LIMIT = 1000


def _created_at(ts: int | None) -> str:
    if not ts:
        return EPOCH
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


async def catalog(gw: Gateway) -> list[dict]:
    """Every name /v1/messages accepts by itself: the config's exact names, then backend models."""
    entries: dict[str, dict] = {}
    for name in gw.router.exact_names():
        route = await gw.router.resolve(name)
        ctx = await route.backend.context_window(route.model)
        entries[name] = _entry(name, f"{name} → {route.model} ({route.backend.name})", None, ctx)
    for backend in gw.backends.values():
        for info in await backend.models():
            if info.id not in entries:
                entries[info.id] = _entry(info.id, f"{info.id} ({backend.name})", info.created, info.context_window)
    return list(entries.values())


def _entry(model_id: str, display: str, created: int | None, context: int | None) -> dict:
    entry = {"type": "model", "id": model_id, "display_name": display, "created_at": _created_at(created)}
    if context:
        entry["max_input_tokens"] = context
    return entry


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    try:
        value = int(raw)
    except ValueError:
        raise invalid("limit: expected an integer") from None
    if not 1 <= value <= MAX_LIMIT:
        raise invalid(f"limit: must be between 1 and {MAX_LIMIT}")
    return value


def _index_of(entries: list[dict], model_id: str, param: str) -> int:
    for i, e in enumerate(entries):
        if e["id"] == model_id:
            return i
    raise invalid(f"{param}: unknown model id '{model_id}'")


async def handle_list_models(request: web.Request) -> web.Response:
    """A page of models; after_id / before_id cursors walk the same stable order."""
    entries = await catalog(request.app[GATEWAY])
    q = request.query
    limit = _limit(q.get("limit"))
    if q.get("after_id"):
        start = _index_of(entries, q["after_id"], "after_id") + 1
        page = entries[start:start + limit]
        has_more = start + limit < len(entries)
    elif q.get("before_id"):
        end = _index_of(entries, q["before_id"], "before_id")
        start = max(0, end - limit)
        page = entries[start:end]
        has_more = start > 0
    else:
        page = entries[:limit]
        has_more = limit < len(entries)
    body = {"data": page, "has_more": has_more,
            "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None}
    return web.json_response(body, dumps=lambda o: orjson.dumps(o).decode())


async def handle_get_model(request: web.Request) -> web.Response:
    """One model, with the same fields and values as its list entry."""
    model_id = request.match_info["model_id"]
    for entry in await catalog(request.app[GATEWAY]):
        if entry["id"] == model_id:
            return web.json_response(entry, dumps=lambda o: orjson.dumps(o).decode())
    raise not_found(f"model '{model_id}' not found")
