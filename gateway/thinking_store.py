"""Thinking sent with `display: "omitted"`, kept so the backend still sees it on the next turn.

The API returns omitted thinking as an empty block whose signature carries the reasoning, and the
model reads it again when the block comes back in history. This gateway's signatures are MACs,
not ciphertexts, so the text stays here instead: remembered by signature when a response omits
it, put back when a request returns the empty block. Bounded (least recently used first); a
block it no longer knows goes on without text, as it did before.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict

from gateway.protocol.anthropic import Message, MessagesRequest, ThinkingBlock

DEFAULT_BUDGET = 16 * 1024 * 1024  # characters of thinking kept


class ThinkingStore:
    """signature → thinking text, least recently used dropped past `budget` characters."""

    def __init__(self, budget: int = DEFAULT_BUDGET):
        self.budget = budget
        self._size = 0
        self._texts: OrderedDict[str, str] = OrderedDict()

    def remember(self, signature: str, thinking: str) -> None:
        if not signature or not thinking or len(thinking) > self.budget:
            return
        old = self._texts.pop(signature, None)
        if old is not None:
            self._size -= len(old)
        self._texts[signature] = thinking
        self._size += len(thinking)
        while self._size > self.budget:
            _, dropped = self._texts.popitem(last=False)
            self._size -= len(dropped)

    def restore(self, req: MessagesRequest) -> MessagesRequest:
        """`req` with the text of empty thinking blocks whose signature is known put back."""
        if not self._texts:
            return req
        changed = False
        messages = []
        for msg in req.messages:
            content = msg.content
            if msg.role == "assistant" and any(type(b) is ThinkingBlock and not b.thinking and b.signature in self._texts
                                               for b in content):
                content = [self._filled(b) if type(b) is ThinkingBlock else b for b in content]
                changed = True
                msg = Message(msg.role, content)
            messages.append(msg)
        return dataclasses.replace(req, messages=messages) if changed else req

    def _filled(self, block: ThinkingBlock) -> ThinkingBlock:
        text = self._texts.get(block.signature) if not block.thinking and not block.redacted else None
        if text is None:
            return block
        self._texts.move_to_end(block.signature)
        return dataclasses.replace(block, thinking=text)
