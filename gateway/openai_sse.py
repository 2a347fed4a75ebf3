"""The OpenAI encoder: a MessageStream's events as chat.completion.chunk frames, and as the
chat.completion object for non-streaming answers.

It reads the same Anthropic events the SSE encoder writes, so an OpenAI answer holds exactly
what an Anthropic client would have been sent: text as `content`, thinking as
`reasoning_content`, each tool_use block as one `tool_calls` entry (numbered in call order).
"""
from __future__ import annotations

import json
import time

import orjson

from gateway.protocol.anthropic import StopReason, Usage
from gateway.protocol.errors import GatewayError, openai_error_body
from gateway.message_stream import MessageStream

KEEP_ALIVE = b": keep-alive\n\n"  # an SSE comment: OpenAI clients skip it
DONE = b"data: [DONE]\n\n"
FINISH_REASONS: dict[StopReason, str] = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                                          "model_context_window_exceeded": "length", "tool_use": "tool_calls"}


def _frame(obj: dict) -> bytes:
    return b"data: " + _dumps(obj) + b"\n\n"


def _dumps(obj: object) -> bytes:
    try:
        return orjson.dumps(obj)
    except TypeError:  # tool arguments nested past orjson's depth limit
        return json.dumps(obj, ensure_ascii=False).encode()


def openai_usage(usage: Usage) -> dict:
    """Anthropic usage (input excludes cache reads) → OpenAI usage (prompt includes them)."""
    prompt = usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
    return {"prompt_tokens": prompt, "completion_tokens": usage.output_tokens,
            "total_tokens": prompt + usage.output_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cache_read_input_tokens}}


class ChatWire:
    """Encodes one MessageStream for an OpenAI client (the `Wire` of gateway.messages)."""

    ping = KEEP_ALIVE

    def __init__(self, ms: MessageStream, include_usage: bool = False):
        self.ms = ms
        self.include_usage = include_usage
        self.created = int(time.time())
        self._calls: dict[int, int] = {}  # content block index → tool call index

    def _chunk(self, delta: dict, finish_reason: str | None = None) -> dict:
        chunk = {"id": self.ms.message_id, "object": "chat.completion.chunk", "created": self.created,
                 "model": self.ms.model, "system_fingerprint": None,
                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
        if self.include_usage:
            chunk["usage"] = None  # as OpenAI: only the last chunk carries usage
        return chunk

    def start(self) -> bytes:
        self.ms.message_start()
        return _frame(self._chunk({"role": "assistant", "content": ""}))

    def frames(self, events: list[dict]) -> bytes:
        return b"".join([_frame(c) for ev in events for c in self._chunks(ev)])

    def finish(self, events: list[dict]) -> bytes:
        out = self.frames(events)
        if self.include_usage:
            usage = {"id": self.ms.message_id, "object": "chat.completion.chunk", "created": self.created,
                     "model": self.ms.model, "system_fingerprint": None, "choices": [],
                     "usage": openai_usage(self.ms.usage)}
            out += _frame(usage)
        return out + DONE

    def error(self, err: GatewayError) -> bytes:
        # The openai SDK raises APIError for a chunk holding `error`; nothing follows it.
        return _frame(openai_error_body(err))

    def _chunks(self, ev: dict) -> list[dict]:
        kind = ev["type"]
        if kind == "content_block_delta":
            delta = ev["delta"]
            dtype = delta["type"]
            if dtype == "text_delta":
                return [self._chunk({"content": delta["text"]})]
            if dtype == "thinking_delta":
                return [self._chunk({"reasoning_content": delta["thinking"]})]
            if dtype == "input_json_delta":
                call = {"index": self._calls[ev["index"]], "function": {"arguments": delta["partial_json"]}}
                return [self._chunk({"tool_calls": [call]})]
            return []  # signature_delta: Anthropic clients' business
        if kind == "content_block_start" and ev["content_block"]["type"] == "tool_use":
            block = ev["content_block"]
            index = self._calls[ev["index"]] = len(self._calls)
            call = {"index": index, "id": block["id"], "type": "function",
                    "function": {"name": block["name"], "arguments": ""}}
            return [self._chunk({"tool_calls": [call]})]
        if kind == "message_delta":
            return [self._chunk({}, FINISH_REASONS.get(ev["delta"]["stop_reason"], "stop"))]
        return []

    def message(self) -> dict:
        """The chat.completion object for the finished MessageStream."""
        answer = self.ms.answer.message
        texts: list[str] = []
        reasoning: list[str] = []
        calls: list[dict] = []
        for block in answer.get("content") or []:
            if block["type"] == "text":
                texts.append(block["text"])
            elif block["type"] == "thinking":
                reasoning.append(block["thinking"])
            elif block["type"] == "tool_use":
                calls.append({"id": block["id"], "type": "function",
                              "function": {"name": block["name"], "arguments": _dumps(block["input"]).decode()}})
        text = "".join(texts)
        message: dict = {"role": "assistant", "content": text if text or not calls else None, "refusal": None}
        if reasoning:
            message["reasoning_content"] = "".join(reasoning)
        if calls:
            message["tool_calls"] = calls
        return {"id": self.ms.message_id, "object": "chat.completion", "created": self.created,
                "model": self.ms.model, "system_fingerprint": None,
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": FINISH_REASONS.get(self.ms.stop_reason, "stop")}],
                "usage": openai_usage(self.ms.usage)}
