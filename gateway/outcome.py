"""What one finished request produced, as a typed value: built once when the request ends (from
the `RequestRecord` that followed it, gateway.reqlog), then rendered once each into its log line,
its metrics and its console line. Field names are the log line's (gateway.protocol.log_schema), so
the outcome, the line and the tools that read it use one vocabulary."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from gateway.protocol.errors import ErrorInfo


def now_iso() -> str:
    """The log line's `ts`: UTC, milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True, eq=False)
class RequestOutcome:
    """One request as it ended: who asked for what, where it went, what came back, how long it took."""

    request_id: str
    method: str
    path: str
    query: str = ""
    event: str = "request"  # request | unknown_route
    ts: str = field(default_factory=now_iso)
    status: int = 0
    duration_ms: float | None = None
    ttft_ms: float | None = None
    model: str | None = None
    backend: str | None = None
    backend_model: str | None = None
    stream: bool | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    stop_reason: str | None = None
    tool_names: list[str] | None = None  # tools the answer called or began to call, in order (for replay diffs)
    error: ErrorInfo | None = None
    session_id: str | None = None
    user_agent: str | None = None
    body: Any = None  # the decoded JSON body; the raw text when it was not JSON
    response: list[dict] | None = None  # the content blocks the client was sent (written with the body)
    raw_path: str | None = None  # the request target still percent-encoded, when `path?query` differs from it
    headers: dict | None = None  # unknown routes only, redacted
    body_bytes: int | None = None
    prefill_tps: float | None = None  # in-process engines: prompt tokens computed per second
    decode_tps: float | None = None  # in-process engines: generated tokens per second
    peak_memory_mb: float | None = None  # in-process engines: peak engine memory
    unknown_blocks: list[str] | None = None  # "type@where" of block types passed on as text or dropped
    replica: str | None = None  # the server of a backend's pool that answered (or was tried last)
    context_edits: list[dict] | None = None  # what the context budget cut to fit the window, tokens saved
    # {"from", "to", "reason", …} when another backend answered instead: its pool was down or
    # overloaded (with "error"), or the prompt overflowed its window (with "context_window")
    fallback: dict | None = None
    api: str = "anthropic"  # the client protocol: anthropic | openai (/v1/chat/completions)
