"""Field checks shared by the request parsers (/v1/messages, /v1/chat/completions): a failure is
a 400 invalid_request_error naming the field."""
from __future__ import annotations

from typing import Any

from gateway.protocol.errors import invalid


def expect(cond: bool, message: str) -> None:
    """Raise the 400 `message` unless `cond` holds."""
    if not cond:
        raise invalid(message)


def is_int(v: Any) -> bool:
    """An integer in JSON (a bool is not one)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A number in JSON (a bool is not one)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def number(body: dict, key: str, lo: float, hi: float) -> float | None:
    """body[key] when it is a number within [lo, hi]; None when absent; else a 400."""
    value = body.get(key)
    if value is None:
        return None
    expect(is_number(value), f"{key}: expected a number")
    expect(lo <= value <= hi, f"{key}: must be between {lo:g} and {hi:g}")
    return value
