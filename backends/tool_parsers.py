"""Tool calls written in model text, parsed while streaming into the gateway's internal events.

An in-process model writes its tool calls as text in a template-specific format: Hermes/Qwen
`<tool_call>{json}</tool_call>`, Qwen3-Coder XML, Llama 3 JSON, Mistral `[TOOL_CALLS]`. One parser
per response turns the text into TextDelta / ToolCallStart / ToolCallDelta / ToolCallEnd. Text
outside calls streams through at once, except a possible partial marker and trailing whitespace
(noise before a call). A call is buffered until it is complete, because its arguments are repaired
and validated against the tool's input_schema (backends.tool_args) before the client sees it.

A call that cannot be parsed, names an unknown tool, or still violates the schema is never sent as
a tool_use. It is logged (warning `tool_call_dropped` with the raw text) and its raw text is given
back as ordinary text: the user then sees what the model tried instead of a silently empty turn,
and the model sees its malformed attempt in the next turn's history. When one block holds several
calls and only some are valid, the valid ones are sent and the rest only logged (their text cannot
be shown without repeating the valid ones).

Run thinking separation first (ModelOutputParser does both): a `<tool_call>` inside reasoning is
not a call.
"""
from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from backends.text_filters import ThinkTagParser, _partial_suffix
from backends.tool_args import ArgumentChecker, parse_lenient
from gateway.protocol.events import Event, TextDelta, ThinkingDelta, ToolCallDelta, ToolCallEnd, ToolCallStart

log = structlog.get_logger("backends.tool_parsers")

FRAGMENT_CHARS = 128  # a validated call's JSON goes out in pieces of this size
_LOG_RAW_CHARS = 4000
_WS = " \t\r\n"
_LEADING_WS = re.compile(r"\s*")


def _match_end(pattern: re.Pattern[str], text: str) -> int:
    """Where `pattern` stops matching at the start of `text`, for a pattern that also matches ''."""
    m = pattern.match(text)
    assert m is not None, "the pattern matches the empty string, so it matches at the start of any text"
    return m.end()


@dataclass(slots=True)
class ParsedCall:
    name: str
    arguments: Any  # a dict, or JSON text / any value that ArgumentChecker.conform turns into one


_NOT_A_CALL = object()  # _close verdict: what looked like a call start was ordinary text


def _call_from_obj(obj: Any) -> ParsedCall | None:
    """`{"name": …, "arguments"|"parameters": …}` (optionally wrapped in "function") as a call."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict):
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return None
    args = obj["arguments"] if "arguments" in obj else obj.get("parameters")
    return ParsedCall(name.strip(), {} if args is None else args)


_STRUCTURAL = re.compile(r"[{}\[\]\"']")
_IN_STRING = {'"': re.compile(r'["\\\\]'), "'": re.compile(r"['\\\\]")}


class _Extent:
    """Finds where one JSON object/array ends in text that arrives in pieces (quote-aware)."""

    __slots__ = ("pos", "depth", "quote", "escape")

    def __init__(self) -> None:
        self.pos, self.depth, self.quote, self.escape = 0, 0, "", False

    def end(self, s: str, start: int = 0) -> int | None:
        """Index just past the value that starts at or after `start`, or None while it is open."""
        i, n = max(self.pos, start), len(s)
        depth, quote, escape = self.depth, self.quote, self.escape
        if escape and i < n:  # a backslash ended the previous piece
            i, escape = i + 1, False
        while i < n:
            if quote:
                m = _IN_STRING[quote].search(s, i)
                if m is None:
                    i = n
                elif m.group() == "\\":
                    i = m.end() + 1
                    escape = i > n
                else:
                    i, quote = m.end(), ""
                continue
            m = _STRUCTURAL.search(s, i)
            if m is None:
                i = n
                continue
            c, i = m.group(), m.end()
            if c == '"' or c == "'":
                quote = c
            elif c == "{" or c == "[":
                depth += 1
            else:
                depth -= 1
                if depth <= 0:
                    self.pos, self.depth, self.quote, self.escape = i, 0, "", False
                    return i
        self.pos, self.depth, self.quote, self.escape = min(i, n), depth, quote, escape
        return None


def _json_calls(body: str, close_open: bool) -> list[ParsedCall] | None:
    """Calls in a JSON body: one object, a list of them, or several objects in a row."""
    value = parse_lenient(body, close_open=close_open)
    if isinstance(value, dict):
        values = [value]
    elif isinstance(value, list):
        values = value
    else:
        values, pos = [], 0
        while True:
            while pos < len(body) and body[pos] in _WS + ";,":
                pos += 1
            if pos >= len(body):
                break
            end = _Extent().end(body, pos)
            piece = parse_lenient(body[pos:end] if end else body[pos:], close_open=close_open)
            if piece is None:
                return None
            values.append(piece)
            if end is None:
                break
            pos = end
    calls = [call for v in values if (call := _call_from_obj(v)) is not None]
    return calls if calls and len(calls) == len(values) else None


class ToolCallParser(ABC):
    """Model text → TextDelta and validated tool calls; one instance per response, fed in order."""

    name = "base"

    def __init__(self, tools: Mapping[str, dict | None] | None = None):
        self.tools = dict(tools or {})  # tool name → input_schema
        self.emitted = 0  # tool calls sent
        self.dropped = 0  # tool calls withheld (unparseable, unknown tool, or invalid arguments)

    @abstractmethod
    def feed(self, text: str) -> list[Event]:
        """Events for one fragment of generated text."""

    @abstractmethod
    def finish(self, *, cut: bool = False) -> list[Event]:
        """Events for what is still held once generation ended.

        `cut`: generation stopped at max_tokens (or a stop sequence), so an open call may be
        truncated: it is then dropped rather than completed by adding closing brackets.
        """


class _MarkerParser(ToolCallParser):
    """Shared machinery: text until a start marker, then buffer the call until `_close` says done."""

    starts: tuple[str, ...] = ()  # markers that open a call
    separators = _WS  # stripped from text right after a call

    def __init__(self, tools: Mapping[str, dict | None] | None = None):
        super().__init__(tools)
        self._checkers: dict[str, ArgumentChecker] = {}
        self._trigger = "".join({m[0] for m in self.starts})
        self._buf = ""  # text mode: undecided tail; call mode: the call's body so far
        self._in_call = False
        self._marker = ""  # the marker that opened the current call
        self._lead_ws = ""  # whitespace before the current call, given back if it is dropped
        self._strip_leading = False  # whitespace right after a call is noise
        self._scan_from = 0  # call mode: where the end search resumes
        self._extent = _Extent()
        self._ws: list[str] = []  # whitespace-only fragments held in text mode, joined once text follows

    # -- public --------------------------------------------------------------------------------

    def feed(self, text: str) -> list[Event]:
        """Events for one fragment of generated text."""
        if not text:
            return []
        if not self._in_call and text.isspace():
            self._ws.append(text)  # held as pieces: rescanning a growing run of whitespace is quadratic
            return []
        if self._ws:
            text, self._ws = "".join(self._ws) + text, []
        if not (self._in_call or self._buf or self._strip_leading or text[-1] in _WS) and \
                not any(c in text for c in self._trigger):
            return [TextDelta(text)]
        self._buf += text
        out: list[Event] = []
        self._run(out, final=False, cut=False)
        return out

    def finish(self, *, cut: bool = False) -> list[Event]:
        """Events for what is still held once generation ended (see ToolCallParser.finish)."""
        out: list[Event] = []
        if self._ws:
            self._buf, self._ws = self._buf + "".join(self._ws), []
        self._run(out, final=True, cut=cut)
        if self._buf:
            self._emit_text(self._buf, out)
            self._buf = ""
        return out

    # -- machinery -----------------------------------------------------------------------------

    def _run(self, out: list[Event], final: bool, cut: bool) -> None:
        while self._buf or (final and self._in_call):
            if not self._in_call:
                if not self._scan_text(out, final):
                    return
                continue
            verdict = self._close(self._buf, final, cut)
            if verdict is None:
                return
            used, calls = verdict
            raw, self._buf = self._marker + self._buf[:used], self._buf[used:]
            self._in_call = False
            self._complete(raw, calls, out)

    def _find_start(self, buf: str) -> tuple[int, str] | None:
        """Position and marker of the first call start in text."""
        best: tuple[int, str] | None = None
        for marker in self.starts:
            pos = buf.find(marker)
            if pos >= 0 and (best is None or pos < best[0]):
                best = (pos, marker)
        return best

    def _hold(self, buf: str) -> int:
        """How many trailing characters could still become a call start."""
        return max((_partial_suffix(buf, m) for m in self.starts), default=0)

    def _scan_text(self, out: list[Event], final: bool) -> bool:
        """Emit text up to a call start (True, now in call mode) or all that is safe (False)."""
        buf = self._buf
        found = self._find_start(buf)
        if found is not None:
            pos, marker = found
            before = buf[:pos]
            text = before.rstrip()
            self._emit_text(text, out)
            self._lead_ws = before[len(text):]
            self._marker, self._buf, self._in_call = marker, buf[pos + len(marker):], True
            self._scan_from, self._extent = 0, _Extent()
            return True
        if final:
            self._emit_text(buf, out)
            self._buf = ""
            return False
        head = buf[:len(buf) - self._hold(buf)]
        text = head.rstrip()
        self._emit_text(text, out)
        self._buf = buf[len(text):]
        return False

    def _emit_text(self, text: str, out: list[Event]) -> None:
        if self._strip_leading:
            text = text.lstrip(self.separators)
            if not text:
                return
            self._strip_leading = False
        if text:
            out.append(TextDelta(text))

    @abstractmethod
    def _close(self, body: str, final: bool, cut: bool) -> tuple[int, Any] | None:
        """Whether the call in `body` is complete: None (need more text) or (chars used, calls).

        `calls` is a list of ParsedCall, None when unparseable, or _NOT_A_CALL. At `final` it
        must decide.
        """

    def _checker(self, name: str) -> ArgumentChecker | None:
        if name not in self.tools:
            return None
        checker = self._checkers.get(name)
        if checker is None:
            checker = self._checkers[name] = ArgumentChecker(self.tools[name])
        return checker

    def _complete(self, raw: str, calls: Any, out: list[Event]) -> None:
        """Emit a finished call block: valid calls as tool events, otherwise its raw text."""
        if calls is _NOT_A_CALL:
            self._emit_text(self._lead_ws + raw, out)
            self._lead_ws = ""
            return
        good: list[tuple[str, dict]] = []
        problems: list[str] = []
        for call in calls or ():
            checker = self._checker(call.name)
            args = checker.conform(call.arguments) if checker is not None else None
            if args is not None:
                good.append((call.name, args))
            else:
                problems.append(f"{call.name}: " + ("unknown tool" if checker is None else "arguments invalid"))
        if calls is None:
            problems.append("unparseable")
        if problems:
            self.dropped += len(problems)
            log.warning("tool_call_dropped", parser=self.name, reason="; ".join(problems),
                        raw=raw[:_LOG_RAW_CHARS], raw_chars=len(raw))
        if not good:
            self._emit_text(self._lead_ws + raw, out)
            self._lead_ws = ""
            return
        for name, args in good:
            out.append(ToolCallStart(name=name))
            body = _dumps(args)
            for i in range(0, len(body), FRAGMENT_CHARS):
                out.append(ToolCallDelta(body[i:i + FRAGMENT_CHARS]))
            out.append(ToolCallEnd())
        self.emitted += len(good)
        self._lead_ws = ""
        self._strip_leading = True
        self._after_call()

    def _after_call(self) -> None:
        """Hook: state to reset once a call was sent."""

    def _find_end(self, body: str, tag: str) -> int:
        """Incremental search for an end tag in the growing body; -1 while absent."""
        pos = body.find(tag, self._scan_from)
        if pos < 0:
            self._scan_from = max(0, len(body) - len(tag) + 1)
        return pos


def _dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # integers beyond 64 bits
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class PassthroughParser(ToolCallParser):
    """No tool-call parsing: all model text is text (parser name "none")."""

    name = "none"

    def feed(self, text: str) -> list[Event]:
        """The fragment as text."""
        return [TextDelta(text)] if text else []

    def finish(self, *, cut: bool = False) -> list[Event]:
        """Nothing is ever held."""
        return []


class HermesParser(_MarkerParser):
    """Hermes / Qwen2.5 / Qwen3: `<tool_call>\\n{"name": …, "arguments": {…}}\\n</tool_call>`, repeated."""

    name = "hermes"
    starts = ("<tool_call>",)
    END = "</tool_call>"

    def _close(self, body: str, final: bool, cut: bool) -> tuple[int, Any] | None:
        while (end := self._find_end(body, self.END)) >= 0:
            if not _inside_string(body[:end]):
                return end + len(self.END), _json_calls(body[:end], close_open=True)
            self._scan_from = end + 1  # "</tool_call>" written inside an argument string
        if not final:
            return None
        last = body.rfind(self.END)  # the model ended inside what looked like a string
        if last >= 0:
            return last + len(self.END), _json_calls(body[:last], close_open=True)
        return len(body), _json_calls(body, close_open=not cut)


def _inside_string(text: str) -> bool:
    """Whether JSON text ends inside a double-quoted string (single quotes are too ambiguous)."""
    ext, pos = _Extent(), 0
    while (end := ext.end(text, pos)) is not None:
        ext, pos = _Extent(), end
    return ext.quote == '"'


class Qwen3CoderParser(_MarkerParser):
    """Qwen3-Coder XML: `<tool_call><function=NAME><parameter=P>VALUE</parameter></function></tool_call>`,
    each tag on its own line.

    Parameter values are text; they are typed through the tool's schema (a string stays a string,
    so code in a value is never mangled). A bare `<function=…>…</function>` is accepted too.
    """

    name = "qwen3_coder"
    starts: tuple[str, ...] = ("<tool_call>", "<function=")

    def _close(self, body: str, final: bool, cut: bool) -> tuple[int, Any] | None:
        wrapped = self._marker == "<tool_call>"
        tag, prefix = ("</tool_call>", "") if wrapped else ("</function>", self._marker)
        while (end := self._find_end(body, tag)) >= 0:
            inner = body[:end]
            if not _param_open(inner) or inner.rstrip().endswith("</function>"):
                return end + len(tag), self._parse(prefix + inner)
            self._scan_from = end + 1  # that end tag sits inside a parameter value
        if not final:
            return None
        # The model ended inside what looked like a value: the last end tag was the real one.
        last = body.rfind(tag)
        if last >= 0:
            return last + len(tag), self._parse(prefix + body[:last])
        if cut and "</function>" not in body:
            return len(body), None  # max_tokens hit mid-function: a value may be truncated
        return len(body), self._parse(prefix + body)

    def _parse(self, text: str) -> list[ParsedCall] | None:
        if text.lstrip().startswith("{"):  # Hermes JSON inside the XML model's <tool_call>
            return _json_calls(text, close_open=True)
        calls = []
        for name, params in _xml_functions(text) or ():
            calls.append(ParsedCall(name, {k: self._typed(name, k, v) for k, v in params.items()}))
        return calls or None

    def _typed(self, tool: str, param: str, value: str) -> Any:
        """A parameter's text as the value its schema asks for (schema validation comes later)."""
        schema = self.tools.get(tool)
        props = schema.get("properties") if isinstance(schema, dict) else None
        prop = props.get(param) if isinstance(props, dict) else None
        types = _param_types(prop)
        if "string" in types:
            return value
        if value.strip() in ("null", "None"):
            return None
        parsed = parse_lenient(value)
        if parsed is None or (not types and not isinstance(parsed, (dict, list))):
            return value
        return parsed


def _xml_functions(text: str) -> list[tuple[str, dict[str, str]]] | None:
    """`<function=NAME><parameter=P>VALUE</parameter>…</function>` blocks, read front to back.

    A value ends at its `</parameter>` (so `</function>` inside code is content); a model that
    forgot `</parameter>` gets the value cut at the next parameter or the last `</function>`.
    """
    calls, pos = [], 0
    while (start := text.find("<function=", pos)) >= 0:
        gt = text.find(">", start)
        name = text[start + 10:gt].strip() if gt >= 0 else ""
        if not name or "\n" in name:
            return None
        pos, params = gt + 1, {}
        while True:
            p = text.find("<parameter=", pos)
            fend = text.find("</function>", pos)
            if p < 0 or 0 <= fend < p:
                pos = fend + 11 if fend >= 0 else len(text)
                break
            gt = text.find(">", p)
            if gt < 0:
                return None
            vstart = gt + 1
            close = text.find("</parameter>", vstart)
            if close >= 0:
                value, pos = text[vstart:close], close + 12
            else:
                end = text.find("<parameter=", vstart)
                if end < 0:
                    end = text.rfind("</function>")
                if end < vstart:
                    end = len(text)
                value, pos = text[vstart:end], end
            if value.startswith("\n"):
                value = value[1:]
            if value.endswith("\n"):
                value = value[:-1]
            params[text[p + 11:gt].strip()] = value
        calls.append((name, params))
    return calls or None


def _param_open(text: str) -> bool:
    """Whether `text` ends inside a parameter value."""
    return text.rfind("<parameter=") > text.rfind("</parameter>")


def _param_types(prop: Any) -> set[str]:
    if not isinstance(prop, dict):
        return set()
    t = prop.get("type")
    types = {t} if isinstance(t, str) else {x for x in t if isinstance(x, str)} if isinstance(t, list) else set()
    for key in ("anyOf", "oneOf"):
        for branch in prop.get(key) or ():
            types |= _param_types(branch)
    if "enum" in prop and all(isinstance(x, str) for x in prop["enum"]):
        types.add("string")
    return types


_CALL_KEYS = ('"name"', '"type"', '"function"')


class Llama3JsonParser(_MarkerParser):
    """Llama 3.1+: `{"name": …, "parameters": {…}}` (optionally after `<|python_tag|>`), `;`-separated.

    Without the tag, JSON counts as a call only at the very start of the answer (or right after a
    call) and only while it looks like one (`{"name"…`); other JSON text is released as text.
    """

    name = "llama3_json"
    starts = ("<|python_tag|>",)
    separators = _WS + ";"

    def __init__(self, tools: Mapping[str, dict | None] | None = None):
        super().__init__(tools)
        self._trigger += "{"
        self._at_start = True  # nothing but whitespace so far (or only calls)

    def _after_call(self) -> None:
        self._at_start = True

    def _find_start(self, buf: str) -> tuple[int, str] | None:
        if self._at_start:
            rest = buf.lstrip(self.separators)
            if rest.startswith("{"):
                return len(buf) - len(rest), ""
        return super()._find_start(buf)

    def _emit_text(self, text: str, out: list[Event]) -> None:
        before = len(out)
        super()._emit_text(text, out)
        if len(out) > before:
            self._at_start = False

    def _close(self, body: str, final: bool, cut: bool) -> tuple[int, Any] | None:
        start = _match_end(_LEADING_WS, body)  # no copy of a growing body
        if start == len(body):
            return (len(body), None if self._marker else _NOT_A_CALL) if final else None
        if not self._marker and not _looks_like_call(body[start:start + 40]):
            return len(body), _NOT_A_CALL
        end = self._extent.end(body, start)
        if end is None and not final:
            return None
        calls = _json_calls(body[start:end] if end else body[start:], close_open=end is not None or not cut)
        if calls is None and not self._marker:
            return (end or len(body)), _NOT_A_CALL
        return (end or len(body)), calls


def _looks_like_call(text: str) -> bool:
    """Whether JSON text starting with `{` can still be a call object (first key name/type/function)."""
    rest = text[1:].lstrip().replace("'", '"')
    return any(k.startswith(rest[:len(k)]) for k in _CALL_KEYS)


_MISTRAL_HEAD = re.compile(r"\s*([\w.:-]+)\s*(?:\[CALL_ID\]\s*\w+\s*)?\[ARGS\]")
_MISTRAL_PENDING = re.compile(r"\s*[\w.:-]*\s*(?:\[CALL_ID\]\s*\w*\s*)?")


class MistralParser(_MarkerParser):
    """Mistral: `[TOOL_CALLS][{"name": …, "arguments": {…}}, …]` and `[TOOL_CALLS]name[ARGS]{…}`."""

    name = "mistral"
    starts = ("[TOOL_CALLS]",)

    def _close(self, body: str, final: bool, cut: bool) -> tuple[int, Any] | None:
        start = _match_end(_LEADING_WS, body)  # no copy of a growing body
        if start == len(body):
            return (len(body), None) if final else None
        if body[start] == "[":
            end = self._extent.end(body, start)
            if end is None and not final:
                return None
            return (end or len(body)), _json_calls(body[start:end] if end else body[start:],
                                                    close_open=end is not None or not cut)
        head = _MISTRAL_HEAD.match(body)
        if head is None:
            rest = body[_match_end(_MISTRAL_PENDING, body):]
            pending = not rest or any(tag.startswith(rest) for tag in ("[ARGS]", "[CALL_ID]"))
            if pending and not final and len(body) < 256:
                return None
            return len(body), None
        end = self._extent.end(body, head.end())
        if end is None and not final:
            return None
        args = parse_lenient(body[head.end():end] if end else body[head.end():],
                             close_open=end is not None or not cut)
        if not isinstance(args, dict):
            return (end or len(body)), None
        return (end or len(body)), [ParsedCall(head.group(1), args)]


ParserFactory = Callable[[Mapping[str, Any]], ToolCallParser]

# Not mlx_lm.tool_parsers: those parse a finished call and raise on bad JSON (no streaming, repair or
# text fallback), and importing one imports mlx, which remote backends using tool_parser must not need.
PARSERS: dict[str, type[ToolCallParser]] = {
    "hermes": HermesParser, "qwen3_coder": Qwen3CoderParser, "llama3_json": Llama3JsonParser,
    "mistral": MistralParser, "none": PassthroughParser,
}

_BY_MODEL_TYPE = {
    "qwen2": "hermes", "qwen2_moe": "hermes", "qwen3": "hermes", "qwen3_moe": "hermes",
    "qwen3_next": "hermes", "llama": "llama3_json", "mllama": "llama3_json", "mistral": "mistral",
    "mistral3": "mistral", "ministral": "mistral", "mixtral": "mistral",
}


def select_parser(model_type: str | None, chat_template: str | None, override: str | None) -> ParserFactory:
    """The parser class for a model: config override, else chat-template markers, else model_type.

    Call the result with the request's tools (name → input_schema) for one response's parser.
    Raises ValueError for an unknown override name.
    """
    if override and override.strip().lower() != "auto":  # auto: detected as when absent
        key = override.strip().lower().replace("-", "_")
        if key not in PARSERS:
            raise ValueError(f"unknown tool parser {override!r}; expected one of: {', '.join(PARSERS)}")
        return PARSERS[key]
    # mlx-lm's tokenizer guesses too (a private helper over its own parser set): not usable without mlx.
    t = chat_template or ""
    if "<tool_call>" in t and "<function=" in t:
        return Qwen3CoderParser
    if "<tool_call>" in t:
        return HermesParser
    if "[TOOL_CALLS]" in t:
        return MistralParser
    if "<|python_tag|>" in t or "<|start_header_id|>" in t:
        return Llama3JsonParser
    return PARSERS[_BY_MODEL_TYPE.get((model_type or "").lower(), "none")]


class ModelOutputParser:
    """Raw model text → events: `<think>` split first, then tool calls in the visible text."""

    def __init__(self, tools: ToolCallParser, *, start_in_thinking: bool = False):
        self.tools = tools
        self.think = ThinkTagParser(start_in_thinking=start_in_thinking)

    def feed(self, text: str) -> list[Event]:
        """Events for one detokenized fragment."""
        return self._route(self.think.feed(text))

    def finish(self, *, cut: bool = False) -> list[Event]:
        """Events for everything still held at the end of generation (see ToolCallParser.finish)."""
        out = self._route(self.think.flush())
        out.extend(self.tools.finish(cut=cut))
        return out

    def _route(self, events: list[TextDelta | ThinkingDelta]) -> list[Event]:
        out: list[Event] = []
        for ev in events:
            if type(ev) is TextDelta:
                out.extend(self.tools.feed(ev.text))
            else:
                out.append(ev)
        return out
