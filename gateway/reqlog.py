"""The request log: one JSON object per request (its fields are a contract readers rely on), as JSONL.

`RequestRecord` follows a request and freezes into its `RequestOutcome` (gateway.outcome);
`log_line` renders that into the line, whose fields are the contract (gateway.protocol.log_schema);
`RequestLog` is the sink, and writes the console line from the same outcome. A line goes through a
structlog logger whose processor renders it (secrets scrubbed, `body` last so readers can skip it);
the rendered line is handed to a writer thread (gateway.logfile), so the event loop never waits on
the disk.
"""
from __future__ import annotations

import atexit
import json
import time
from collections import deque
from typing import Any

import orjson
import structlog
from structlog.typing import EventDict

from gateway.logfile import LineWriter, RotatingFile
from gateway.outcome import RequestOutcome, now_iso
from gateway.protocol.anthropic import Usage
from gateway.protocol.errors import ErrorInfo, client_disconnected
from gateway.protocol.events import EngineStats
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


class RequestRecord:
    """A request's outcome while it is learned: each step of the request adds what it found out
    (one method per step), and `finish` freezes it into the RequestOutcome that is logged."""

    __slots__ = ("_facts", "_whole", "started")

    def __init__(self, request_id: str, method: str, path: str, query: str = "", *,
                 user_agent: str | None = None, raw_path: str | None = None, api: str = "anthropic"):
        self.started = time.perf_counter()
        self._whole = False
        # Keyed by RequestOutcome's field names; what no step reported keeps the outcome's default.
        self._facts: dict[str, Any] = {"request_id": request_id, "method": method, "path": path, "query": query,
                                       "ts": now_iso(), "user_agent": user_agent, "raw_path": raw_path, "api": api}

    # What is read while the request runs (in-flight gauges, log events, the fallback chain).
    @property
    def request_id(self) -> str:
        return self._facts["request_id"]

    @property
    def status(self) -> int:
        return self._facts.get("status", 0)

    @property
    def backend(self) -> str | None:
        return self._facts.get("backend")

    @property
    def stream(self) -> bool | None:
        return self._facts.get("stream")

    @property
    def fallback(self) -> dict | None:
        return self._facts.get("fallback")

    @property
    def event(self) -> str:
        return self._facts.get("event", "request")

    def unknown_route(self, headers: dict, body_bytes: int | None) -> None:
        """A path the gateway does not serve: its (redacted) headers and announced size go on the line."""
        self._facts.update(event="unknown_route", headers=headers, body_bytes=body_bytes)

    def read(self, body_bytes: int, body: Any) -> None:
        """The body as read: its size and its decoded JSON (its text when it is not JSON)."""
        self._facts.update(body_bytes=body_bytes, body=body)

    def requested(self, model: str, stream: bool | None, session_id: str | None,
                  unknown_blocks: list[str] | None = None) -> None:
        """What the parsed request asks for."""
        self._facts.update(model=model, stream=stream, session_id=session_id, unknown_blocks=unknown_blocks)

    def routed(self, backend: str, backend_model: str, fallback: dict | None = None) -> None:
        """The backend and model that take the request; `fallback` says why when it moved from its route."""
        self._facts.update(backend=backend, backend_model=backend_model)
        if fallback is not None:
            self._facts["fallback"] = fallback

    def edited(self, context_edits: list[dict]) -> None:
        """What the context budget cut to fit the backend's window."""
        self._facts["context_edits"] = context_edits

    def served_by(self, replica: str | None) -> None:
        """The server of the backend's pool that answered (or was tried last)."""
        self._facts["replica"] = replica

    def counted(self, input_tokens: int) -> None:
        """A token count's answer."""
        self._facts["input_tokens"] = input_tokens

    def mark_first_token(self) -> None:
        if "ttft_ms" not in self._facts and not self._whole:
            self._facts["ttft_ms"] = round((time.perf_counter() - self.started) * 1000, 2)

    def came_whole(self, whole: bool) -> None:
        """Whether the backend's answer came in one piece (Started.whole): then there is no first token
        to time, and ttft_ms stays null."""
        self._whole = whole

    def answered(self, usage: Usage, tool_names: list[str] | None, response: list[dict] | None,
                 stats: EngineStats | None) -> None:
        """What the client was sent, delivered in full or cut: usage, tools called, content blocks, and
        the engine's measurements when it is in-process."""
        self._facts.update(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                           cache_read_tokens=usage.cache_read_input_tokens, tool_names=tool_names,
                           response=response)
        if stats is not None:
            self._facts.update(prefill_tps=stats.prefill_tps, decode_tps=stats.decode_tps,
                               peak_memory_mb=stats.peak_memory_mb)

    def stopped(self, stop_reason: str) -> None:
        """The answer ended normally, for this reason."""
        self._facts["stop_reason"] = stop_reason

    def responded(self, status: int) -> None:
        """The response status, unless one is already known (a stream's 200 is set when it starts)."""
        if not self._facts.get("status"):
            self._facts["status"] = status

    def failed(self, error: ErrorInfo, status: int | None = None) -> None:
        """Why the request failed; with `status` when the answer is an error response (a stream that
        already began keeps its 200)."""
        self._facts["error"] = error
        if status is not None:
            self._facts["status"] = status

    def client_gone(self) -> None:
        """The client went away mid-response: nobody is left to answer."""
        self._facts["status"] = 499

    def finish(self) -> RequestOutcome:
        """The outcome of the ended request: its status (499 when the client went away before an
        answer), its duration, and for every failed status a reason (log_replay --errors-only)."""
        status = self._facts.get("status") or 499
        error = self._facts.get("error")
        duration_ms = round((time.perf_counter() - self.started) * 1000, 2)
        if status >= 400 and error is None:
            error = (client_disconnected("the client went away before an answer") if status == 499
                     else ErrorInfo("api_error", f"HTTP {status}"))
        return RequestOutcome(**{**self._facts, "status": status, "error": error, "duration_ms": duration_ms})


def log_line(outcome: RequestOutcome, with_body: bool) -> dict:
    """The outcome as its log line (shallow: the body is shared, not copied), fields in schema order."""
    data = {name: getattr(outcome, name) for name in _FIELDS}
    if outcome.error is not None:
        data["error"] = outcome.error.as_dict()
    for name in _OPTIONAL:
        value = getattr(outcome, name)
        if value is not None:
            data[name] = value
    if with_body:
        data["body"] = outcome.body
        data["response"] = outcome.response
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

    def __call__(self, _logger: object, _method: str, event_dict: EventDict) -> bytes:
        """structlog processor: the final renderer, `body` and `response` moved last."""
        assert isinstance(event_dict, dict)  # RequestLog wraps its logger with context_class=dict
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

    def write(self, outcome: RequestOutcome) -> None:
        """Record one finished request: its log line (returns at once; the line is written off the
        event loop) and its console line."""
        # Rendered even without a file: the inspector shows the same (scrubbed) lines.
        self._lines.info(**log_line(outcome, self.bodies))
        self._console(outcome)

    def _console(self, outcome: RequestOutcome) -> None:
        """The request's console line: a summary of its log line."""
        error = outcome.error
        message = error and error.message  # says what to fix; the type alone rarely does
        # The path, model name and error echo the client's text: a pasted token shows here.
        path, model = scrub(outcome.path, self.secrets), outcome.model and scrub(outcome.model, self.secrets)
        message = message and scrub(message, self.secrets)
        log.info(outcome.event, request_id=outcome.request_id, method=outcome.method, path=path,
                 status=outcome.status, model=model, backend=outcome.backend,
                 duration_ms=outcome.duration_ms, ttft_ms=outcome.ttft_ms,
                 tokens_in=outcome.input_tokens, tokens_out=outcome.output_tokens,
                 stop_reason=outcome.stop_reason, error=error and error.type, error_message=message)

    def recent(self, after: int = 0) -> list[tuple[int, bytes]]:
        """The latest rendered lines numbered above `after`, oldest first (at most RECENT_LINES)."""
        return [(n, line) for n, line in self._sink.recent if n > after]

    def close(self) -> None:
        """Write every queued line and close the file."""
        if self._writer is not None:
            self._writer.close()
            atexit.unregister(self.close)
