"""Builds the non-streaming response from the same Anthropic events the SSE encoder writes."""
from __future__ import annotations

import orjson
import structlog

log = structlog.get_logger("gateway.aggregate")


class Aggregator:
    """Folds message_start … message_stop events into one Message object (a dict)."""

    def __init__(self) -> None:
        self.message: dict = {}
        self._parts: dict[int, list[str]] = {}

    def add(self, event: dict) -> None:
        kind = event["type"]
        if kind == "content_block_delta":
            delta = event["delta"]
            dtype = delta["type"]
            if dtype == "text_delta":
                self._parts[event["index"]].append(delta["text"])
            elif dtype == "thinking_delta":
                self._parts[event["index"]].append(delta["thinking"])
            elif dtype == "input_json_delta":
                self._parts[event["index"]].append(delta["partial_json"])
            elif dtype == "signature_delta":
                self.message["content"][event["index"]]["signature"] = delta["signature"]
        elif kind == "content_block_start":
            self.message["content"].append(dict(event["content_block"]))
            self._parts[event["index"]] = []
        elif kind == "content_block_stop":
            self._finish_block(event["index"])
        elif kind == "message_start":
            self.message = dict(event["message"])
            self.message["content"] = []
        elif kind == "message_delta":
            self.message.update(event["delta"])
            self.message["usage"] = event["usage"]
            if "context_management" in event:
                self.message["context_management"] = event["context_management"]

    def content(self) -> list[dict]:
        """The content blocks so far; a block still open (the stream was cut) is marked incomplete."""
        blocks = list(self.message.get("content") or [])
        for index, parts in self._parts.items():
            block = dict(blocks[index])
            joined = "".join(parts)
            if block["type"] in ("text", "thinking"):
                block[block["type"]] = joined
            elif block["type"] == "tool_use":
                block["partial_json"] = joined  # arguments cut mid-way are not JSON yet
            block["incomplete"] = True
            blocks[index] = block
        return blocks

    def _finish_block(self, index: int) -> None:
        block = self.message["content"][index]
        joined = "".join(self._parts.pop(index))
        if block["type"] == "text":
            block["text"] = joined
        elif block["type"] == "thinking":
            block["thinking"] = joined
        elif block["type"] == "tool_use":
            block["input"] = _tool_input(joined, block["name"])


def _tool_input(raw: str, name: str) -> dict:
    """The parsed tool arguments; malformed ones become {} rather than a corrupted body."""
    if not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        log.warning("tool_arguments_malformed", tool=name, arguments=raw[:200])
        return {}
    return value if isinstance(value, dict) else {}
