"""Tool-call arguments written by a model: lenient JSON parsing, repair, schema coercion, validation.

Local models damage arguments in a few recurring ways (trailing commas, single quotes, raw newlines
in strings, Python literals, unquoted keys, a dropped closing brace, "3" where a number belongs).
`ArgumentChecker.repair` undoes those, coerces scalars to the tool's `input_schema`, and validates with
`jsonschema`; anything still invalid comes back as None so that no broken tool_use reaches the client.
"""
from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import orjson
import structlog

log = structlog.get_logger("backends.tool_args")

_PY_LITERALS = {"True": "true", "False": "false", "None": "null",
                "true": "true", "false": "false", "null": "null"}
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?\Z")
_BARE = re.compile(r"[A-Za-z0-9_$.+-]+")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/", "\\": "\\", '"': '"', "'": "'"}
_FENCE = re.compile(r"\A```[a-zA-Z]*\n(.*?)\n?```\Z", re.DOTALL)


def parse_lenient(raw: str, *, close_open: bool = True) -> Any | None:
    """Any JSON value in `raw`, repairing common model damage; None when it cannot be read.

    `close_open` allows appending missing closing braces/brackets; pass False when the text
    may have been cut off mid-value (a truncated call must not be "completed" by guessing).
    """
    text = raw.strip()
    fence = _FENCE.match(text)
    if fence:
        text = fence.group(1).strip()
    if not text:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    fixed = _normalize(text, close_open)
    if fixed is None:
        return None
    try:
        return json.loads(fixed)
    except ValueError:
        return None


def _read_string(src: str, i: int) -> tuple[str, int] | None:
    """The decoded string starting at the quote `src[i]`, and the index after it; None if unterminated.

    A quote of the opening kind ends the string only when what follows can follow a string
    (`, } ] :` or the end), so unescaped inner quotes ("echo "hi"", 'don't') survive.
    """
    quote, n, j, parts = src[i], len(src), i + 1, []
    while j < n:
        c = src[j]
        if c == "\\" and j + 1 < n:
            e = src[j + 1]
            if e == "u" and j + 6 <= n and all(h in "0123456789abcdefABCDEF" for h in src[j + 2:j + 6]):
                parts.append(chr(int(src[j + 2:j + 6], 16)))
                j += 6
                continue
            # An unknown escape (a regex's \d) is most likely meant literally.
            parts.append(_ESCAPES.get(e, "\\" + e))
            j += 2
            continue
        if c == quote:
            k = j + 1
            while k < n and src[k] in " \t\r\n":
                k += 1
            if k >= n or src[k] in ",}]:":
                return "".join(parts), j + 1
        parts.append(c)
        j += 1
    return None


def _normalize(src: str, close_open: bool) -> str | None:
    """Rewrite near-JSON into JSON text, or None when it is beyond simple repair."""
    out: list[str] = []
    closers: list[str] = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c in "\"'":
            got = _read_string(src, i)
            if got is None:
                return None  # an unterminated string: never guess where it ended
            out.append(json.dumps(got[0], ensure_ascii=False))
            i = got[1]
        elif c in "{[":
            closers.append("}" if c == "{" else "]")
            out.append(c)
            i += 1
        elif c in "}]":
            if not closers or closers[-1] != c:
                return None
            if out and out[-1] == ",":
                out.pop()  # trailing comma
            closers.pop()
            out.append(c)
            i += 1
        elif c in ",:":
            out.append(c)
            i += 1
        elif c.isspace():
            i += 1
        else:
            m = _BARE.match(src, i)
            if m is None:
                return None
            word = m.group(0)
            i = m.end()
            k = i
            while k < n and src[k].isspace():
                k += 1
            if k < n and src[k] == ":" and closers and closers[-1] == "}":
                out.append(json.dumps(word))  # an unquoted key
            elif word in _PY_LITERALS:
                out.append(_PY_LITERALS[word])
            elif _NUMBER.match(word):
                out.append(word)
            else:
                return None
    if closers:
        if not close_open or (out and out[-1] == ":"):
            return None
        if out[-1] == ",":
            out.pop()
        out.extend(reversed(closers))
    return "".join(out)


# -- schema coercion + validation ---------------------------------------------------------------

def _types(schema: dict) -> set[str]:
    t = schema.get("type")
    if isinstance(t, str):
        return {t}
    if isinstance(t, list):
        return {x for x in t if isinstance(x, str)}
    if "properties" in schema or "required" in schema:
        return {"object"}
    if "items" in schema:
        return {"array"}
    return set()


def _coerce_str(value: str, types: set[str]) -> Any:
    """A string where the schema wants something else: the value it most likely meant."""
    s = value.strip()
    if types & {"integer", "number"} and _NUMBER.match(s):
        num = float(s)
        if "integer" in types and num.is_integer():
            return int(num)
        if "number" in types:
            return int(s) if re.fullmatch(r"-?\d+", s) else num
    if "boolean" in types and s.lower() in ("true", "false"):
        return s.lower() == "true"
    if "null" in types and s in ("null", "None"):
        return None
    if types & {"object", "array"}:
        parsed = parse_lenient(s)
        if isinstance(parsed, dict) and "object" in types or isinstance(parsed, list) and "array" in types:
            return parsed
    return value


class ArgumentChecker:
    """Repairs, coerces and validates arguments against one tool's input_schema (validator built once)."""

    def __init__(self, schema: dict | None):
        self.schema = schema if isinstance(schema, dict) else None
        self._validator = None
        if self.schema is not None:
            cls = jsonschema.validators.validator_for(self.schema, default=jsonschema.Draft202012Validator)
            self._validator = cls(self.schema)

    def repair(self, raw: str, *, close_open: bool = True) -> dict | None:
        """Arguments from model text (JSON, possibly damaged), conformed to the schema; None if invalid."""
        value = parse_lenient(raw, close_open=close_open)
        if isinstance(value, str):  # arguments double-encoded as a JSON string
            value = parse_lenient(value, close_open=close_open)
        return self.conform(value)

    def conform(self, value: Any) -> dict | None:
        """`value` coerced to the schema's types if it then validates, else None."""
        if isinstance(value, str):
            value = parse_lenient(value)
        if not isinstance(value, dict):
            return None
        if self._validator is None:
            return value
        try:
            fixed = self._coerce(value, self.schema, 0)
            if self._validator.is_valid(fixed):
                return fixed
            return None
        except (jsonschema.exceptions.SchemaError, jsonschema.exceptions.UnknownType,
                jsonschema.exceptions._WrappedReferencingError,  # type: ignore[attr-defined]  # private (bad $ref): no stub
                RecursionError) as exc:
            # A schema we cannot evaluate is the client's problem, not the model's: accept the object.
            log.warning("tool_schema_unusable", detail=str(exc)[:200])
            return value

    def _valid(self, value: Any, schema: Any) -> bool:
        assert self._validator is not None, "only _coerce calls this, and conform runs it only with a schema"
        return self._validator.evolve(schema=schema).is_valid(value)

    def _deref(self, schema: dict, depth: int) -> dict:
        ref = schema.get("$ref")
        if not isinstance(ref, str) or not ref.startswith("#") or depth > 16:
            return schema
        node: Any = self.schema
        for part in ref[1:].split("/")[1:] if ref != "#" else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                return schema
            node = node[part]
        return self._deref(node, depth + 1) if isinstance(node, dict) else schema

    def _coerce(self, value: Any, schema: Any, depth: int) -> Any:
        if not isinstance(schema, dict) or depth > 32:
            return value
        schema = self._deref(schema, depth)
        branches = schema.get("anyOf") or schema.get("oneOf")
        if isinstance(branches, list) and not self._valid(value, schema):
            for branch in branches:
                fixed = self._coerce(value, branch, depth + 1)
                if self._valid(fixed, branch):
                    value = fixed
                    break
        for sub in schema.get("allOf") or ():
            value = self._coerce(value, sub, depth + 1)
        types = _types(schema)
        if isinstance(value, str) and types and "string" not in types:
            value = _coerce_str(value, types)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and types == {"string"}:
            value = str(value)  # a bare 3 where the schema wants "3"
        elif isinstance(value, float) and value.is_integer() and "integer" in types and "number" not in types:
            value = int(value)
        if isinstance(value, dict) and (not types or "object" in types):
            value = self._coerce_object(value, schema, depth)
        elif isinstance(value, list) and (not types or "array" in types):
            items = schema.get("items")
            if isinstance(items, dict):
                value = [self._coerce(x, items, depth + 1) for x in value]
        return value

    def _coerce_object(self, value: dict, schema: dict, depth: int) -> dict:
        props = schema.get("properties")
        if not isinstance(props, dict):
            props = {}
        required = schema.get("required")
        if not isinstance(required, list):
            required = []
        extra = schema.get("additionalProperties")
        out = {}
        for key, item in value.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is None:
                out[key] = item
                continue
            if item is None and key not in required and not self._valid(None, sub):
                continue  # "limit": null for an optional, non-nullable field means "not given"
            out[key] = self._coerce(item, sub, depth + 1)
        return out
