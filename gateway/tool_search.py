"""Deferred tools (tool search), served the way the Anthropic API serves them.

Tools marked `defer_loading` are left out of what the backend sees until a `tool_reference` in
the history loads them; system-message `tool_addition` / `tool_removal` blocks change the set
from their point on (and reach the backend as one short line each). A loaded tool goes to the end
of the tool list, in load order, so the part of the prompt a chat template renders before it
(system prompt, earlier tools) stays the same and the backend's prefix cache keeps it. Each
reference is annotated with what it loaded; backends.translate turns it into a short line, and
the embedded MLX backend, which renders the prompt itself (backends.mlx.messages), into the
tool's definition in place, which leaves the whole earlier prompt cached.
"""
from __future__ import annotations

import dataclasses

from gateway.protocol.anthropic import (
    Message,
    MessagesRequest,
    TextBlock,
    Tool,
    ToolChangeBlock,
    ToolReferenceBlock,
    ToolResultBlock,
)
from gateway.protocol.tool_text import change_text


def apply_tool_search(req: MessagesRequest) -> MessagesRequest:
    """`req` with the tools the backend should see, references annotated, tool changes as text."""
    deferred = any(t.defer_loading for t in req.tools)
    if not deferred and not _has_search_blocks(req.messages):
        return req
    defined: dict[str, Tool] = {}
    for t in req.tools:
        defined.setdefault(t.name, t)
    active: dict[str, Tool] = {t.name: t for t in req.tools if not t.defer_loading}
    messages = [_walk(msg, defined, active) for msg in req.messages]
    choice = req.tool_choice
    forced = choice.name if choice is not None and choice.type == "tool" else None
    if forced is not None and forced in defined and forced not in active:
        active[forced] = defined[forced]  # a forced tool must be one the model can see
    tools = [dataclasses.replace(t, defer_loading=False) if t.defer_loading else t for t in active.values()]
    return dataclasses.replace(req, tools=tools, messages=messages)


def _has_search_blocks(messages: list[Message]) -> bool:
    for msg in messages:
        for b in msg.content:
            if type(b) is ToolChangeBlock:
                return True
            if type(b) is ToolResultBlock and any(type(c) is ToolReferenceBlock for c in b.content):
                return True
    return False


def _walk(msg: Message, defined: dict[str, Tool], active: dict[str, Tool]) -> Message:
    """One message, applying its loads and changes to `active` in order; the blocks become text."""
    changed = False
    content: list = []
    for b in msg.content:
        if type(b) is ToolChangeBlock:
            changed = True
            if b.change == "removal":
                active.pop(b.name, None)
            else:
                tool = b.definition or defined.get(b.name)
                if tool is not None:
                    active.setdefault(b.name, tool)
            content.append(TextBlock(change_text(b)))
        elif type(b) is ToolResultBlock and any(type(c) is ToolReferenceBlock for c in b.content):
            changed = True
            content.append(dataclasses.replace(b, content=[_load(c, defined, active) for c in b.content]))
        else:
            content.append(b)
    return Message(msg.role, content) if changed else msg


def _load(block, defined: dict[str, Tool], active: dict[str, Tool]):
    if type(block) is not ToolReferenceBlock:
        return block
    tool = defined.get(block.tool_name)
    if tool is None:
        return ToolReferenceBlock(block.tool_name)
    loads = tool if tool.name not in active else None
    active.setdefault(tool.name, tool)
    return ToolReferenceBlock(block.tool_name, available=True,
                              loads=dataclasses.replace(loads, defer_loading=False) if loads else None)
