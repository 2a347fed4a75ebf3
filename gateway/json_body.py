"""Request-body JSON decoding whose failures name the field: invalid UTF-8 or an unpaired
surrogate inside a string, a number beyond a double, and nesting deeper than the gateway can
re-serialise.

orjson reads up to 1024 levels but writes only 254, and the body is written again (to the
backend, the token estimate, the request log), so a body that decodes could still crash later.
Bodies are limited to MAX_DEPTH levels here, with room left for the envelopes backends add.
"""
from __future__ import annotations

import json
import re
from typing import Any

import orjson

from gateway.protocol.errors import GatewayError, invalid

MAX_DEPTH = 128
_ORJSON_WRITE_DEPTH = 254  # orjson.dumps raises "Recursion limit reached" beyond this
_PAD = _ORJSON_WRITE_DEPTH - MAX_DEPTH
_SURROGATE = re.compile("[\ud800-\udfff]")
# One JSON token that matters for paths: a whole string (skipped in C), a bracket or a comma.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\],]', re.S)
_SHOWN_SEGMENTS = 6


def decode_body(raw: bytes) -> Any:
    """The decoded JSON body, or a 400 naming the field that is not valid UTF-8 or nests too deeply."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _diagnose(raw, exc) from None
    if isinstance(body, (dict, list)) and not _depth_ok(body):
        raise too_deep(_path_at_depth(raw, MAX_DEPTH))
    return body


def too_deep(path: list[str]) -> GatewayError:
    """400 for a value nested beyond MAX_DEPTH, naming where (the first segments of the path)."""
    shown = ".".join(path[:_SHOWN_SEGMENTS]) + ("…" if len(path) > _SHOWN_SEGMENTS else "")
    return invalid(f"{shown or 'request body'}: JSON nested more than {MAX_DEPTH} levels deep")


def _depth_ok(body: dict | list) -> bool:
    # orjson has no depth option; padding the value with _PAD list levels makes its own write
    # limit fail exactly when the body is deeper than MAX_DEPTH (cheap: the body is written once, in C).
    padded: Any = body
    for _ in range(_PAD):
        padded = [padded]
    try:
        orjson.dumps(padded)
    except TypeError:
        return False
    return True


def _diagnose(raw: bytes, exc: orjson.JSONDecodeError) -> GatewayError:
    generic = invalid(f"request body is not valid JSON (or not UTF-8): {exc}")
    if "depth limit" in str(exc):
        return too_deep(_path_at_depth(raw, MAX_DEPTH))
    # The stdlib parser is laxer: it keeps invalid bytes (as surrogateescape), \ud800-style escapes
    # (as lone surrogates) and 1e999 (as inf), so the value orjson refused can be found and named.
    try:
        body = json.loads(raw.decode("utf-8", "surrogateescape"))
    except (ValueError, RecursionError):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            return invalid(f"request body is not valid UTF-8 (byte {bad.start}) and not valid JSON")
        return generic
    found = _bad_leaf(body)
    if found is None:
        return generic
    path, problem = found
    return invalid(f"{'.'.join(path) or 'request body'}: {problem}")


_NOT_UTF8 = "not valid UTF-8 text (invalid bytes or an unpaired surrogate escape)"


def _bad_leaf(body: Any) -> tuple[list[str], str] | None:
    """(path, problem) of the first string (value or key) with a surrogate code point or the first
    non-finite number; iterative, so any depth the stdlib parser accepted is fine."""
    stack: list[tuple[list[str], Any]] = [([], body)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return path, _NOT_UTF8
        elif isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                return path, "number out of range (not a finite double)"
        elif isinstance(value, dict):
            for key, item in reversed(list(value.items())):
                name = key.encode("utf-8", "replace").decode("utf-8")
                if _SURROGATE.search(key):
                    return path + [name], "key " + _NOT_UTF8
                stack.append((path + [name], item))
        elif isinstance(value, list):
            stack.extend((path + [str(i)], item) for i, item in reversed(list(enumerate(value))))
    return None


def _path_at_depth(raw: bytes, depth: int) -> list[str]:
    """Path (keys and indices) to the first container opened deeper than `depth`, by a token scan
    of the raw text (which may be too deep for any parser)."""
    stack: list[list] = []  # [kind, key or index, expecting a key]
    for m in _TOKEN.finditer(raw):
        tok = m.group()
        first = tok[:1]
        if first == b'"':
            top = stack[-1] if stack else None
            if top is not None and top[0] == "{" and top[2]:
                try:
                    top[1] = json.loads(tok.decode("utf-8", "replace"))
                except ValueError:
                    top[1] = tok[1:-1].decode("utf-8", "replace")
                top[2] = False
        elif first in (b"{", b"["):
            if len(stack) >= depth:
                return [str(e[1]) for e in stack if e[1] is not None]
            stack.append(["{", None, True] if first == b"{" else ["[", 0, False])
        elif first in (b"}", b"]"):
            if stack:
                stack.pop()
        elif first == b",":
            if stack:
                if stack[-1][0] == "[":
                    stack[-1][1] += 1
                else:
                    stack[-1][2] = True
    return [str(e[1]) for e in stack if e[1] is not None]
