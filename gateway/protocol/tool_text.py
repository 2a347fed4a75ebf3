"""The short lines a model reads in place of tool-search blocks (every backend renders the same)."""
from __future__ import annotations

from gateway.protocol.anthropic import ToolChangeBlock


def loaded_text(name: str, available: bool) -> str:
    """What the model reads where a tool_reference was (when the definition is in the tool list)."""
    if available:
        return f"Tool {name} loaded: it can be called now."
    return f"Tool {name} is not available."


def change_text(block: ToolChangeBlock) -> str:
    """What the model reads where a tool_addition / tool_removal was."""
    if block.change == "addition":
        return f"Tool {block.name} is available from now on."
    return f"Tool {block.name} is no longer available."
