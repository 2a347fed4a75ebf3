"""Anthropic Messages protocol types and request validation.

`parse_messages_request` turns a decoded JSON body into typed dataclasses, or raises a 400
`GatewayError` naming the offending field. Unknown top-level fields are ignored on purpose:
Claude Code adds new ones with every release. Unknown content block types are tolerated the
same way: passed on as text when they carry text, dropped otherwise, and named in
`MessagesRequest.unknown_blocks` so the gateway can log them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Union

from gateway.protocol.errors import invalid
from gateway.protocol.validate import expect, is_int, number

Role = Literal["user", "assistant", "system"]
StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "model_context_window_exceeded"]


@dataclass(slots=True)
class TextBlock:
    text: str
    type: Literal["text"] = "text"


@dataclass(slots=True)
class ImageBlock:
    media_type: str | None
    data: str | None = None  # base64, for source.type == "base64"
    url: str | None = None  # for source.type == "url"
    type: Literal["image"] = "image"


@dataclass(slots=True)
class ToolUseBlock:
    id: str
    name: str
    input: Any
    type: Literal["tool_use"] = "tool_use"


@dataclass(slots=True)
class ToolReferenceBlock:
    """A tool search result: loads the deferred tool `tool_name` from here on."""

    tool_name: str
    # Set by gateway.tool_search: the tool is one of `tools`; the deferred tool this reference loaded.
    available: bool = False
    loads: Tool | None = None
    type: Literal["tool_reference"] = "tool_reference"


@dataclass(slots=True)
class ToolResultBlock:
    tool_use_id: str
    content: list[TextBlock | ImageBlock | ToolReferenceBlock]
    is_error: bool = False
    type: Literal["tool_result"] = "tool_result"


@dataclass(slots=True)
class ThinkingBlock:
    thinking: str
    signature: str = ""
    redacted: bool = False
    type: Literal["thinking"] = "thinking"


@dataclass(slots=True)
class ToolChangeBlock:
    """tool_addition / tool_removal in a system message: the tool set changes from this point on."""

    change: Literal["addition", "removal"]
    name: str
    definition: Tool | None = None  # addition with a full definition (else: one of `tools`)
    type: Literal["tool_change"] = "tool_change"


ContentBlock = Union[TextBlock, ImageBlock, ToolUseBlock, ToolResultBlock, ThinkingBlock, ToolChangeBlock]


@dataclass(slots=True)
class Message:
    role: Role
    content: list[ContentBlock]


@dataclass(slots=True)
class Tool:
    name: str
    description: str
    input_schema: dict
    defer_loading: bool = False  # sent to the model only once a tool_reference loads it


@dataclass(slots=True)
class ToolChoice:
    type: Literal["auto", "any", "none", "tool"]
    name: str | None = None
    disable_parallel_tool_use: bool = False


@dataclass(slots=True)
class Thinking:
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = None
    display: str | None = None  # "omitted": thinking blocks carry only a signature

    @property
    def enabled(self) -> bool:
        return self.type != "disabled"


@dataclass(slots=True)
class ClearThinkingEdit:
    """clear_thinking_20251015: keep the thinking of the last `keep_turns` assistant turns (None: all)."""

    keep_turns: int | None = 1
    type: Literal["clear_thinking_20251015"] = "clear_thinking_20251015"


@dataclass(slots=True)
class ClearToolUsesEdit:
    """clear_tool_uses_20250919: past the trigger, older tool results become a placeholder."""

    trigger_type: Literal["input_tokens", "tool_uses"] = "input_tokens"
    trigger_value: int = 100_000
    keep: int = 3
    clear_at_least: int = 0
    exclude_tools: tuple[str, ...] = ()
    clear_tool_inputs: bool | tuple[str, ...] = False
    type: Literal["clear_tool_uses_20250919"] = "clear_tool_uses_20250919"


ContextEdit = ClearThinkingEdit | ClearToolUsesEdit


@dataclass(slots=True)
class MessagesRequest:
    """A validated /v1/messages (or count_tokens) body."""

    model: str
    messages: list[Message]
    max_tokens: int | None = None
    system: list[TextBlock] = field(default_factory=list)
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    stop_sequences: list[str] = field(default_factory=list)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stream: bool = False
    thinking: Thinking | None = None
    effort: str | None = None
    json_schema: dict | None = None  # output_config.format json_schema → schema
    metadata_user_id: str | None = None
    context_edits: list[ContextEdit] | None = None  # context_management.edits; None when absent
    unknown_blocks: list[str] = field(default_factory=list)  # "type@where" of tolerated unknown blocks

    @property
    def thinking_enabled(self) -> bool:
        return self.thinking is not None and self.thinking.enabled


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0

    def to_dict(self) -> dict:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
        }


# Block types Claude Code knows that carry text for the model (connector text between thinking, a
# system note inside the conversation): passed on as text, like a text block.
_TEXT_LIKE = ("connector_text", "mid_conv_system")

# Content blocks produced by Anthropic-hosted server tools. They mean nothing to a local model
# and are dropped from history instead of failing the whole request.
_SERVER_BLOCK_SUFFIXES = ("_tool_result", "server_tool_use", "mcp_tool_use")


def _text_blocks(value: Any, where: str) -> list[TextBlock]:
    """A string or a list of text blocks (system prompt, tool_result content)."""
    if isinstance(value, str):
        return [TextBlock(value)]
    expect(isinstance(value, list), f"{where}: expected a string or a list of text blocks")
    out = []
    for i, block in enumerate(value):
        expect(isinstance(block, dict), f"{where}.{i}: expected an object")
        expect(block.get("type") == "text", f"{where}.{i}.type: expected 'text'")
        text = block.get("text")
        expect(isinstance(text, str), f"{where}.{i}.text: expected a string")
        out.append(TextBlock(text))
    return out


def _system(value: Any, seen: dict[str, None]) -> list[TextBlock]:
    """The system prompt: a string or text blocks; other block types are tolerated as in messages."""
    if not isinstance(value, list) or all(isinstance(b, dict) and b.get("type") == "text" for b in value):
        return _text_blocks(value, "system")
    out: list[TextBlock] = []
    for i, block in enumerate(value):
        expect(isinstance(block, dict), f"system.{i}: expected an object")
        if block.get("type") != "text":
            out.extend(_tolerated(block, "system", seen))
            continue
        text = block.get("text")
        expect(isinstance(text, str), f"system.{i}.text: expected a string")
        out.append(TextBlock(text))
    return out


def _image(block: dict, where: str) -> ImageBlock:
    source = block.get("source")
    if not isinstance(source, dict):
        raise invalid(f"{where}.source: expected an object")
    kind = source.get("type")
    if kind == "base64":
        data = source.get("data")
        expect(isinstance(data, str), f"{where}.source.data: expected a base64 string")
        media = source.get("media_type")
        expect(isinstance(media, str), f"{where}.source.media_type: expected a string")
        return ImageBlock(media_type=media, data=data)
    if kind == "url":
        url = source.get("url")
        expect(isinstance(url, str), f"{where}.source.url: expected a string")
        return ImageBlock(media_type=None, url=url)
    raise invalid(f"{where}.source.type: expected 'base64' or 'url'")


def _tool_result_content(value: Any, where: str, seen: dict[str, None]) -> list[TextBlock | ImageBlock | ToolReferenceBlock]:
    if value is None:
        return []
    if isinstance(value, str):
        return [TextBlock(value)]
    expect(isinstance(value, list), f"{where}: expected a string or a list of blocks")
    out: list[TextBlock | ImageBlock | ToolReferenceBlock] = []
    for i, block in enumerate(value):
        expect(isinstance(block, dict), f"{where}.{i}: expected an object")
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            expect(isinstance(text, str), f"{where}.{i}.text: expected a string")
            out.append(TextBlock(text))
        elif kind == "image":
            out.append(_image(block, f"{where}.{i}"))
        elif kind == "document":
            out.extend(_document(block, f"{where}.{i}"))
        elif kind == "tool_reference":
            out.append(_tool_reference(block, f"{where}.{i}"))
        else:
            out.extend(_tolerated(block, "tool_result.content", seen))
    return out


def _tool_reference(block: dict, where: str) -> ToolReferenceBlock:
    name = block.get("tool_name")
    if not isinstance(name, str) or name == "":
        raise invalid(f"{where}.tool_name: expected a non-empty string")
    return ToolReferenceBlock(name)


def _tool_change(block: dict, where: str) -> ToolChangeBlock:
    """tool_addition {tool: tool_reference | tool_definition} or tool_removal {tool: tool_reference}."""
    change: Literal["addition", "removal"] = "addition" if block.get("type") == "tool_addition" else "removal"
    tool = block.get("tool")
    if not isinstance(tool, dict):
        raise invalid(f"{where}.tool: expected an object")
    if tool.get("type") == "tool_definition" and change == "addition":
        # One definition in, at most one tool out: none when it is a schema-less server tool.
        definitions = _tools([tool.get("definition")], f"{where}.tool.definition")
        if not definitions:
            raise invalid(f"{where}.tool.definition: expected a tool with an input_schema")
        definition = definitions[0]
        return ToolChangeBlock(change, definition.name, definition)
    expect(tool.get("type") == "tool_reference", f"{where}.tool.type: expected 'tool_reference'"
            + (" or 'tool_definition'" if change == "addition" else ""))
    name = tool.get("name", tool.get("tool_name"))
    if not isinstance(name, str) or name == "":
        raise invalid(f"{where}.tool.name: expected a non-empty string")
    return ToolChangeBlock(change, name)


def _text_of(value: Any) -> str | None:
    """The text a block field carries: a string, or the texts of a list of text blocks."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = [t for b in value if isinstance(b, dict) and isinstance(t := b.get("text"), str)]
        return "\n".join(texts) if texts else None
    return None


def _tolerated(block: dict, where: str, seen: dict[str, None]) -> list[TextBlock]:
    """A block type this gateway does not know: its text when it carries some, else nothing.

    Claude Code adds block types every few weeks; failing the request would end the session.
    The type and place go into `seen`, so the gateway logs each one.
    """
    _note_unknown(seen, block.get("type"), where)
    return _carried_text(block)


_MAX_UNKNOWN = 32  # distinct type@where labels kept per request (they go on its log line)


def _note_unknown(seen: dict[str, None], kind: Any, where: str) -> None:
    name = kind[:64] if isinstance(kind, str) else type(kind).__name__
    if len(seen) < _MAX_UNKNOWN:
        seen.setdefault(f"{name}@{where}", None)


def _carried_text(block: dict) -> list[TextBlock]:
    """The text a block carries in `text`, `content` or a `…text` field; nothing when it has none."""
    keys = ["text", "content"] + [k for k in block if isinstance(k, str) and k.endswith("text") and k != "text"]
    for key in keys:
        text = _text_of(block.get(key))
        if text:
            return [TextBlock(text)]
    return []


def _document(block: dict, where: str) -> list[TextBlock]:
    """Plain-text documents become text; other document kinds need a model that reads them."""
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "text" and isinstance(source.get("data"), str):
        return [TextBlock(source["data"])]
    if isinstance(source, dict) and source.get("type") == "content":
        return _text_blocks(source.get("content"), f"{where}.source.content")
    raise invalid(f"{where}: only text documents are supported by this gateway's backends")


def _content(value: Any, where: str, role: str, seen: dict[str, None]) -> list[ContentBlock]:
    if isinstance(value, str):
        return [TextBlock(value)]
    expect(isinstance(value, list), f"{where}: expected a string or a list of content blocks")
    out: list[ContentBlock] = []
    for i, block in enumerate(value):
        at = f"{where}.{i}"
        expect(isinstance(block, dict), f"{at}: expected an object")
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            expect(isinstance(text, str), f"{at}.text: expected a string")
            out.append(TextBlock(text))
        elif kind == "image":
            out.append(_image(block, at))
        elif kind == "tool_use":
            tid, name = block.get("id"), block.get("name")
            expect(isinstance(tid, str) and tid != "", f"{at}.id: tool_use requires a non-empty string id")
            expect(isinstance(name, str) and name != "", f"{at}.name: tool_use requires a non-empty string name")
            expect("input" in block, f"{at}.input: field required")
            expect(isinstance(block["input"], dict), f"{at}.input: expected an object")
            out.append(ToolUseBlock(tid, name, block["input"]))
        elif kind == "tool_result":
            tid = block.get("tool_use_id")
            expect(isinstance(tid, str) and tid != "",
                    f"{at}.tool_use_id: tool_result requires a non-empty string tool_use_id")
            out.append(ToolResultBlock(tid, _tool_result_content(block.get("content"), f"{at}.content", seen),
                                       bool(block.get("is_error", False))))
        elif kind == "thinking":
            expect("thinking" in block, f"{at}.thinking: field required")
            thinking = block["thinking"]
            expect(isinstance(thinking, str), f"{at}.thinking: expected a string")
            signature = block.get("signature", "")
            out.append(ThinkingBlock(thinking, signature if isinstance(signature, str) else ""))
        elif kind == "redacted_thinking":
            expect("data" in block, f"{at}.data: field required")
            expect(isinstance(block["data"], str), f"{at}.data: expected a string")
            out.append(ThinkingBlock("", block["data"], redacted=True))
        elif kind == "document":
            out.extend(_document(block, at))
        elif kind in ("tool_addition", "tool_removal"):
            out.append(_tool_change(block, at))
        elif kind in _TEXT_LIKE:
            out.extend(_carried_text(block))
        elif isinstance(kind, str) and kind.endswith(_SERVER_BLOCK_SUFFIXES):
            continue
        else:
            out.extend(_tolerated(block, f"{role}.content", seen))
    return out


def _messages(value: Any, seen: dict[str, None]) -> list[Message]:
    expect(value is not None, "messages: field required")
    expect(isinstance(value, list), "messages: expected a list")
    expect(len(value) > 0, "messages: at least one message is required")
    out = []
    for i, msg in enumerate(value):
        expect(isinstance(msg, dict), f"messages.{i}: expected an object")
        role = msg.get("role")
        expect(role in ("user", "assistant", "system"),
                f"messages.{i}.role: expected 'user', 'assistant' or 'system', got {role!r}")
        expect("content" in msg, f"messages.{i}.content: field required")
        out.append(Message(role, _content(msg["content"], f"messages.{i}.content", role, seen)))
    return out


def _tools(value: Any, where: str = "tools") -> list[Tool]:
    if value is None:
        return []
    expect(isinstance(value, list), f"{where}: expected a list")
    out = []
    for i, tool in enumerate(value):
        at = f"{where}.{i}" if where == "tools" else where
        expect(isinstance(tool, dict), f"{at}: expected an object")
        name = tool.get("name")
        expect(isinstance(name, str) and name != "", f"{at}.name: expected a non-empty string")
        schema = tool.get("input_schema")
        if schema is None and tool.get("type") not in (None, "custom"):
            # Anthropic-hosted server tools (web_search_2025…) have no schema; a local model
            # cannot run them, so they are left out rather than failing the request.
            continue
        expect(isinstance(schema, dict), f"{at}.input_schema: expected an object")
        description = tool.get("description") or ""
        expect(isinstance(description, str), f"{at}.description: expected a string")
        out.append(Tool(name, description, schema, tool.get("defer_loading") is True))
    return out


def _tool_choice(value: Any) -> ToolChoice | None:
    if value is None:
        return None
    expect(isinstance(value, dict), "tool_choice: expected an object")
    kind = value.get("type")
    expect(kind in ("auto", "any", "none", "tool"), "tool_choice.type: expected auto, any, none or tool")
    name = value.get("name")
    if kind == "tool":
        expect(isinstance(name, str) and name != "", "tool_choice.name: required when type is 'tool'")
    return ToolChoice(kind, name, bool(value.get("disable_parallel_tool_use", False)))


def _thinking(value: Any, max_tokens: int | None) -> Thinking | None:
    if value is None:
        return None
    expect(isinstance(value, dict), "thinking: expected an object")
    kind = value.get("type")
    expect(kind in ("enabled", "disabled", "adaptive"), "thinking.type: expected enabled, disabled or adaptive")
    budget = value.get("budget_tokens")
    if kind == "enabled":
        expect(is_int(budget), "thinking.budget_tokens: required (an integer) when thinking is enabled")
        expect(budget >= 1024, "thinking.budget_tokens: must be ≥ 1024")
        if max_tokens is not None:
            expect(budget < max_tokens, "thinking.budget_tokens: must be less than max_tokens")
    display = value.get("display")
    expect(display is None or isinstance(display, str), "thinking.display: expected a string")
    return Thinking(kind, budget if is_int(budget) else None, display)


def _output_schema(body: dict) -> tuple[dict | None, str | None]:
    cfg = body.get("output_config")
    if cfg is None:
        return None, None
    expect(isinstance(cfg, dict), "output_config: expected an object")
    effort = cfg.get("effort") if isinstance(cfg.get("effort"), str) else None
    fmt = cfg.get("format")
    if fmt is None:
        return None, effort
    expect(isinstance(fmt, dict), "output_config.format: expected an object")
    expect(fmt.get("type") == "json_schema", "output_config.format.type: expected 'json_schema'")
    schema = fmt.get("schema")
    expect(isinstance(schema, dict), "output_config.format.schema: expected an object")
    return schema, effort


def _context_management(value: Any, seen: dict[str, None]) -> list[ContextEdit] | None:
    """context_management.edits: the two strategies the API has; other edit types are tolerated."""
    if value is None:
        return None
    expect(isinstance(value, dict), "context_management: expected an object")
    edits = value.get("edits", [])
    expect(isinstance(edits, list), "context_management.edits: expected a list")
    out: list[ContextEdit] = []
    for i, edit in enumerate(edits):
        at = f"context_management.edits.{i}"
        expect(isinstance(edit, dict), f"{at}: expected an object")
        kind = edit.get("type")
        if kind == "clear_thinking_20251015":
            out.append(_clear_thinking(edit, at))
        elif kind == "clear_tool_uses_20250919":
            out.append(_clear_tool_uses(edit, at))
        else:
            _note_unknown(seen, kind, "context_management.edits")
    return out


def _count(value: Any, at: str, unit: str) -> int:
    """{type: unit, value: n} → n."""
    expect(isinstance(value, dict) and value.get("type") == unit, f"{at}: expected {{type: '{unit}', value: n}}")
    n = value.get("value")
    expect(is_int(n) and n >= 0, f"{at}.value: expected a non-negative integer")
    return n


def _clear_thinking(edit: dict, at: str) -> ClearThinkingEdit:
    keep = edit.get("keep")
    if keep is None:
        return ClearThinkingEdit()
    if keep == "all":
        return ClearThinkingEdit(None)
    return ClearThinkingEdit(_count(keep, f"{at}.keep", "thinking_turns"))


def _clear_tool_uses(edit: dict, at: str) -> ClearToolUsesEdit:
    out = ClearToolUsesEdit()
    trigger = edit.get("trigger")
    if trigger is not None:
        expect(isinstance(trigger, dict) and trigger.get("type") in ("input_tokens", "tool_uses"),
                f"{at}.trigger.type: expected 'input_tokens' or 'tool_uses'")
        out.trigger_type, out.trigger_value = trigger["type"], _count(trigger, f"{at}.trigger", trigger["type"])
    if edit.get("keep") is not None:
        out.keep = _count(edit["keep"], f"{at}.keep", "tool_uses")
    if edit.get("clear_at_least") is not None:
        out.clear_at_least = _count(edit["clear_at_least"], f"{at}.clear_at_least", "input_tokens")
    exclude = edit.get("exclude_tools")
    if exclude is not None:
        expect(isinstance(exclude, list) and all(isinstance(n, str) for n in exclude),
                f"{at}.exclude_tools: expected a list of tool names")
        out.exclude_tools = tuple(exclude)
    inputs = edit.get("clear_tool_inputs")
    if inputs is not None:
        expect(isinstance(inputs, bool) or (isinstance(inputs, list) and all(isinstance(n, str) for n in inputs)),
                f"{at}.clear_tool_inputs: expected a boolean or a list of tool names")
        out.clear_tool_inputs = inputs if isinstance(inputs, bool) else tuple(inputs)
    return out


def _stop_sequences(value: Any) -> list[str]:
    if value is None:
        return []
    expect(isinstance(value, list) and all(isinstance(s, str) for s in value),
            "stop_sequences: expected a list of strings")
    return [s for s in value if s]


def parse_messages_request(body: Any, *, count_only: bool = False) -> MessagesRequest:
    """Validate a /v1/messages body (or a count_tokens body when `count_only`)."""
    expect(isinstance(body, dict), "request body: expected a JSON object")
    model = body.get("model")
    expect(model is not None, "model: field required")
    expect(isinstance(model, str) and model != "", "model: expected a non-empty string")

    max_tokens = body.get("max_tokens")
    if count_only:
        max_tokens = max_tokens if is_int(max_tokens) and max_tokens > 0 else None
    else:
        expect(max_tokens is not None, "max_tokens: field required")
        expect(is_int(max_tokens), "max_tokens: expected an integer")
        expect(max_tokens >= 1, "max_tokens: must be at least 1")

    seen: dict[str, None] = {}  # an ordered set
    messages = _messages(body.get("messages"), seen)
    system = _system(body["system"], seen) if body.get("system") is not None else []
    top_k = body.get("top_k")
    expect(top_k is None or (is_int(top_k) and top_k >= 0), "top_k: expected a non-negative integer")
    stream = body.get("stream", False)
    expect(isinstance(stream, bool), "stream: expected a boolean")
    schema, effort = _output_schema(body)
    metadata = body.get("metadata")
    user_id = metadata.get("user_id") if isinstance(metadata, dict) else None

    return MessagesRequest(
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        system=system,
        tools=_tools(body.get("tools")),
        tool_choice=_tool_choice(body.get("tool_choice")),
        stop_sequences=_stop_sequences(body.get("stop_sequences")),
        temperature=number(body, "temperature", 0.0, 2.0),
        top_p=number(body, "top_p", 0.0, 1.0),
        top_k=top_k,
        stream=stream and not count_only,
        thinking=_thinking(body.get("thinking"), max_tokens if not count_only else None),
        effort=effort,
        json_schema=schema,
        metadata_user_id=user_id if isinstance(user_id, str) else None,
        context_edits=_context_management(body.get("context_management"), seen),
        unknown_blocks=list(seen),
    )
