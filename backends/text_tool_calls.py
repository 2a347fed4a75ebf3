"""Tool calls for remote backends: calls written as text become tool_use, every call is schema-checked.

Servers without a tool parser (llama.cpp without --jinja, LM Studio, Ollama with some models)
pass a model's `<tool_call>…` or `[TOOL_CALLS]…` through as plain `content`. With `tool_parser`
set, that text goes through the same incremental parsers the MLX backend uses
(backends.tool_parsers). Calls the server did parse are buffered until they end and their
arguments repaired against the tool's input_schema (backends.tool_args) the same way. A call
that still does not fit its schema, or names a tool the request does not offer, is never sent as
tool_use: the client gets it as text (and a `tool_call_dropped` warning is logged).

`auto` (the default for remote backends) reacts only to the explicit markers `<tool_call>`
(Hermes JSON or Qwen3-Coder XML inside), `[TOOL_CALLS]` (Mistral) and `<|python_tag|>`
(Llama 3), and only when the request offers tools. Bare JSON (Llama 3 without its tag) and a bare
`<function=` are left to the explicit parsers: ordinary answers contain JSON and code, and auto
must not turn them into calls. Even on a marker, a call is made only when it parses and names
one of the request's tools with valid arguments; anything else is given back as the same text.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

import orjson
import structlog

from backends.text_filters import _partial_suffix
from backends.tool_args import ArgumentChecker
from backends.tool_parsers import (
    PARSERS,
    Llama3JsonParser,
    MistralParser,
    PassthroughParser,
    Qwen3CoderParser,
    ToolCallParser,
)
from gateway.protocol.anthropic import MessagesRequest
from gateway.protocol.events import (
    Event,
    Stop,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
)

log = structlog.get_logger("backends.text_tool_calls")

REMOTE_DEFAULT = "auto"
_LOG_RAW_CHARS = 4000


class _WrappedQwen3Coder(Qwen3CoderParser):
    """Qwen3-Coder XML or Hermes JSON, only inside `<tool_call>` (a bare `<function=` stays text)."""

    starts = ("<tool_call>",)


_AUTO_MARKERS: dict[str, type[ToolCallParser]] = {
    "<tool_call>": _WrappedQwen3Coder, "[TOOL_CALLS]": MistralParser, "<|python_tag|>": Llama3JsonParser,
}
assert {m[0] for m in _AUTO_MARKERS} == {"<", "["}  # AutoParser.feed's plain-text test relies on it


class AutoParser(ToolCallParser):
    """Text until the first explicit call marker, then the parser that marker belongs to."""

    name = "auto"

    def __init__(self, tools: Mapping[str, dict | None] | None = None):
        super().__init__(tools)
        self._inner: ToolCallParser | None = None
        self._buf = ""
        self._ws: list[str] = []

    def feed(self, text: str) -> list[Event]:
        """Events for one fragment of visible text."""
        if self._inner is not None:
            return self._inner.feed(text)
        if text.isspace():
            self._ws.append(text)  # held as pieces: rescanning a growing run of whitespace is quadratic
            return []
        if self._ws:
            text, self._ws = "".join(self._ws) + text, []
        self._buf += text
        if "<" not in self._buf and "[" not in self._buf:  # no marker, nor the start of one: plain text
            safe = self._buf.rstrip()  # whitespace right before a call is noise the parser strips
            self._buf = self._buf[len(safe):]
            return [TextDelta(safe)] if safe else []
        found = [(pos, m) for m in _AUTO_MARKERS if (pos := self._buf.find(m)) >= 0]
        if found:
            _, marker = min(found)
            self._inner = _AUTO_MARKERS[marker](self.tools)
            self.name = f"auto:{self._inner.name}"
            held, self._buf = self._buf, ""
            return self._inner.feed(held)
        hold = max(_partial_suffix(self._buf, m) for m in _AUTO_MARKERS)
        head = self._buf[:len(self._buf) - hold]
        safe = head.rstrip()  # whitespace right before a call is noise the parser strips
        self._buf = self._buf[len(safe):]
        return [TextDelta(safe)] if safe else []

    def finish(self, *, cut: bool = False) -> list[Event]:
        """What is still held once the answer ended."""
        if self._inner is not None:
            return self._inner.finish(cut=cut)
        held, self._buf = self._buf + "".join(self._ws), ""
        self._ws = []
        return [TextDelta(held)] if held else []


def text_parser(name: str | None, tools: Mapping[str, dict | None]) -> ToolCallParser:
    """The parser for a remote backend's `tool_parser` setting (absent → REMOTE_DEFAULT)."""
    key = (name or REMOTE_DEFAULT).strip().lower().replace("-", "_")
    if not tools or key == "none":
        return PassthroughParser()
    if key == "auto":
        return AutoParser(tools)
    return PARSERS[key](tools)


class Translator(Protocol):
    done: bool

    def feed(self, chunk: dict) -> list[Event]: ...

    def finish(self) -> list[Event]: ...


class ToolCallTranslator:
    """Wraps a chunk translator: visible text through a tool parser, server-parsed calls repaired."""

    def __init__(self, inner: Translator, req: MessagesRequest, tool_parser: str | None, backend: str):
        self.inner = inner
        self.backend = backend
        self.schemas: dict[str, Any] = {t.name: t.input_schema for t in req.tools}
        self.tool_parser = tool_parser
        self.parser = text_parser(tool_parser, self.schemas)
        self._checkers: dict[str, ArgumentChecker] = {}
        self._call: tuple[str, str | None, list[str]] | None = None  # a server call being buffered
        self.sent = 0  # tool_use blocks that went out
        self.upstream_events: list[Event] = []

    @property
    def done(self) -> bool:
        return self.inner.done

    def feed(self, chunk: dict) -> list[Event]:
        """Events for one decoded chunk (`upstream_events`: what the server sent, before buffering)."""
        self.upstream_events = self.inner.feed(chunk)
        return self._filter(self.upstream_events)

    def finish(self) -> list[Event]:
        """Trailing events once the upstream ended: held text, the last call, the stop."""
        return self._filter(self.inner.finish())

    def _filter(self, events: list[Event]) -> list[Event]:
        out: list[Event] = []
        for ev in events:
            if type(ev) is TextDelta:
                self._add(out, self.parser.feed(ev.text))
            elif type(ev) is ToolCallStart:
                self._end_call(out)
                # Text the parser holds (a partial marker, trailing space) goes out before the call.
                self._add(out, self.parser.finish())
                self.parser = text_parser(self.tool_parser, self.schemas)
                self._call = (ev.name, ev.id, [])
                out.append(ev)  # the message stream holds a call until its end, where it is checked
            elif type(ev) is ToolCallDelta:
                if self._call is not None:
                    self._call[2].append(ev.partial_json)
                    out.append(ev)
            elif type(ev) is ToolCallEnd:
                self._end_call(out)
            elif type(ev) is Stop:
                if ev.reason in ("max_tokens", "model_context_window_exceeded"):
                    # Generation ended inside the call: it stays unfinished, for the message stream
                    # to leave out (a cut call is neither a call nor text).
                    self._call = None
                self._end_call(out)
                self._add(out, self.parser.finish(cut=ev.reason in ("max_tokens", "stop_sequence")))
                if ev.reason == "tool_use" and not self.sent:
                    ev = Stop("end_turn")  # the server's call was shown as text
                out.append(ev)
            else:
                out.append(ev)
        return out

    def _add(self, out: list[Event], events: list[Event]) -> None:
        for ev in events:
            if type(ev) is ToolCallStart:
                self.sent += 1
            out.append(ev)

    def _end_call(self, out: list[Event]) -> None:
        if self._call is None:
            return
        name, _, parts = self._call
        self._call = None
        raw = "".join(parts)
        args = self._repair(name, raw)
        if args is None:
            log.warning("tool_call_dropped", backend=self.backend, parser="server", reason=f"{name}: arguments invalid",
                        raw=raw[:_LOG_RAW_CHARS], raw_chars=len(raw))
            out.append(ToolCallEnd(as_text=f"<tool_call>\n{{\"name\": {orjson.dumps(name).decode()}, "
                                           f"\"arguments\": {raw or '{}'}}}\n</tool_call>"))
            return
        self.sent += 1
        exact = _exact(raw, args)
        out.append(ToolCallEnd(arguments=None if exact == raw else exact))

    def _repair(self, name: str, raw: str) -> dict | None:
        checker = self._checkers.get(name)
        if checker is None:  # a tool the request does not define has no schema: any object passes
            checker = self._checkers[name] = ArgumentChecker(self.schemas.get(name))
        return checker.repair(raw) if raw.strip() else checker.conform({})


def _exact(raw: str, args: dict) -> str:
    """The server's own bytes when repair changed nothing (clients may compare them), else `args` as JSON."""
    try:
        if orjson.loads(raw) == args:
            return raw
    except orjson.JSONDecodeError:
        pass
    return _dumps(args)


def _dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # integers beyond 64 bits
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
