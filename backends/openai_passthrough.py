"""The upstream body for an OpenAI client's request: the client's own chat-completions body.

Translating it to the gateway's Anthropic-shaped request and back would lose what an OpenAI-style
server understands and the gateway does not model (tool call ids, `logit_bias`, `presence_penalty`,
`chat_template_kwargs`, vendor extras, content parts as sent). So the body goes on as the client
wrote it; only what the gateway owns changes: the backend model, streaming with usage (a
non-streaming client's answer is then asked for in one piece: backends.chat_completion), and the
backend's configured extra fields.
"""
from __future__ import annotations

from gateway.protocol.backend import BackendRequest


def passthrough(breq: BackendRequest, extra_body: dict | None = None) -> dict:
    """The chat-completions body for `breq.openai_body` (max tokens already set by the handler)."""
    body = dict(breq.openai_body or {})
    body["model"] = breq.model
    body["stream"] = True
    options = body.get("stream_options")
    body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    if extra_body:
        body.update(extra_body)  # the operator's config wins, as for Anthropic clients
    return body
