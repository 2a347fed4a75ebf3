"""Non-streamed chat completions: the upstream body that asks for one, and the answer (a
ChatCompletion object) rewritten as the one stream chunk that carries the same content.

That chunk goes through the request's chunk translator like any streamed one, so stop reasons,
usage, reasoning, stop strings, argument repair and text tool calls come from the code the
streaming path runs, not from a copy of it: one internal event stream either way.
"""
from __future__ import annotations

import orjson
import httpx2

from gateway.protocol.anthropic import MessagesRequest
from gateway.protocol.errors import GatewayError
from gateway.protocol.events import Event, TextDelta, ThinkingDelta, ToolCallDelta, UsageReport
from gateway.protocol.tokens import estimate_text_tokens


def answers_whole(req: MessagesRequest, reports_stop_string: bool) -> bool:
    """Ask the server for its answer in one piece (stream=false): the client did not ask for a stream,
    and nothing the gateway does needs one."""
    if req.stream:
        return False
    if req.stop_sequences and not reports_stop_string:
        # The gateway matches these strings itself: streamed, it stops reading at the match and the
        # server stops generating; in one piece, the server would generate on until its own stop.
        return False
    return True


def whole_body(body: dict) -> dict:
    """The chat-completions body asking for a non-streamed answer (servers refuse `stream_options`
    without `stream`)."""
    out = {k: v for k, v in body.items() if k != "stream_options"}
    out["stream"] = False
    return out


async def read_whole(resp: httpx2.Response, limit: int, backend: str) -> bytes:
    """The response body, refused once it grows past `limit` bytes."""
    raw = bytearray()
    async for data in resp.aiter_bytes():
        raw += data
        if len(raw) > limit:
            raise GatewayError(500, f"backend '{backend}' sent an answer of more than {limit} bytes; "
                                    "it was refused")
    return bytes(raw)


def loads_lenient(data: bytes) -> object:
    """JSON from a server; bytes that are not valid UTF-8 are read as a text decoder would (bad bytes
    → U+FFFD). Raises orjson.JSONDecodeError for what is not JSON either way."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return orjson.loads(data.decode("utf-8", "replace"))


def decode(raw: bytes, backend: str) -> dict:
    """The ChatCompletion object of a body; a clear error for one that is not a JSON object."""
    try:
        data = loads_lenient(raw)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise GatewayError(500, f"backend '{backend}' sent a malformed answer: "
                                f"{raw[:200].decode(errors='replace')!r}")
    return data


def as_chunk(completion: dict) -> dict:
    """The stream chunk with the content of `completion`: each choice's `message` as its `delta`, tool
    calls numbered as a stream numbers them. Everything else stays (finish_reason, vLLM's
    stop_reason, usage, an `error`, llama.cpp's `__verbose`), where the translator reads it in a chunk."""
    choices = completion.get("choices")
    if not isinstance(choices, list):
        return completion
    return {**completion, "choices": [_choice(c) for c in choices]}


def _choice(choice: object) -> object:
    if not isinstance(choice, dict):
        return choice  # the translator rejects it as it rejects such a chunk
    out = {k: v for k, v in choice.items() if k != "message"}
    message = choice.get("message")
    delta = dict(message) if isinstance(message, dict) else message
    if isinstance(delta, dict) and isinstance(delta.get("tool_calls"), list):
        delta["tool_calls"] = [_call(call, i) for i, call in enumerate(delta["tool_calls"])]
    out["delta"] = delta
    return out


def _call(call: object, index: int) -> object:
    if not isinstance(call, dict):
        return call
    out = {**call, "index": index}
    fn = call.get("function")
    if isinstance(fn, dict) and isinstance(fn.get("arguments"), dict):
        # A few servers send the arguments as an object here (a stream can only carry text).
        out["function"] = {**fn, "arguments": orjson.dumps(fn["arguments"]).decode()}
    return out


def output_estimate(completion: dict, events: list[Event]) -> list[Event]:
    """A usage report estimating the output of an answer whose server gave no `completion_tokens`
    (streamed, the gateway counts deltas instead; one piece has a single delta), else nothing."""
    usage = completion.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        return []
    parts: list[str] = []
    for ev in events:
        if isinstance(ev, TextDelta):
            parts.append(ev.text)
        elif isinstance(ev, ThinkingDelta):
            parts.append(ev.thinking)
        elif isinstance(ev, ToolCallDelta):
            parts.append(ev.partial_json)
    return [UsageReport(output_tokens=estimate_text_tokens("".join(parts)))]
