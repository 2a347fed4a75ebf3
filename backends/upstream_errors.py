"""Upstream failures as the client sees them: the status → Anthropic error mapping, and the text an
upstream wrote in its errors, read bounded and without regular expressions, since a backtracking
pattern over attacker-sized text can hold the event loop for seconds."""
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
