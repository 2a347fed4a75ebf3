"""POST /v1/chat/completions: OpenAI clients onto the same routing, backends and answer path.

The body is validated into a ChatRequest and converted to the internal request; the backend's
events go through the same MessageStream as /v1/messages and out through the OpenAI encoder.
OpenAI-style backends also get the client's body itself (BackendRequest.openai_body), so nothing
they understand is lost in translation.
"""
from __future__ import annotations

from aiohttp import web

from gateway.protocol.backend import BackendRequest
from gateway.protocol.anthropic import ImageBlock
from gateway.protocol.backend_config import images_hint
from gateway.protocol.errors import invalid
from gateway.message_stream import MessageStream, new_id
from gateway.messages import (
    answer,
    events_with_fallback,
    fit_budget,
    fit_with_fallback,
    guarded,
    read_body,
)
from gateway.normalize import session_id
from gateway.openai_chat import parse_chat_request, to_messages_request
from gateway.openai_sse import ChatWire
from gateway.app_state import GATEWAY, RECORD

# The output limit when the client sets none: the backend's context window usually cuts it first.
DEFAULT_MAX_TOKENS = 32768
_LIMIT_KEYS = ("max_completion_tokens", "max_tokens")


async def handle_chat_completions(request: web.Request) -> web.StreamResponse:
    """Generate a chat completion: JSON, or `data:` chunks when the body says stream:true."""
    return await guarded(request, _generate)


def upstream_body(body: dict, max_tokens: int) -> dict:
    """The client's body with the output limit the gateway fitted into the context: written in the
    field the client used; added only when the client set none and the context forced one."""
    out = dict(body)
    keys = [k for k in _LIMIT_KEYS if body.get(k) is not None]
    if keys:
        for key in keys:
            out[key] = max_tokens
    elif max_tokens < DEFAULT_MAX_TOKENS:
        out["max_tokens"] = max_tokens
    return out


async def _generate(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    record = request[RECORD]
    body = await read_body(request, record)
    chat = parse_chat_request(body)
    assert isinstance(body, dict)  # parse_chat_request refused any other JSON
    req = to_messages_request(chat)
    record.model, record.stream = chat.model, chat.stream
    record.session_id = session_id(request.headers.get("X-Claude-Code-Session-Id"), req)
    route = await gw.router.resolve(chat.model)
    record.backend, record.backend_model = route.backend.name, route.model
    if not route.backend.config.vision and any(type(b) is ImageBlock for m in req.messages for b in m.content):
        # As for Anthropic clients: the operator said this model has no vision; the body is not sent.
        raise invalid(f"model '{chat.model}' does not accept images on this backend; "
                      f"{images_hint(route.backend.config.type)}")
    breq = BackendRequest(req, route.model, chat.max_tokens or DEFAULT_MAX_TOKENS, record.session_id)
    backend, breq = await fit_budget(gw, route.backend, breq, record)
    backend, breq, fit = await fit_with_fallback(gw, backend, breq, record)
    if backend is route.backend:
        breq.openai_body = upstream_body(body, fit.max_tokens)
    ms = MessageStream(model=chat.model, input_tokens=fit.prompt_tokens if fit.exact else fit.prompt_tokens // 2,
                       show_thinking=True, message_id=new_id("chatcmpl-"), tool_id_prefix="call_",
                       context_clamped=fit.context_clamped)
    events = events_with_fallback(gw, backend, breq, record)
    return await answer(request, ms, events, ChatWire(ms, chat.include_usage), chat.stream)
