"""The request log line: its fields and their order, shared by the writer (gateway.reqlog) and the
readers (tools/). A field added here is a field every reader may rely on."""
from __future__ import annotations

from typing import Any, TypedDict


class ErrorField(TypedDict):
    type: str
    message: str


class LogLine(TypedDict, total=False):
    ts: str
    request_id: str
    event: str  # request | unknown_route
    method: str
    path: str
    query: str
    status: int
    duration_ms: float | None
    ttft_ms: float | None
    model: str | None
    backend: str | None
    backend_model: str | None
    stream: bool | None
    input_tokens: int | None
    output_tokens: int | None
    cache_read_tokens: int | None
    stop_reason: str | None
    tool_names: list[str] | None
    error: ErrorField | None
    session_id: str | None
    user_agent: str | None
    raw_path: str
    headers: dict
    body_bytes: int
    prefill_tps: float
    decode_tps: float
    peak_memory_mb: float
    unknown_blocks: list[str]
    api: str
    replica: str
    context_edits: list[dict]
    fallback: dict
    body: Any
    response: list[dict] | None


# Line order: the contract fields (always written), then the optional ones (written when set);
# `body` then `response` always come last, so readers can skip both by stopping at `,"body":`.
REQUIRED_FIELDS = ("ts", "request_id", "event", "method", "path", "query", "status", "duration_ms", "ttft_ms",
                   "model", "backend", "backend_model", "stream", "input_tokens", "output_tokens",
                   "cache_read_tokens", "stop_reason", "tool_names", "error", "session_id", "user_agent")
OPTIONAL_FIELDS = ("raw_path", "headers", "body_bytes", "prefill_tps", "decode_tps", "peak_memory_mb",
                   "unknown_blocks", "api", "replica", "context_edits", "fallback")
BODY_FIELDS = ("body", "response")  # written when log.bodies is true
FIELDS = REQUIRED_FIELDS + OPTIONAL_FIELDS + BODY_FIELDS
