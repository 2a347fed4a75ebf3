"""OpenAI Chat Completions request types, validation, and the conversion to the internal request.

`parse_chat_request` turns a decoded /v1/chat/completions body into a typed `ChatRequest` or
raises a 400 naming the field; `to_messages_request` maps it onto the gateway's internal request
(gateway.protocol.anthropic types), which every backend answers. Fields the gateway does not model
(`logit_bias`, `presence_penalty`, `user`, vendor extras) are not validated here: they reach
OpenAI-style upstreams untouched (backends.openai_passthrough) and mean nothing to the others.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from gateway.protocol.anthropic import (
    ContentBlock,
    ImageBlock,
    Message,
    MessagesRequest,
    TextBlock,
    Thinking,
    ThinkingBlock,
    Tool,
    ToolChoice,
    ToolResultBlock,
    ToolUseBlock,
)
from gateway.protocol.errors import invalid
from gateway.protocol.validate import expect, is_int, number

ChatRole = Literal["system", "developer", "user", "assistant", "tool"]
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
# The schema-less response_format json_object asks for: any JSON object.
JSON_OBJECT_SCHEMA: dict = {"type": "object"}


@dataclass(slots=True)
class ChatToolCall:
    id: str
    name: str
    arguments: Any  # the decoded `function.arguments` JSON


@dataclass(slots=True)
class ChatMessage:
    role: ChatRole
    content: list[TextBlock | ImageBlock] = field(default_factory=list)
    tool_calls: list[ChatToolCall] = field(default_factory=list)  # assistant
    tool_call_id: str | None = None  # tool
    reasoning_content: str | None = None  # assistant: earlier reasoning, as this gateway returns it


@dataclass(slots=True)
class ChatRequest:
    """A validated /v1/chat/completions body."""

    model: str
    messages: list[ChatMessage]
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage
    max_tokens: int | None = None  # max_completion_tokens, else the older max_tokens
    stop: list[str] = field(default_factory=list)
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_schema: dict | None = None  # response_format json_schema / json_object
    reasoning_effort: str | None = None


def _image(part: dict, at: str) -> ImageBlock:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or url == "":
        raise invalid(f"{at}.image_url.url: expected a URL string")
    if url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        expect(sep == "," and header.endswith(";base64"), f"{at}.image_url.url: expected a base64 data URL")
        return ImageBlock(media_type=header[:-7] or None, data=data)
    return ImageBlock(media_type=None, url=url)


def _content(value: Any, at: str, images: bool) -> list[TextBlock | ImageBlock]:
    """A message's content: a string or content parts (text; image_url where `images`)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [TextBlock(value)]
    expect(isinstance(value, list), f"{at}: expected a string or a list of content parts")
    out: list[TextBlock | ImageBlock] = []
    for i, part in enumerate(value):
        expect(isinstance(part, dict), f"{at}.{i}: expected an object")
        kind = part.get("type")
        if kind == "text" or (kind == "refusal" and not images):
            text = part.get(kind)
            expect(isinstance(text, str), f"{at}.{i}.{kind}: expected a string")
            out.append(TextBlock(text))
        elif kind == "image_url" and images:
            out.append(_image(part, f"{at}.{i}"))
        else:
            raise invalid(f"{at}.{i}.type: content part {kind!r} is not supported here")
    return out


def _tool_calls(value: Any, at: str) -> list[ChatToolCall]:
    if value is None:
        return []
    expect(isinstance(value, list), f"{at}: expected a list")
    out = []
    for i, call in enumerate(value):
        where = f"{at}.{i}"
        expect(isinstance(call, dict), f"{where}: expected an object")
        cid = call.get("id")
        expect(isinstance(cid, str) and cid != "", f"{where}.id: expected a non-empty string")
        fn = call.get("function")
        expect(isinstance(fn, dict), f"{where}.function: expected an object")
        name = fn.get("name")
        expect(isinstance(name, str) and name != "", f"{where}.function.name: expected a non-empty string")
        raw = fn.get("arguments", "")
        expect(isinstance(raw, str), f"{where}.function.arguments: expected a JSON string")
        try:
            arguments = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError:
            raise invalid(f"{where}.function.arguments: not valid JSON") from None
        out.append(ChatToolCall(cid, name, arguments))
    return out


def _message(msg: Any, at: str) -> ChatMessage:
    expect(isinstance(msg, dict), f"{at}: expected an object")
    role = msg.get("role")
    expect(role in ("system", "developer", "user", "assistant", "tool"),
            f"{at}.role: expected 'system', 'developer', 'user', 'assistant' or 'tool', got {role!r}")
    content = msg.get("content")
    if role == "assistant":
        out = ChatMessage(role, _content(content, f"{at}.content", images=False),
                          tool_calls=_tool_calls(msg.get("tool_calls"), f"{at}.tool_calls"))
        reasoning = msg.get("reasoning_content")
        expect(reasoning is None or isinstance(reasoning, str), f"{at}.reasoning_content: expected a string")
        out.reasoning_content = reasoning or None
        return out
    expect(content is not None, f"{at}.content: field required")
    if role == "tool":
        tid = msg.get("tool_call_id")
        expect(isinstance(tid, str) and tid != "", f"{at}.tool_call_id: expected a non-empty string")
        return ChatMessage(role, _content(content, f"{at}.content", images=False), tool_call_id=tid)
    return ChatMessage(role, _content(content, f"{at}.content", images=role == "user"))


def _tools(value: Any) -> list[Tool]:
    if value is None:
        return []
    expect(isinstance(value, list), "tools: expected a list")
    out = []
    for i, tool in enumerate(value):
        at = f"tools.{i}"
        expect(isinstance(tool, dict), f"{at}: expected an object")
        expect(tool.get("type", "function") == "function", f"{at}.type: only 'function' tools are supported")
        fn = tool.get("function")
        expect(isinstance(fn, dict), f"{at}.function: expected an object")
        name = fn.get("name")
        expect(isinstance(name, str) and name != "", f"{at}.function.name: expected a non-empty string")
        description = fn.get("description") or ""
        expect(isinstance(description, str), f"{at}.function.description: expected a string")
        params = fn.get("parameters")
        if params is None:  # OpenAI: omitted parameters mean a function without arguments
            params = {"type": "object", "properties": {}}
        expect(isinstance(params, dict), f"{at}.function.parameters: expected a JSON schema object")
        out.append(Tool(name, description, params))
    return out


# OpenAI's tool_choice strings → Anthropic's ToolChoice types.
_TOOL_CHOICES: dict[str, Literal["none", "auto", "any"]] = {"none": "none", "auto": "auto", "required": "any"}


def _tool_choice(value: Any, names: list[str]) -> ToolChoice | None:
    if value is None:
        return None
    if isinstance(value, str):
        expect(value != "required" or bool(names), "tool_choice: 'required' needs at least one of `tools`")
        expect(value in ("none", "auto", "required"), "tool_choice: expected 'none', 'auto', 'required' or "
                                                      "{type: 'function', function: {name}}")
        return ToolChoice(_TOOL_CHOICES[value])
    expect(isinstance(value, dict) and value.get("type") == "function",
            "tool_choice: expected 'none', 'auto', 'required' or {type: 'function', function: {name}}")
    fn = value.get("function")
    name = fn.get("name") if isinstance(fn, dict) else None
    expect(isinstance(name, str) and name != "", "tool_choice.function.name: expected a non-empty string")
    expect(name in names, f"tool_choice.function.name: '{name}' is not one of `tools`")
    return ToolChoice("tool", name)


def _response_schema(value: Any) -> dict | None:
    if value is None:
        return None
    expect(isinstance(value, dict), "response_format: expected an object")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return JSON_OBJECT_SCHEMA
    expect(kind == "json_schema", "response_format.type: expected 'text', 'json_object' or 'json_schema'")
    spec = value.get("json_schema")
    expect(isinstance(spec, dict), "response_format.json_schema: expected an object")
    schema = spec.get("schema", {})
    expect(isinstance(schema, dict), "response_format.json_schema.schema: expected a JSON schema object")
    return schema


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    expect(isinstance(value, list) and all(isinstance(s, str) for s in value),
            "stop: expected a string or a list of strings")
    return [s for s in value if s]


def _max_tokens(body: dict) -> int | None:
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = body.get(key)
    if value is None:
        return None
    expect(is_int(value) and value >= 1, f"{key}: expected an integer ≥ 1")
    return value


def parse_chat_request(body: Any) -> ChatRequest:
    """Validate a /v1/chat/completions body."""
    expect(isinstance(body, dict), "request body: expected a JSON object")
    model = body.get("model")
    expect(isinstance(model, str) and model != "", "model: expected a non-empty string")
    messages = body.get("messages")
    expect(isinstance(messages, list) and len(messages) > 0, "messages: expected a non-empty list")
    expect(body.get("functions") is None and body.get("function_call") is None,
            "functions: the legacy functions / function_call are not supported; send tools / tool_choice")
    n = body.get("n")
    expect(n is None or n == 1, "n: only 1 choice per request is supported")
    expect(not body.get("logprobs") and body.get("top_logprobs") is None,
            "logprobs: not supported by this gateway")
    stream = body.get("stream", False)
    expect(isinstance(stream, bool), "stream: expected a boolean")
    options = body.get("stream_options")
    expect(options is None or isinstance(options, dict), "stream_options: expected an object")
    seed = body.get("seed")
    expect(seed is None or is_int(seed), "seed: expected an integer")
    parallel = body.get("parallel_tool_calls")
    expect(parallel is None or isinstance(parallel, bool), "parallel_tool_calls: expected a boolean")
    effort = body.get("reasoning_effort")
    expect(effort is None or effort in REASONING_EFFORTS,
            f"reasoning_effort: expected one of {', '.join(REASONING_EFFORTS)}")
    tools = _tools(body.get("tools"))
    return ChatRequest(
        model=model,
        messages=[_message(m, f"messages.{i}") for i, m in enumerate(messages)],
        stream=stream,
        include_usage=bool((options or {}).get("include_usage")),
        max_tokens=_max_tokens(body),
        stop=_stop(body.get("stop")),
        temperature=number(body, "temperature", 0.0, 2.0),
        top_p=number(body, "top_p", 0.0, 1.0),
        seed=seed,
        tools=tools,
        tool_choice=_tool_choice(body.get("tool_choice"), [t.name for t in tools]),
        parallel_tool_calls=parallel,
        response_schema=_response_schema(body.get("response_format")),
        reasoning_effort=effort,
    )


def _thinking(effort: str | None) -> Thinking | None:
    """reasoning_effort → the template's thinking switch: none/minimal turn it off, a level turns
    it on; absent, the backend's default applies."""
    if effort is None:
        return None
    return Thinking("disabled") if effort in ("none", "minimal") else Thinking("enabled")


def _assistant(msg: ChatMessage) -> Message:
    blocks: list[ContentBlock] = []
    if msg.reasoning_content:
        blocks.append(ThinkingBlock(msg.reasoning_content))
    blocks.extend(msg.content)
    blocks.extend(ToolUseBlock(c.id, c.name, c.arguments) for c in msg.tool_calls)
    return Message("assistant", blocks)


def to_messages_request(chat: ChatRequest) -> MessagesRequest:
    """The internal request: leading system/developer messages become `system`, consecutive tool
    messages one user turn of tool results (the shape every backend already renders)."""
    system: list[TextBlock] = []
    messages: list[Message] = []
    for msg in chat.messages:
        if msg.role in ("system", "developer"):
            texts = [b for b in msg.content if type(b) is TextBlock]
            if messages:
                messages.append(Message("system", list(texts)))
            else:
                system.extend(texts)
        elif msg.role == "tool":
            result = ToolResultBlock(msg.tool_call_id or "", list(msg.content))
            last = messages[-1] if messages else None
            if last is not None and last.role == "user" and all(type(b) is ToolResultBlock for b in last.content):
                last.content.append(result)
            else:
                messages.append(Message("user", [result]))
        elif msg.role == "assistant":
            messages.append(_assistant(msg))
        else:
            messages.append(Message("user", list(msg.content)))
    if not messages:  # only system messages: the model still needs a turn to answer
        messages.append(Message("user", [TextBlock("")]))
    tool_choice = chat.tool_choice
    if chat.parallel_tool_calls is False:
        tool_choice = ToolChoice(tool_choice.type if tool_choice else "auto",
                                 tool_choice.name if tool_choice else None, disable_parallel_tool_use=True)
    return MessagesRequest(
        model=chat.model, messages=messages, max_tokens=chat.max_tokens, system=system, tools=chat.tools,
        tool_choice=tool_choice, stop_sequences=chat.stop, temperature=chat.temperature, top_p=chat.top_p,
        stream=chat.stream, thinking=_thinking(chat.reasoning_effort),
        effort=chat.reasoning_effort if chat.reasoning_effort in ("low", "medium", "high", "xhigh") else None,
        json_schema=chat.response_schema,
    )
