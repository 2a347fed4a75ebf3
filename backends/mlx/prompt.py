"""Anthropic request → prompt tokens with the model's own chat template (tools, thinking switch).

Generation and count_tokens both go through `render`, so a count is exactly what would be
prefilled. `shared_prefix_len` finds where the part common to every session (system prompt and
tools) ends, so the prompt cache can keep that prefix for other sessions.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from jinja2 import TemplateError

from backends.mlx.cache import common_prefix
from backends.mlx.messages import chat_messages, template_tools
from backends.translate import place_system_messages, template_kwargs
from gateway.protocol.anthropic import MessagesRequest
from gateway.protocol.errors import invalid


@dataclass(slots=True)
class Prompt:
    tokens: list[int]
    shared_len: int  # tokens of the system+tools prefix (0 when there is none)
    starts_in_thinking: bool  # the template opened <think> itself (generation begins inside it)
    tools: bool  # tools were rendered (tool calls are parsed)


class PromptRenderer:
    """Renders requests for one tokenizer; remembers shared-prefix token counts."""

    def __init__(self, tokenizer: Any, model: str, system_messages: str = "auto"):
        self.tokenizer = tokenizer
        self.model = model
        # auto: as sent, folded in place only when the template refuses (backends.translate modes otherwise)
        self.system_messages = system_messages
        self._shared: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # renders run on worker threads

    def _apply(self, msgs: list[dict], tools: list[dict] | None, variables: dict, generation: bool) -> str:
        # variables: the thinking switch and the effort (backends.translate.template_kwargs)
        kwargs: dict = {"add_generation_prompt": generation, "tokenize": False, **variables}
        if tools:
            kwargs["tools"] = tools
        try:
            return self.tokenizer.apply_chat_template(msgs, **kwargs)
        except TemplateError:
            # Folded in place (not hoisted into the system prompt): the prefix already sent stays byte-identical.
            folded = place_system_messages(msgs, "as_user")
            if folded == msgs or self.system_messages != "auto":
                raise
            return self.tokenizer.apply_chat_template(folded, **kwargs)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def render(self, req: MessagesRequest) -> Prompt:
        """The prompt generation would prefill for `req`."""
        msgs = chat_messages(req, self.model, self.system_messages)
        tools = template_tools(req)
        thinking = template_kwargs(req)
        try:
            text = self._apply(msgs, tools, thinking, True)
        except TemplateError as exc:
            raise invalid(f"the chat template of model '{self.model}' cannot render this conversation: {exc}") \
                from None
        tokens = self.encode(text)
        shared = self._shared_prefix(msgs, tools, thinking, tokens)
        return Prompt(tokens, shared, text.rstrip().endswith("<think>"), tools is not None)

    def _shared_prefix(self, msgs: list[dict], tools: list[dict] | None, thinking: dict,
                       tokens: list[int]) -> int:
        system = msgs[:1] if msgs and msgs[0]["role"] == "system" else []
        if not system and not tools:
            return 0
        key = hashlib.sha1(orjson.dumps([system, tools, thinking])).digest()
        with self._lock:
            ref = self._shared.get(key)
            if ref is not None:
                self._shared.move_to_end(key)
        if ref is None:
            try:
                text = self._apply(system + [{"role": "user", "content": ""}], tools, thinking, False)
            except TemplateError:
                return 0
            ref = np.asarray(self.encode(text), dtype=np.int32)
            with self._lock:
                self._shared[key] = ref
                if len(self._shared) > 64:
                    self._shared.popitem(last=False)
        return common_prefix(ref, np.asarray(tokens, dtype=np.int32))
