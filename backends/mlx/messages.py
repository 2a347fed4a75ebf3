"""A typed request → the messages and tools a Hugging Face chat template renders.

The shape is the one HF templates expect (system / user / assistant with `tool_calls` / tool),
built straight from the request's blocks: tool-call arguments stay objects (templates `tojson`
them), thinking is left out (templates drop earlier turns' thinking anyway), images are refused,
and a tool a tool_reference loaded is written where the reference is, not in the tool list.
"""
from __future__ import annotations

import orjson

from backends.translate import place_system_messages
from gateway.protocol.anthropic import (
    ImageBlock,
    Message,
    MessagesRequest,
    TextBlock,
    ToolReferenceBlock,
    ToolResultBlock,
    ToolUseBlock,
)
from gateway.protocol.backend_config import images_hint
from gateway.protocol.errors import invalid
from gateway.protocol.tool_text import loaded_text


def chat_messages(req: MessagesRequest, model: str, system_messages: str = "auto") -> list[dict]:
    """The template's `messages`: system first, each tool result right after the call it answers."""
    out: list[dict] = []
    if req.system:
        out.append({"role": "system", "content": "\n\n".join(b.text for b in req.system)})
    for msg in req.messages:
        if msg.role == "assistant":
            out.append(_assistant(msg))
        elif msg.role == "system":
            out.append({"role": "system", "content": "\n".join(b.text for b in msg.content if type(b) is TextBlock)})
        else:
            _user(msg, model, out)
    return place_system_messages(out, system_messages)


def template_tools(req: MessagesRequest) -> list[dict] | None:
    """The template's `tools` (None when the request has none or forbids calls); tools loaded
    inline by a tool_reference are left out, so the tool list at the top of the prompt never changes."""
    if not req.tools or (req.tool_choice is not None and req.tool_choice.type == "none"):
        return None
    inline = inline_loaded(req)
    return [{"type": "function", "function": {"name": t.name, "description": t.description,
                                              "parameters": t.input_schema}}
            for t in req.tools if t.name not in inline]


def inline_loaded(req: MessagesRequest) -> set[str]:
    """Tools a tool_reference loaded: their definitions are written where the reference is."""
    return {c.loads.name for m in req.messages for b in m.content if type(b) is ToolResultBlock
            for c in b.content if type(c) is ToolReferenceBlock and c.loads is not None}


def _assistant(msg: Message) -> dict:
    texts = [b.text for b in msg.content if type(b) is TextBlock]
    calls = [{"id": b.id, "type": "function", "function": {"name": b.name, "arguments": b.input or {}}}
             for b in msg.content if type(b) is ToolUseBlock]
    out: dict = {"role": "assistant", "content": "".join(texts)}
    if calls:
        out["tool_calls"] = calls
    return out


def _user(msg: Message, model: str, out: list[dict]) -> None:
    """A user turn: its tool results as tool messages, then the rest as one user message."""
    rest: list[str] = []
    results = False
    for b in msg.content:
        if type(b) is ToolResultBlock:
            results = True
            out.append({"role": "tool", "tool_call_id": b.tool_use_id, "content": _result_text(b, model)})
        elif type(b) is TextBlock:
            rest.append(b.text)
        elif type(b) is ImageBlock:
            raise _no_images(model)
        elif b.type != "thinking":
            raise invalid(f"a user message cannot carry a {b.type} block")
    if rest or not results:
        out.append({"role": "user", "content": "\n".join(rest)})


def _result_text(block: ToolResultBlock, model: str) -> str:
    texts = []
    for c in block.content:
        if isinstance(c, ImageBlock):
            raise _no_images(model)
        texts.append(c.text if isinstance(c, TextBlock) else _reference_text(c))
    text = "\n".join(texts)
    if block.is_error:
        return "Error: " + text if text else "Error"
    return text


def _reference_text(block: ToolReferenceBlock) -> str:
    """A tool_reference as the model reads it: the definition it loaded (the <functions> block
    ToolSearch promises), or one short line when the tool is already in the list."""
    if block.loads is None:
        return loaded_text(block.tool_name, block.available)
    tool = block.loads
    definition = orjson.dumps({"description": tool.description, "name": tool.name,
                               "parameters": tool.input_schema}).decode()
    return f"<functions>\n<function>{definition}</function>\n</functions>"


def _no_images(model: str):
    return invalid(f"model '{model}' does not accept images on this backend; {images_hint('mlx')}")
