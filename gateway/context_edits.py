"""context_management edits, applied to what the backend sees, as the Anthropic API applies them.

The client keeps its full history; the edits only shape the prompt of this request. Each edit
that cleared something is reported back (`context_management.applied_edits` in the response)
with the same fields the API uses. Token figures use the gateway's estimate (gateway.protocol.tokens):
an edit runs before the backend renders the prompt.
"""
from __future__ import annotations

import dataclasses

from gateway.protocol.anthropic import (
    ClearThinkingEdit,
    ClearToolUsesEdit,
    Message,
    MessagesRequest,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
)
from gateway.protocol.tokens import estimate_tokens

CLEARED_TOOL_RESULT = "[tool result cleared to save context]"


def apply_context_edits(req: MessagesRequest) -> tuple[MessagesRequest, list[dict]]:
    """`req` after its context edits, and the applied_edits entries (empty when nothing was cleared)."""
    applied: list[dict] = []
    for edit in req.context_edits or ():
        before = None
        if type(edit) is ClearThinkingEdit:
            messages, turns = clear_thinking(req.messages, edit.keep_turns)
            if turns:
                before = estimate_tokens(req)
                req = dataclasses.replace(req, messages=messages)
                applied.append({"type": edit.type, "cleared_thinking_turns": turns,
                                "cleared_input_tokens": max(0, before - estimate_tokens(req))})
        elif type(edit) is ClearToolUsesEdit:
            edited = clear_tool_uses(req, edit)
            if edited is not None:
                req, entry = edited
                applied.append(entry)
    return req, applied


def clear_thinking(messages: list[Message], keep_turns: int | None) -> tuple[list[Message], int]:
    """Thinking dropped from all but the last `keep_turns` assistant turns that have any."""
    if keep_turns is None:
        return messages, 0
    with_thinking = [i for i, m in enumerate(messages)
                     if m.role == "assistant" and any(type(b) is ThinkingBlock for b in m.content)]
    clear = set(with_thinking[:max(0, len(with_thinking) - keep_turns)])
    if not clear:
        return messages, 0
    out = [Message(m.role, [b for b in m.content if type(b) is not ThinkingBlock]) if i in clear else m
           for i, m in enumerate(messages)]
    return out, len(clear)


def clear_tool_uses(req: MessagesRequest, edit: ClearToolUsesEdit) -> tuple[MessagesRequest, dict] | None:
    """Oldest tool results first become a placeholder, past the trigger, keeping the last `keep` uses."""
    uses = [b for m in req.messages if m.role == "assistant" for b in m.content if type(b) is ToolUseBlock]
    before = estimate_tokens(req)
    size = len(uses) if edit.trigger_type == "tool_uses" else before
    if size <= edit.trigger_value:
        return None
    names = {u.id: u.name for u in uses}
    kept = {u.id for u in uses[max(0, len(uses) - edit.keep):]} if edit.keep else set()
    clearable = [u.id for u in uses if u.id not in kept and u.name not in edit.exclude_tools]
    if not clearable:
        return None
    targets = set(clearable)
    inputs = edit.clear_tool_inputs
    clear_input = {i for i in targets if inputs is True or (isinstance(inputs, tuple) and names[i] in inputs)}
    cleared: set[str] = set()
    messages = []
    for m in req.messages:
        content = []
        for b in m.content:
            if type(b) is ToolResultBlock and b.tool_use_id in targets and not _is_placeholder(b):
                b = dataclasses.replace(b, content=[TextBlock(CLEARED_TOOL_RESULT)])
                cleared.add(b.tool_use_id)
            elif type(b) is ToolUseBlock and b.id in clear_input and b.input:
                b = dataclasses.replace(b, input={})
                cleared.add(b.id)
            content.append(b)
        messages.append(Message(m.role, content))
    if not cleared:
        return None
    edited = dataclasses.replace(req, messages=messages)
    saved = max(0, before - estimate_tokens(edited))
    if saved < edit.clear_at_least:
        return None  # not worth invalidating the cached prefix for
    return edited, {"type": edit.type, "cleared_tool_uses": len(cleared), "cleared_input_tokens": saved}


def _is_placeholder(block: ToolResultBlock) -> bool:
    return len(block.content) == 1 and type(block.content[0]) is TextBlock \
        and block.content[0].text == CLEARED_TOOL_RESULT
