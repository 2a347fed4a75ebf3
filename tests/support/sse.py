"""Reading the Anthropic SSE stream the gateway writes, with its framing checked (F2, F3 of the
compatibility list): every frame is exactly `event: NAME` and `data: JSON`, where the JSON is a
one-line object whose `type` is NAME, and a blank line ends it; the body is UTF-8 and has no
OpenAI `[DONE]` sentinel. A body read whole and one read as it arrives are checked the same way."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp

Frame = tuple[str, dict]
Frames = list[Frame]


class FramingError(AssertionError):
    """The body breaks the framing: a failure in a test, a counted error in a bench script."""


def parse_frames(body: str | bytes) -> Frames:
    """Split a whole SSE body into (event, data) pairs, checking the framing."""
    text = body.decode("utf-8") if isinstance(body, bytes) else body  # F3: UTF-8 (raises otherwise)
    _require(text.endswith("\n\n"), f"F2: stream does not end on a frame boundary: {text[-80:]!r}")
    return [frame(chunk.split("\n")) for chunk in text[:-2].split("\n\n")]


async def iter_frames(content: aiohttp.StreamReader) -> AsyncIterator[Frame]:
    """(event, data) of each frame as it arrives on a response body, checking the framing."""
    lines: list[str] = []
    async for raw in content:
        line = raw.decode("utf-8")
        _require(line.endswith("\n"), f"F2: stream does not end on a frame boundary: {line!r}")
        if line == "\n":
            yield frame(lines)
            lines = []
        else:
            lines.append(line[:-1])
    _require(not lines, f"F2: stream does not end on a frame boundary: {lines!r}")


async def read_until_event(content: aiohttp.StreamReader, name: str) -> bytes:
    """Read a response body up to and including the next `event: NAME` line; returns the bytes read,
    so that they and the rest of the body still make the whole stream."""
    head = bytearray()
    marker = f"event: {name}\n".encode()
    async for line in content:
        head += line
        if line == marker:
            return bytes(head)
    raise FramingError(f"the stream ended without a {name} event: {bytes(head[-300:])!r}")


def frame(lines: list[str]) -> Frame:
    """One frame from its lines (without the blank line that ends it)."""
    raw = "\n".join(lines)
    _require(len(lines) == 2, f"F2/F3: frame is not exactly an event line and a data line: {raw!r}")
    event, data = lines
    _require(event.startswith("event: "), f"F2: frame without `event:` line: {raw!r}")
    _require(data.startswith("data: "), f"F2: frame without `data:` line: {raw!r}")
    _require(data != "data: [DONE]", "F3: OpenAI [DONE] sentinel in an Anthropic stream")
    name, payload = event[len("event: "):], json.loads(data[len("data: "):])
    _require(isinstance(payload, dict), f"F3: data is not a JSON object: {raw!r}")
    _require(payload.get("type") == name, f"F2: event name {name!r} != data.type {payload.get('type')!r}")
    return name, payload


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise FramingError(message)
