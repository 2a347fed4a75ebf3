"""Upstream failures as the client sees them: the status → Anthropic error mapping, the rewrites
Claude Code reacts to (context overflow, a chat template that refuses the conversation), and the
text an upstream wrote in its errors, read bounded and without regular expressions, since a
backtracking pattern over attacker-sized text can hold the event loop for seconds."""
from __future__ import annotations

import orjson

from gateway.protocol.errors import GatewayError

MAX_MESSAGE_CHARS = 2000  # of upstream text quoted in an error the client sees
_DIGITS = frozenset("0123456789")


def shorten(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` cut to `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def error_message(raw: bytes) -> str:
    """The message of an error body: `error.message`, `message` or `detail` of a JSON object, else
    the start of the text."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        err = body.get("error", body)
        for value in ((err.get("message") if isinstance(err, dict) else None), body.get("message"),
                      body.get("detail")):
            if isinstance(value, str) and value:
                return shorten(value)
    text = raw.decode("utf-8", "replace").strip()
    return shorten(text, 500) if text else "(empty body)"


def _digits_after(text: str, start: int) -> str:
    end = start
    while end < len(text) and text[end] in _DIGITS:  # bounded: the caller passes shortened text
        end += 1
    return text[start:end]


def _digits_before(text: str, end: int) -> str:
    start = end
    while start > 0 and text[start - 1] in _DIGITS:
        start -= 1
    return text[start:end]


def context_overflow(message: str) -> tuple[str, str] | None:
    """(prompt tokens, context limit) from an OpenAI/vLLM-style overflow message ("maximum context
    length is N … M in the messages" or "… prompt contains at least M"), None when not stated."""
    text = message[:MAX_MESSAGE_CHARS]
    head = "maximum context length is "
    at = text.find(head)
    if at < 0:
        return None
    start = at + len(head)
    limit = _digits_after(text, start)
    if not limit:
        return None
    start += len(limit)
    found: list[tuple[int, str]] = []
    pos = start
    while (pos := text.find(" in the messages", pos)) >= 0:
        end = pos - len(" tokens") if text.endswith(" tokens", start, pos) else pos
        prompt = _digits_before(text, end)
        if prompt and end - len(prompt) >= start:
            found.append((end - len(prompt), prompt))
            break
        pos += 1
    lead = "prompt contains at least "
    pos = text.find(lead, start)
    if pos >= 0 and (prompt := _digits_after(text, pos + len(lead))):
        found.append((pos, prompt))
    if not found:
        return None
    return min(found)[1], limit


def status_error(status: int, message: str, retry_after: str | None = None) -> GatewayError:
    """Map an upstream HTTP failure to the Anthropic error a client should see, keeping its message."""
    headers: dict[str, str] = {}
    if status == 429:
        err = GatewayError(429, message, "rate_limit_error", headers)
    elif status in (503, 529):
        err = GatewayError(529, message, "overloaded_error", headers)
    elif status in (400, 413, 422):
        err = GatewayError(400 if status != 413 else 413, message)
    elif status == 404:
        err = GatewayError(404, message)
    else:
        err = GatewayError(500, message, "api_error", headers)
        if status in (401, 403, 501):
            headers["x-should-retry"] = "false"  # our key or the route is wrong: retrying cannot help
    if err.status in (429, 529):
        headers["retry-after"] = retry_after or "1"
    return err


# Words of an upstream message saying the request does not fit the model's context.
_OVERFLOW_WORDS = ("context length", "context size", "context window", "maximum context", "too long")
# Words of a chat template that raised while rendering (llama.cpp's "Jinja Exception: …", Python's
# jinja2 TemplateError): the same request fails the same way every time, so it is not retryable.
_TEMPLATE_WORDS = ("jinja", "template error", "templateerror", "chat template", "raise_exception")


def context_error(err: GatewayError) -> GatewayError:
    """Upstream context-overflow messages become the text Claude Code reacts to; others pass as they are."""
    text = err.message.lower()
    if err.status == 400 and any(s in text for s in _OVERFLOW_WORDS):
        found = context_overflow(err.message)
        if found:
            prompt, limit = found
            return GatewayError(400, f"prompt is too long: {prompt} tokens > {limit} maximum")
        return GatewayError(400, f"prompt is too long for the backend's context window ({err.message})")
    return err


def is_template_failure(message: str) -> bool:
    """Does an upstream message say its chat template raised?"""
    text = message.lower()
    return any(s in text for s in _TEMPLATE_WORDS)


def template_error(backend: str, message: str) -> GatewayError:
    """A 400 for a conversation the backend's chat template refuses to render."""
    return GatewayError(400, f"backend '{backend}' cannot render this conversation with its chat template: "
                             f"{message}")


def upstream_error(status: int, message: str, retry_after: str | None = None) -> GatewayError:
    """The one mapping every upstream error status goes through: its status to the Anthropic error, then
    the context-overflow rewrite."""
    return context_error(status_error(status, message, retry_after))


def answered_error(backend: str, status: int, message: str, retry_after: str | None = None) -> GatewayError:
    """The client's error for an error status the upstream answered the request with."""
    if status == 500 and is_template_failure(message):
        return template_error(backend, message)
    return upstream_error(status, f"backend '{backend}' answered {status}: {message}", retry_after)


def stream_error(backend: str, status: int | None, message: str) -> GatewayError:
    """The client's error for an error object inside the upstream's event stream (status from its
    `code`, when it gave one)."""
    return upstream_error(status or 500, f"backend '{backend}': {shorten(message)}")


def render_error(backend: str, message: str) -> GatewayError:
    """A 400 from an endpoint that only renders the chat template (vLLM's /tokenize): a context
    overflow when it says so, else the template's refusal."""
    err = context_error(GatewayError(400, message))
    return err if err.message != message else template_error(backend, message)
