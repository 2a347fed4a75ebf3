"""GET /v1/models (paginated, Anthropic shape) and GET /v1/models/{id}.

Clients without an `anthropic-version` header (the openai SDK, Cursor, LangChain) get the same
entries with OpenAI's `object`/`created`/`owned_by` added, `object: "list"`, and every model in
one page; that response parses with both SDKs.

The catalog lists the config's exact names, then the Claude ids each glob serves (from
gateway/claude_models.toml or [routing].claude_models, so Claude Code's model discovery finds
them on a glob-only config), then every backend model. Listing only reads what backends already
know: it never loads, downloads or evicts an embedded model.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import orjson
from aiohttp import web

from gateway.protocol.backend import Backend, ModelInfo
from gateway.config import tomllib
from gateway.protocol.errors import invalid, not_found
from gateway.router import Route
from gateway.app_state import GATEWAY, Gateway

EPOCH = "1970-01-01T00:00:00Z"
DEFAULT_LIMIT = 20
MAX_LIMIT = 1000
CLAUDE_MODELS_FILE = Path(__file__).with_name("claude_models.toml")


@lru_cache(maxsize=1)
def shipped_claude_ids() -> tuple[str, ...]:
    """The Claude ids of the data file shipped with the gateway."""
    with CLAUDE_MODELS_FILE.open("rb") as f:
        return tuple(tomllib.load(f)["ids"])


def claude_ids(gw: Gateway) -> list[str]:
    """The Claude ids globs are matched against: the config's list, else the shipped one."""
    return list(gw.config.claude_models) if gw.config.claude_models is not None else list(shipped_claude_ids())


def family_name(model_id: str) -> str:
    """"claude-sonnet-4-6" → "Sonnet 4.6"; other names stay as they are."""
    parts = model_id.split("-")
    if len(parts) < 2 or parts[0] != "claude":
        return model_id
    words = [p.capitalize() for p in parts[1:] if p.isalpha()]
    version = [p for p in parts[1:] if p.isdigit() and len(p) <= 2]
    return " ".join(words + ([".".join(version)] if version else [])) or model_id


def _short(backend_model: str) -> str:
    """The model's own name: a Hugging Face id or a path without its owner or directories."""
    return re.split(r"[/\\]", backend_model.rstrip("/\\"))[-1] or backend_model


def _created_at(ts: int | None) -> str:
    if not ts:
        return EPOCH
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Infos:
    """Each backend's ModelInfo list, asked once per catalog build."""

    def __init__(self) -> None:
        self._by_backend: dict[str, dict[str, ModelInfo]] = {}

    async def of(self, backend: Backend) -> dict[str, ModelInfo]:
        if backend.name not in self._by_backend:
            self._by_backend[backend.name] = {m.id: m for m in await backend.models()}
        return self._by_backend[backend.name]

    async def context(self, route: Route) -> int | None:
        info = (await self.of(route.backend)).get(route.model)
        # A model the backend lists carries what it knows; asking context_window() could load an
        # embedded model, so that is left to remote backends' other models.
        if info is not None:
            return info.context_window
        return await route.backend.context_window(route.model)


async def _routed_entry(name: str, route: Route, infos: _Infos) -> dict:
    ctx = await infos.context(route)
    backend = route.backend
    display = f"{family_name(name)} → {_short(route.model)} ({backend.name})"
    window = f"{ctx:,}-token context window" if ctx else "context window unknown"
    description = f"Served by {route.model} on backend '{backend.name}' ({backend.config.type}), {window}."
    return _entry(name, display, None, ctx, description, backend.name)


async def catalog(gw: Gateway) -> list[dict]:
    """Every name /v1/messages serves by name: exact names, glob-served Claude ids, backend models."""
    infos = _Infos()
    entries: dict[str, dict] = {}
    for name in gw.router.exact_names() + gw.router.glob_matches(claude_ids(gw)):
        route = await gw.router.serving(name)
        if route is not None:
            entries[name] = await _routed_entry(name, route, infos)
    for backend in gw.backends.values():
        for info in (await infos.of(backend)).values():
            if info.id not in entries:
                window = f"{info.context_window:,}-token context window" if info.context_window \
                    else "context window unknown"
                entries[info.id] = _entry(info.id, f"{info.id} ({backend.name})", info.created, info.context_window,
                                          f"Backend '{backend.name}' ({backend.config.type}), {window}.", backend.name)
    return list(entries.values())


def _entry(model_id: str, display: str, created: int | None, context: int | None, description: str,
           owner: str) -> dict:
    # Anthropic's fields, plus OpenAI's object / created / owned_by (see _for_client).
    entry = {"type": "model", "id": model_id, "display_name": display, "created_at": _created_at(created),
             "description": description, "object": "model", "created": created or 0, "owned_by": owner}
    if context:
        entry["max_input_tokens"] = context
    return entry


_OPENAI_FIELDS = ("object", "created", "owned_by")


def _openai_client(request: web.Request) -> bool:
    """Anthropic SDKs and Claude Code always send anthropic-version; OpenAI clients never do."""
    return "anthropic-version" not in request.headers


def _for_client(entry: dict, openai: bool) -> dict:
    """An entry as the client reads it: Anthropic clients get exactly the Anthropic shape; the rest
    get the same entry plus OpenAI's fields, which both SDKs parse."""
    return entry if openai else {k: v for k, v in entry.items() if k not in _OPENAI_FIELDS}


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
    openai = _openai_client(request)
    entries = [_for_client(e, openai) for e in await catalog(request.app[GATEWAY])]
    q = request.query
    limit = _limit(q.get("limit"))
    if openai and "limit" not in q:
        limit = MAX_LIMIT  # OpenAI clients read one page only (they never follow has_more)
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
    if openai:
        body = {"object": "list", **body}
    return web.json_response(body, dumps=lambda o: orjson.dumps(o).decode())


async def handle_get_model(request: web.Request) -> web.Response:
    """One model, with the same fields and values as its list entry; any other name /v1/messages
    serves by name (a glob, a `[1m]` suffix) gets an entry of the same shape."""
    gw = request.app[GATEWAY]
    model_id = request.match_info["model_id"]
    openai = _openai_client(request)
    for entry in await catalog(gw):
        if entry["id"] == model_id:
            return web.json_response(_for_client(entry, openai), dumps=lambda o: orjson.dumps(o).decode())
    route = await gw.router.serving(model_id)
    if route is None:
        raise not_found(f"model '{model_id}' not found")
    entry = await _routed_entry(model_id, route, _Infos())
    return web.json_response(_for_client(entry, openai), dumps=lambda o: orjson.dumps(o).decode())
