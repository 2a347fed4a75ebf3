"""The SSE encoder: one Anthropic stream event → one `event:`/`data:` frame."""
from __future__ import annotations

import orjson

PING = b'event: ping\ndata: {"type":"ping"}\n\n'


def encode(event: dict) -> bytes:
    """Frame an Anthropic event; the event name always equals data.type (the SDK relies on it)."""
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def encode_all(events: list[dict]) -> bytes:
    """Frames for several events, joined so they go out in one write."""
    return b"".join([encode(e) for e in events])
