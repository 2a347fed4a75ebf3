"""The request log: one JSON object per request (fields fixed by design.md), as JSONL.

`RequestRecord` is the contract; `RequestLog` is the sink. Each record is serialised to one
line and written with a single append, so concurrent requests never interleave inside a line.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import structlog

log = structlog.get_logger("gateway.request")

REDACTED_HEADERS = frozenset({"authorization", "x-api-key", "cookie", "set-cookie", "proxy-authorization"})


@dataclass
class RequestRecord:
    """One request as the log records it."""

    request_id: str
    method: str
    path: str
    query: str = ""
    event: str = "request"  # request | unknown_route
    ts: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
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
    error: dict | None = None
    session_id: str | None = None
    user_agent: str | None = None
    body: Any = None
    headers: dict | None = None  # unknown routes only, redacted
    body_bytes: int | None = None
    started: float = field(default_factory=time.perf_counter, repr=False)

    def finish(self, status: int) -> None:
        self.status = status
        self.duration_ms = round((time.perf_counter() - self.started) * 1000, 2)

    def mark_first_token(self) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = round((time.perf_counter() - self.started) * 1000, 2)

    def to_json(self, with_body: bool, secrets: tuple[str, ...] = ()) -> bytes:
        data = asdict(self)
        data.pop("started")
        if not with_body:
            data.pop("body")
        for key in ("headers", "body_bytes"):
            if data[key] is None:
                data.pop(key)
        line = orjson.dumps(data)
        for secret in secrets:
            if secret and secret.encode() in line:
                line = line.replace(secret.encode(), b"[REDACTED]")
        return line


def redact_headers(headers) -> dict[str, str]:
    """Request headers with credentials replaced."""
    return {k: ("[REDACTED]" if k.lower() in REDACTED_HEADERS else v) for k, v in headers.items()}


class RequestLog:
    """Appends records to a JSONL file (when configured) and mirrors a summary to the console log."""

    def __init__(self, path: str | None, bodies: bool, secrets: tuple[str, ...] = ()):
        self.bodies = bodies
        self.secrets = tuple(s for s in secrets if s)
        self._fd: int | None = None
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(self, record: RequestRecord) -> None:
        """Record one finished request."""
        if self._fd is not None:
            os.write(self._fd, record.to_json(self.bodies, self.secrets) + b"\n")
        log.info(record.event, request_id=record.request_id, method=record.method, path=record.path,
                 status=record.status, model=record.model, backend=record.backend,
                 duration_ms=record.duration_ms, ttft_ms=record.ttft_ms,
                 tokens_in=record.input_tokens, tokens_out=record.output_tokens,
                 stop_reason=record.stop_reason, error=(record.error or {}).get("type"))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
