"""One reusable validator for Anthropic Messages SSE streams.

`check_stream` asserts F4 and G1–G10 of anthropic-compat.md on a stream that
tests.support.sse.parse_frames split (which checks F2 and F3), and returns a `CheckedStream` with
the blocks folded the way the SDK folds them, so tests can compare a stream with a non-streaming
answer. `open_stream` does the HTTP side: it posts a `stream:true` request, reads the body to its
clean end and validates it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.support.sse import Frames, parse_frames

EVENT_TYPES = {"message_start", "content_block_start", "content_block_delta", "content_block_stop",
               "message_delta", "message_stop", "ping", "error"}
# Which delta types each block type may receive (G7).
DELTA_TYPES = {"text": {"text_delta"}, "tool_use": {"input_json_delta"},
               "thinking": {"thinking_delta", "signature_delta"}, "redacted_thinking": set()}
ERROR_TYPES = {"invalid_request_error", "authentication_error", "permission_error", "not_found_error",
               "request_too_large", "rate_limit_error", "api_error", "overloaded_error"}
STOP_REASONS = {"end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal",
                "model_context_window_exceeded"}

@dataclass
class Block:
    """One content block as the stream built it."""

    index: int
    start: dict  # content_block of content_block_start
    deltas: list[dict] = field(default_factory=list)
    stopped: bool = False

    @property
    def type(self) -> str:
        return self.start["type"]

    def joined(self, delta_type: str) -> str:
        key = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json",
               "signature_delta": "signature"}[delta_type]
        return "".join(d[key] for d in self.deltas if d["type"] == delta_type)

    def as_content(self) -> dict:
        """The block as a non-streaming response would carry it."""
        if self.type == "text":
            return {"type": "text", "text": self.start.get("text", "") + self.joined("text_delta")}
        if self.type == "thinking":
            return {"type": "thinking", "thinking": self.start.get("thinking", "") + self.joined("thinking_delta"),
                    "signature": self.joined("signature_delta") or self.start.get("signature", "")}
        if self.type == "tool_use":
            raw = self.joined("input_json_delta")
            return {"type": "tool_use", "id": self.start["id"], "name": self.start["name"],
                    "input": json.loads(raw) if raw.strip() else {}}
        return dict(self.start)


@dataclass
class CheckedStream:
    """A stream that passed `check_stream`."""

    frames: Frames  # every frame, pings included
    message: dict  # message_start.message
    blocks: list[Block]
    message_delta: dict | None  # None when the stream ended with an error
    error: dict | None  # the `error` object of the final error event

    @property
    def names(self) -> list[str]:
        """Event names, pings left out."""
        return [n for n, _ in self.frames if n != "ping"]

    @property
    def content(self) -> list[dict]:
        return [b.as_content() for b in self.blocks]

    @property
    def text(self) -> str:
        return "".join(b.joined("text_delta") for b in self.blocks if b.type == "text")

    @property
    def stop_reason(self) -> str | None:
        return self.message_delta["delta"]["stop_reason"] if self.message_delta else None

    @property
    def stop_sequence(self) -> str | None:
        return self.message_delta["delta"]["stop_sequence"] if self.message_delta else None

    @property
    def usage(self) -> dict:
        return self.message_delta["usage"] if self.message_delta else {}


# -- G1–G10, one function each so a test can point at the item it is about ---------------------

def check_g1(frames: Frames, ok: bool) -> None:
    """One message_start, first; message_stop (or error) last; nothing after it; pings only after start (F4)."""
    names = [n for n, _ in frames]
    assert names, "G1: empty stream"
    assert all(n in EVENT_TYPES for n in names), f"G1: unknown event types in {names}"
    assert names[0] == "message_start", f"G1/F4: first frame is {names[0]!r}, not message_start"
    assert names.count("message_start") == 1, f"G1: {names.count('message_start')} message_start events"
    terminal = "message_stop" if ok else "error"
    assert names[-1] == terminal, f"G1: last event is {names[-1]!r}, expected {terminal!r}"
    assert names.count(terminal) == 1, f"G1: {terminal} appears {names.count(terminal)} times"
    if ok:
        assert "error" not in names, "G1: an error event in a successful stream"
    else:
        assert "message_stop" not in names, "J1: message_stop in a failed stream"
        err = frames[-1][1]["error"]
        assert err["type"] in ERROR_TYPES, f"G1: unknown error type {err['type']!r}"
        assert isinstance(err["message"], str) and err["message"], "G1: error without a message"


def check_g2(frames: Frames) -> None:
    """message_start.message carries id, type, role, empty content, model, null stop fields, usage."""
    msg = frames[0][1]["message"]
    assert isinstance(msg["id"], str) and msg["id"].startswith("msg_"), f"G2: id {msg.get('id')!r}"
    assert msg["type"] == "message" and msg["role"] == "assistant", f"G2: {msg}"
    assert msg["content"] == [], f"G2: content {msg['content']!r}"
    assert isinstance(msg["model"], str) and msg["model"], f"G2: model {msg.get('model')!r}"
    assert "stop_reason" in msg and msg["stop_reason"] is None, f"G2: stop_reason {msg.get('stop_reason')!r}"
    assert "stop_sequence" in msg and msg["stop_sequence"] is None, f"G2: stop_sequence {msg.get('stop_sequence')!r}"
    usage = msg["usage"]
    assert _is_int(usage["input_tokens"]) and usage["input_tokens"] >= 1, f"G2: usage {usage}"
    assert _is_int(usage["output_tokens"]) and usage["output_tokens"] >= 0, f"G2: usage {usage}"


def check_g4(frames: Frames) -> None:
    """content_block_start indices are 0, 1, 2, … in emission order, never reused."""
    indices = [d["index"] for n, d in frames if n == "content_block_start"]
    assert indices == list(range(len(indices))), f"G4: block start indices {indices}"


def check_g5(frames: Frames) -> None:
    """A new block starts only after the previous block stopped."""
    open_index = None
    for n, d in frames:
        if n == "content_block_start":
            assert open_index is None, f"G5: block {d['index']} starts while block {open_index} is open"
            open_index = d["index"]
        elif n == "content_block_stop" and open_index == d["index"]:
            open_index = None


def check_g6(frames: Frames) -> None:
    """Every delta and stop refers to the currently open block."""
    open_index = None
    for n, d in frames:
        if n == "content_block_start":
            open_index = d["index"]
        elif n in ("content_block_delta", "content_block_stop"):
            assert d["index"] == open_index, f"G6: {n} for index {d['index']}, open block is {open_index}"
            if n == "content_block_stop":
                open_index = None


def check_g7(frames: Frames) -> None:
    """The delta type matches the block type; start blocks are well formed."""
    types: dict[int, str] = {}
    for n, d in frames:
        if n == "content_block_start":
            block = d["content_block"]
            assert block["type"] in DELTA_TYPES, f"G7: unknown block type {block['type']!r}"
            _check_block_start(block)
            types[d["index"]] = block["type"]
        elif n == "content_block_delta":
            kind = types.get(d["index"])
            assert d["delta"]["type"] in DELTA_TYPES.get(kind, set()), \
                f"G7: {d['delta']['type']} delta in a {kind} block"


def check_g8(frames: Frames) -> None:
    """Every started block is stopped before message_delta."""
    started = {d["index"] for n, d in frames if n == "content_block_start"}
    stopped: set[int] = set()
    for n, d in frames:
        if n == "content_block_stop":
            assert d["index"] not in stopped, f"G8: block {d['index']} stopped twice"
            stopped.add(d["index"])
        elif n == "message_delta":
            assert started == stopped, f"G8: blocks {sorted(started - stopped)} still open at message_delta"
    if any(n == "message_delta" for n, _ in frames):
        assert started == stopped, f"G8: blocks {sorted(started - stopped)} never stopped"


def check_g9(frames: Frames) -> None:
    """No empty text_delta or thinking_delta (an empty first input_json_delta is tolerated)."""
    seen: set[int] = set()
    for n, d in frames:
        if n != "content_block_delta":
            continue
        delta = d["delta"]
        if delta["type"] == "text_delta":
            assert delta["text"], "G9: empty text_delta"
        elif delta["type"] == "thinking_delta":
            assert delta["thinking"], "G9: empty thinking_delta"
        elif delta["type"] == "input_json_delta":
            assert delta["partial_json"] or d["index"] not in seen, "G9: empty input_json_delta after the first"
        seen.add(d["index"])


def check_g10(frames: Frames, ok: bool) -> None:
    """Exactly one message_delta with stop_reason, stop_sequence and a cumulative output_tokens."""
    deltas = [d for n, d in frames if n == "message_delta"]
    if not ok:
        assert len(deltas) <= 1, f"G10: {len(deltas)} message_delta events"
        return
    assert len(deltas) == 1, f"G10: {len(deltas)} message_delta events"
    md = deltas[0]
    assert md["delta"]["stop_reason"] in STOP_REASONS, f"G10: stop_reason {md['delta'].get('stop_reason')!r}"
    assert "stop_sequence" in md["delta"], "G10: delta.stop_sequence missing"
    if md["delta"]["stop_reason"] != "stop_sequence":
        assert md["delta"]["stop_sequence"] is None, f"G10: stop_sequence {md['delta']['stop_sequence']!r}"
    out = md["usage"]["output_tokens"]
    assert _is_int(out) and out >= 0, f"G10: output_tokens {out!r}"
    non_empty = any(n == "content_block_delta" and any(v for k, v in d["delta"].items() if k != "type")
                    for n, d in frames)
    if non_empty:
        assert out >= 1, f"G10: output_tokens {out} for non-empty output"
    names = [n for n, _ in frames if n != "ping"]
    assert names[-2:] == ["message_delta", "message_stop"], f"G10: message_delta not right before message_stop: {names[-3:]}"


def check_stream(frames: Frames, *, ok: bool = True) -> CheckedStream:
    """Assert G1–G10 on parsed frames; `ok=False` expects a stream that ends with an error event."""
    check_g1(frames, ok)
    check_g2(frames)
    check_g4(frames)
    check_g5(frames)
    check_g6(frames)
    check_g7(frames)
    check_g8(frames)
    check_g9(frames)
    check_g10(frames, ok)
    blocks: dict[int, Block] = {}
    message_delta = None
    for n, d in frames:
        if n == "content_block_start":
            blocks[d["index"]] = Block(d["index"], d["content_block"])
        elif n == "content_block_delta":
            blocks[d["index"]].deltas.append(d["delta"])
        elif n == "content_block_stop":
            blocks[d["index"]].stopped = True
        elif n == "message_delta":
            message_delta = d
    error = frames[-1][1]["error"] if not ok else None
    return CheckedStream(frames, frames[0][1]["message"], [blocks[i] for i in sorted(blocks)], message_delta, error)


# -- HTTP ------------------------------------------------------------------------------------

async def read_stream(resp: aiohttp.ClientResponse, *, ok: bool = True) -> CheckedStream:
    """Validate an SSE response: 200, SSE headers (F1), a body that ends cleanly, then G1–G10.

    Reading the body to its end fails (ClientPayloadError) if the connection was reset instead of
    closed after the last chunk, so a passing read also proves the clean close that G1/J1 ask for.
    """
    body = await resp.text()
    assert resp.status == 200, f"status {resp.status}: {body[:500]}"
    assert resp.headers["Content-Type"].startswith("text/event-stream"), resp.headers["Content-Type"]
    assert resp.headers.get("Cache-Control") == "no-cache", resp.headers.get("Cache-Control")
    return check_stream(parse_frames(body), ok=ok)


async def open_stream(gw: Any, body: dict, *, ok: bool = True, **headers: str) -> CheckedStream:
    """POST `body` with stream:true to the gateway and validate the whole stream."""
    async with await gw.post("/v1/messages", {**body, "stream": True}, **headers) as resp:
        return await read_stream(resp, ok=ok)


def _check_block_start(block: dict) -> None:
    if block["type"] == "text":
        assert block.get("text") == "", f"G7: text block starts with {block!r}"
    elif block["type"] == "thinking":
        assert block.get("thinking") == "" and block.get("signature", "") == "", f"I2: thinking start {block!r}"
    elif block["type"] == "tool_use":
        assert isinstance(block.get("id"), str) and block["id"], f"H1: tool_use start without id {block!r}"
        assert isinstance(block.get("name"), str) and block["name"], f"H1: tool_use start without name {block!r}"
        assert block.get("input") == {}, f"H1: tool_use start input {block.get('input')!r}"


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
