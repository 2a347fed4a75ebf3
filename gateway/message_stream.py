"""Turns internal backend events into Anthropic stream events (message_start … message_stop).

One `MessageStream` per response owns the content-block lifecycle: indices, start/stop, the
thinking signature, the final `message_delta`. The SSE encoder writes its events as frames and
the aggregator folds the very same events into the answer — the non-streaming message, and the
`response` of the request log for both kinds — so the two cannot differ.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import string

from gateway.aggregate import Aggregator
from gateway.protocol.anthropic import StopReason, Usage
from gateway.protocol.errors import GatewayError, error_body
from gateway.protocol.events import (
    EngineStats, Event, Started, Stop, TextDelta, ThinkingDelta, ThinkingSignature, ToolCallDelta, ToolCallEnd,
    ToolCallStart, UsageReport,
)

_ID_ALPHABET = string.ascii_letters + string.digits
# Signs the thinking blocks this process emits; the signature only has to round-trip opaquely.
_SIGNING_KEY = os.urandom(32)


def new_id(prefix: str) -> str:
    """An Anthropic-style id: prefix + 24 random alphanumerics."""
    chars: list[str] = []
    while len(chars) < 24:
        # One getrandom call for the lot (secrets.choice makes one per character); bytes ≥ 248
        # are dropped so that every one of the 62 characters stays equally likely.
        chars += [_ID_ALPHABET[b % 62] for b in secrets.token_bytes(32) if b < 248]
    return prefix + "".join(chars[:24])


def sign_thinking(thinking: str) -> str:
    """A gateway signature for a thinking block (opaque to clients)."""
    mac = hmac.new(_SIGNING_KEY, thinking.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
    return "gw1" + base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")


class MessageStream:
    """Per-response state: feed it backend events, get Anthropic stream events (dicts) back."""

    def __init__(self, *, model: str, input_tokens: int, show_thinking: bool, message_id: str | None = None,
                 omit_thinking: bool = False, context_management: dict | None = None,
                 tool_id_prefix: str | None = None, context_clamped: bool = False):
        self.message_id = message_id or new_id("msg_")
        # max_tokens was lowered to what the context window had left: hitting it means the window is full.
        self.context_clamped = context_clamped
        self.model = model
        self.show_thinking = show_thinking
        # thinking.display "omitted": the block is sent with its signature but no thinking text.
        self.omit_thinking = omit_thinking
        self.context_management = context_management  # reported in message_delta, as the API does
        self.omitted_thinking: list[tuple[str, str]] = []  # (signature, text) of blocks sent without text
        self.usage = Usage(input_tokens=max(1, input_tokens))
        self._index = -1
        self._open: str | None = None  # type of the open block: text | thinking | tool_use
        self._pending_ws: list[str] = []  # leading whitespace of a text block not yet worth opening (pieces:
        # an upstream sending only whitespace must not make each piece copy all the earlier ones)
        self._thinking_parts: list[str] = []
        self._signature: str | None = None
        self._deltas = 0  # output-token estimate when the backend reports no usage
        self._reported_output: int | None = None
        self._reported_input: int | None = None
        self._reported_cached: int | None = None
        self._saw_tool = False
        # Events of the open tool_use block, held until the call is complete: a call cut off by
        # max_tokens is dropped whole instead of reaching the client as a callable tool_use.
        self._held: list[dict] = []
        self._dropped: list[dict] = []  # the held events of a call a length stop cut (for the log)
        self.tool_names: list[str] = []  # tools the answer called or began to call, in order (for the log)
        self._stop: Stop | None = None
        self.ttft_seen = False
        self.engine_stats: EngineStats | None = None
        self.answer = Aggregator()  # every event handed out, folded: what the client has been sent
        self.finished = False
        # Set (OpenAI clients: "call_"): a backend's own tool call id is kept when it is new in this
        # answer, else an id with this prefix is issued. None: always a gateway toolu_ id.
        self.tool_id_prefix = tool_id_prefix
        self._tool_ids: set[str] = set()

    # -- events -------------------------------------------------------------------------------

    def message_start(self) -> dict:
        """The first event of every response."""
        event = {
            "type": "message_start",
            "message": {
                "id": self.message_id, "type": "message", "role": "assistant", "content": [],
                "model": self.model, "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": self.usage.input_tokens, "output_tokens": 0,
                          "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0},
            },
        }
        self.answer.add(event)
        return event

    def feed(self, ev: Event) -> list[dict]:
        """Anthropic events for one backend event (often one, sometimes none or several)."""
        out = self._events(ev)
        for event in out:
            self.answer.add(event)
        return out

    def _events(self, ev: Event) -> list[dict]:
        if type(ev) is TextDelta:
            return self._text(ev.text)
        if type(ev) is ThinkingDelta:
            if not self.show_thinking or not ev.thinking:
                return []
            out = self._open_block("thinking")
            self._pending_ws = []
            self._deltas += 1
            self._thinking_parts.append(ev.thinking)
            if not self.omit_thinking:
                out.append({"type": "content_block_delta", "index": self._index,
                            "delta": {"type": "thinking_delta", "thinking": ev.thinking}})
            return out
        if type(ev) is ToolCallStart:
            out = self._close_block()
            self._pending_ws = []
            self._index += 1
            self._open = "tool_use"
            self.ttft_seen = True
            self.tool_names.append(ev.name)
            self._held = [{"type": "content_block_start", "index": self._index,
                           "content_block": {"type": "tool_use", "id": self._tool_id(ev.id), "name": ev.name,
                                             "input": {}}}]
            return out
        if type(ev) is ToolCallDelta:
            if self._open != "tool_use" or not ev.partial_json:
                return []
            self._deltas += 1
            self._held.append({"type": "content_block_delta", "index": self._index,
                               "delta": {"type": "input_json_delta", "partial_json": ev.partial_json}})
            return []
        if type(ev) is ToolCallEnd:
            if self._open != "tool_use":
                return []
            if ev.as_text is not None:  # withdrawn: nothing of it went out, its text goes instead
                self._held, self._open = [], None
                self._index -= 1
                return self._events(TextDelta(ev.as_text))
            if ev.arguments is not None:
                self._held[1:] = [{"type": "content_block_delta", "index": self._index,
                                   "delta": {"type": "input_json_delta", "partial_json": ev.arguments}}]
            return self._close_block()
        if type(ev) is ThinkingSignature:
            if self._open == "thinking":
                self._signature = ev.signature
            return []
        if type(ev) is UsageReport:
            if ev.output_tokens is not None:
                self._reported_output = ev.output_tokens
            if ev.input_tokens is not None:
                self._reported_input = ev.input_tokens
            if ev.cache_read_tokens is not None:
                self._reported_cached = ev.cache_read_tokens
            return []
        if type(ev) is Stop:
            self._stop = ev
            return []
        if type(ev) is Started:
            return []
        if type(ev) is EngineStats:
            self.engine_stats = ev  # for the request log only
            return []
        raise TypeError(f"unknown backend event {ev!r}")

    def _tool_id(self, backend_id: str | None) -> str:
        if self.tool_id_prefix is None:
            return new_id("toolu_")
        # Some servers number every call "call_0" or send none: a repeated id would make two calls one.
        tid = backend_id if isinstance(backend_id, str) and backend_id and backend_id not in self._tool_ids \
            else new_id(self.tool_id_prefix)
        self._tool_ids.add(tid)
        return tid

    def finish(self) -> list[dict]:
        """Close the open block and end the message (message_delta, message_stop)."""
        if self._open == "tool_use" and self._length_stop():
            # Generation ended inside the call: its arguments are unfinished, so it is not a call.
            self._dropped, self._held = self._held, []
            self._open = None
            self._index -= 1
        out = self._close_block()
        if self._index < 0:
            # An empty answer is still one (empty) text block, as Anthropic sends it.
            out += self._open_block("text")
            if self._pending_ws:
                out.append(self._text_delta("".join(self._pending_ws)))
                self._pending_ws = []
            out += self._close_block()
        self._pending_ws = []
        usage = self.final_usage()
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence},
            "usage": usage.to_dict(),
        }
        if self.context_management is not None:
            delta["context_management"] = self.context_management
        out.append(delta)
        out.append({"type": "message_stop"})
        for event in out:
            self.answer.add(event)
        self.finished = True
        return out

    def logged_content(self) -> list[dict] | None:
        """For the request log: what the client was sent (None: not even message_start), and a tool
        call held back because it never completed (the stream was cut, or a length stop dropped it),
        marked incomplete."""
        held = self._held or self._dropped
        if not self.answer.message and not held:
            return None
        blocks = self.answer.content() if self.answer.message else []
        if held:
            blocks.append({**held[0]["content_block"], "incomplete": True,
                           "partial_json": "".join(e["delta"]["partial_json"] for e in held[1:])})
        return blocks

    @staticmethod
    def error_event(err: GatewayError) -> dict:
        """The `error` event that ends a stream that failed after its first byte."""
        return error_body(err.info)

    # -- results ------------------------------------------------------------------------------

    def _length_stop(self) -> bool:
        return self._stop is not None and self._stop.reason in ("max_tokens", "model_context_window_exceeded")

    @property
    def stop_reason(self) -> StopReason:
        if self._length_stop():
            # A length stop is one whatever came before it; when max_tokens was what the context
            # window had left, say so (Claude Code then reports a full context, not a 64000-token answer).
            return "model_context_window_exceeded" if self.context_clamped else "max_tokens"
        if self._saw_tool:
            return "tool_use"
        return self._stop.reason if self._stop else "end_turn"

    @property
    def stop_sequence(self) -> str | None:
        if self._saw_tool or not self._stop or self._stop.reason != "stop_sequence":
            return None
        return self._stop.stop_sequence

    def final_usage(self) -> Usage:
        """Totals for message_delta: backend-reported where known, estimates otherwise."""
        u = self.usage
        if self._reported_input is not None:
            cached = self._reported_cached or 0
            u.cache_read_input_tokens = cached
            u.input_tokens = max(1, self._reported_input - cached)
        output = self._reported_output if self._reported_output is not None else self._deltas
        u.output_tokens = max(output, 1 if self._deltas else 0)
        return u

    # -- block lifecycle ----------------------------------------------------------------------

    def _text(self, text: str) -> list[dict]:
        if not text:
            return []
        self._deltas += 1
        if self._open == "text":
            return [self._text_delta(text)]
        if text.isspace():
            # Whitespace before a tool call is noise; hold it until real text shows it belongs.
            self._pending_ws.append(text)
            return []
        out = self._open_block("text")
        if self._pending_ws:
            text, self._pending_ws = "".join(self._pending_ws) + text, []
        out.append(self._text_delta(text))
        return out

    def _text_delta(self, text: str) -> dict:
        self.ttft_seen = True
        return {"type": "content_block_delta", "index": self._index, "delta": {"type": "text_delta", "text": text}}

    def _open_block(self, kind: str) -> list[dict]:
        if self._open == kind:
            return []
        out = self._close_block()
        self._index += 1
        self._open = kind
        self.ttft_seen = True
        block = {"type": "text", "text": ""} if kind == "text" else {"type": "thinking", "thinking": "", "signature": ""}
        out.append({"type": "content_block_start", "index": self._index, "content_block": block})
        return out

    def _close_block(self) -> list[dict]:
        if self._open is None:
            return []
        out: list[dict] = []
        if self._open == "tool_use":
            out, self._held = self._held, []
            self._saw_tool = True
        if self._open == "thinking":
            text = "".join(self._thinking_parts)
            signature = self._signature or sign_thinking(text)
            if self.omit_thinking:
                self.omitted_thinking.append((signature, text))
            out.append({"type": "content_block_delta", "index": self._index,
                        "delta": {"type": "signature_delta", "signature": signature}})
            self._thinking_parts = []
            self._signature = None
        out.append({"type": "content_block_stop", "index": self._index})
        self._open = None
        return out
