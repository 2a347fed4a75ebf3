"""The request log: one JSON object per request (its fields are a contract readers rely on), as JSONL.

`RequestRecord` is the contract; `RequestLog` is the sink. A record goes through a structlog
logger whose processor renders the line (secrets scrubbed, `body` last so readers can skip
it); the rendered line is handed to a writer thread (gateway.logfile), so the event loop never
waits on the disk.
"""
from __future__ import annotations

import atexit
import json
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson
import structlog

from gateway.logfile import LineWriter, RotatingFile
from gateway.protocol.errors import ErrorInfo
from gateway.protocol.log_schema import OPTIONAL_FIELDS, REQUIRED_FIELDS
from gateway.protocol.redact import REDACTED, scrub

log = structlog.get_logger("gateway.request")

# A header whose name says it carries a credential (api-key, X-Auth-Token, Proxy-Authorization,
# a session cookie …) is logged as [REDACTED]; an id such a name also covers (a session id) is
# lost from the dump only, as the record keeps session_id in its own field.
_CREDENTIAL_WORDS = ("key", "token", "secret", "auth", "cookie", "session", "passw")

_FIELDS, _OPTIONAL = REQUIRED_FIELDS, OPTIONAL_FIELDS  # order: gateway.protocol.log_schema
# Characters JSON allows raw inside strings but that str.splitlines() and JavaScript treat as line
# breaks: escaped, so a line of the log is a line for every tool.
_LINE_BREAKS = ((b"\xc2\x85", b"\\u0085"), (b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"))


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(eq=False)
class RequestRecord:
    """One request as the log records it."""

    request_id: str
    method: str
    path: str
    query: str = ""
    event: str = "request"  # request | unknown_route
    ts: str = field(default_factory=_now_iso)
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
    # The backend's answer came in one piece (Started.whole): no first token to time, ttft_ms stays null.
    whole_answer: bool = field(default=False, repr=False)
    started: float = field(default_factory=time.perf_counter, repr=False)

    def finish(self, status: int) -> None:
        self.status = status
        self.duration_ms = round((time.perf_counter() - self.started) * 1000, 2)

    def mark_first_token(self) -> None:
        if self.ttft_ms is None and not self.whole_answer:
            self.ttft_ms = round((time.perf_counter() - self.started) * 1000, 2)

    def to_dict(self, with_body: bool) -> dict:
        """The log line as a dict (shallow: the body is shared, not copied)."""
        data = {name: getattr(self, name) for name in _FIELDS}
        if self.error is not None:
            data["error"] = self.error.as_dict()
        for name in _OPTIONAL:
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        if with_body:
            data["body"] = self.body
            data["response"] = self.response
        return data


def redact_headers(headers) -> dict[str, str]:
    """Request headers with credentials replaced."""
    return {k: (REDACTED if _is_credential(k) else v) for k, v in headers.items()}


def _is_credential(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _CREDENTIAL_WORDS)


class LineRenderer:
    """Dict → one JSON line; any configured secret anywhere in it becomes [REDACTED]."""

    def __init__(self, secrets: tuple[str, ...] = ()):
        self.secrets = tuple(s for s in secrets if s)
        # What to look for in the rendered bytes: the secret as is and as JSON escapes it.
        self._needles = tuple({n for s in self.secrets for n in (s.encode(), orjson.dumps(s)[1:-1])})

    def render(self, data: dict) -> bytes:
        line = _dumps(data)
        # The byte search is the fast path; the slow walk runs only when a secret is present.
        if self._needles and any(n in line for n in self._needles):
            line = _dumps(self._scrub(data))
        # Three multi-byte substring scans of a ~100 KB line cost ~0.25 ms; an ASCII check, or one
        # UTF-8 decode and three one-character searches, find the (rare) line breaks ~4x cheaper.
        if not line.isascii():
            text = line.decode("utf-8", "replace")
            if "\x85" in text or "\u2028" in text or "\u2029" in text:
                for raw, escaped in _LINE_BREAKS:
                    line = line.replace(raw, escaped)
        return line

    def __call__(self, _logger: object, _method: str, event_dict: dict) -> bytes:
        """structlog processor: the final renderer, `body` and `response` moved last."""
        for name in ("body", "response"):
            if name in event_dict:
                event_dict[name] = event_dict.pop(name)
        try:
            return self.render(event_dict) + b"\n"
        except RecursionError:  # scrubbing a body nested ~1000 deep: the line is still written, without it
            return self.render({**event_dict, "body": "[not logged: nested too deeply to scrub]"}) + b"\n"

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            return scrub(value, self.secrets)
        if isinstance(value, dict):
            return {self._scrub(k): self._scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._scrub(v) for v in value]
        return value


def _without_body(line: bytes) -> bytes:
    """A rendered line minus its body and response (they come last)."""
    i = line.find(_BODY_FIELD)
    if i < 0:
        return line
    head = line[:i] + b"}\n"
    try:
        orjson.loads(head)
        return head
    except orjson.JSONDecodeError:  # the needle sat inside an earlier field (a header named "body")
        pass
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError:  # nested too deeply for orjson: kept whole
        return line
    rec.pop("body", None)
    rec.pop("response", None)
    return orjson.dumps(rec) + b"\n"


def _dumps(data: dict) -> bytes:
    try:
        return orjson.dumps(data)
    except TypeError:  # an integer beyond 64 bits, nesting past orjson's 255 levels: slower, but kept
        pass
    try:
        return json.dumps(data, ensure_ascii=False, default=str, separators=(",", ":")).encode()
    except (RecursionError, ValueError):  # nesting deeper than Python recurses: the line, minus the body
        return orjson.dumps({**data, "body": "[not logged: nested too deeply to serialize]"}, default=str)


RECENT_LINES = 200  # kept in memory for the request inspector (/inspect)
RECENT_BYTES = 4 << 20  # beyond this, the oldest kept lines lose their body and response
_BODY_FIELD = b',"body":'


class _Enqueue:
    """structlog's "logger" at the end of the chain: hands the rendered line to the writer and
    keeps the latest ones (numbered) for the request inspector."""

    def __init__(self, writer: LineWriter | None):
        self.writer = writer
        self.recent: deque[list] = deque()  # [seq, line], oldest first; the first `_trimmed` lost their body
        self.seq = 0
        self._bytes = 0
        self._trimmed = 0

    def msg(self, line: bytes) -> None:
        if self.writer is not None:
            self.writer.put(line)
        self.seq += 1
        self.recent.append([self.seq, line])
        self._bytes += len(line)
        if len(self.recent) > RECENT_LINES:
            self._bytes -= len(self.recent.popleft()[1])
            self._trimmed = max(0, self._trimmed - 1)
        # A Claude Code line holds the whole conversation: without a budget, RECENT_LINES of them
        # would keep many megabytes in the process.
        while self._bytes > RECENT_BYTES and self._trimmed < len(self.recent) - 1:
            entry = self.recent[self._trimmed]
            head = _without_body(entry[1])
            self._bytes -= len(entry[1]) - len(head)
            entry[1] = head
            self._trimmed += 1

    info = msg


class RequestLog:
    """Writes records to a JSONL file (when configured) and mirrors a summary to the console log."""

    def __init__(self, path: str | None, bodies: bool, secrets: tuple[str, ...] = (), *,
                 rotate_bytes: int = 0, keep: int = 5, compress: bool = False, shared: bool = False):
        self.bodies = bodies
        self.secrets = tuple(s for s in secrets if s)
        file = RotatingFile(path, rotate_bytes, keep, compress, shared=shared) if path else None
        self._writer = LineWriter(file) if file is not None else None
        self._sink = _Enqueue(self._writer)
        self._lines = structlog.wrap_logger(self._sink, processors=[LineRenderer(self.secrets)],
                                            wrapper_class=structlog.BoundLogger, context_class=dict)
        if self._writer is not None:
            atexit.register(self.close)  # an exit that skips the app's cleanup still flushes

    def write(self, record: RequestRecord) -> None:
        """Record one finished request (returns at once; the line is written off the event loop)."""
        # Rendered even without a file: the inspector shows the same (scrubbed) lines.
        self._lines.info(**record.to_dict(self.bodies))
        message = record.error and record.error.message  # says what to fix; the type alone rarely does
        # The path, model name and error echo the client's text: a pasted token shows here.
        path, model = scrub(record.path, self.secrets), record.model and scrub(record.model, self.secrets)
        message = message and scrub(message, self.secrets)
        log.info(record.event, request_id=record.request_id, method=record.method, path=path,
                 status=record.status, model=model, backend=record.backend,
                 duration_ms=record.duration_ms, ttft_ms=record.ttft_ms,
                 tokens_in=record.input_tokens, tokens_out=record.output_tokens,
                 stop_reason=record.stop_reason, error=record.error and record.error.type, error_message=message)

    def recent(self, after: int = 0) -> list[tuple[int, bytes]]:
        """The latest rendered lines numbered above `after`, oldest first (at most RECENT_LINES)."""
        return [(n, line) for n, line in self._sink.recent if n > after]

    def close(self) -> None:
        """Write every queued line and close the file."""
        if self._writer is not None:
            self._writer.close()
            atexit.unregister(self.close)
