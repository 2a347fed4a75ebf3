"""vLLM: the OpenAI wire format plus /tokenize, max_model_len and the thinking switch."""
from __future__ import annotations

from backends.base import BackendRequest, BackendUnavailable, TokenCount
from backends.openai import OpenAIBackend
from backends.translate import (
    Dialect,
    template_kwargs,
    to_openai_messages,
    to_openai_tools,
)
from gateway.errors import GatewayError


class VLLMBackend(OpenAIBackend):
    """A vLLM server (`vllm serve`)."""

    dialect = Dialect(top_k=True, thinking_switch=True, reasoning_history=True)

    async def count_tokens(self, breq: BackendRequest) -> TokenCount:
        req = breq.request
        body: dict = {
            "model": breq.model,
            "messages": to_openai_messages(req, self.dialect, breq.model),
            "add_generation_prompt": True,
            "chat_template_kwargs": template_kwargs(req),
        }
        if req.tools:
            body["tools"] = to_openai_tools(req)
        try:
            data = await self.get_json(self.root + "/tokenize", body=body, timeout=self.config.timeout_s)
        except BackendUnavailable as exc:
            raise GatewayError(500, f"backend '{self.name}' could not count tokens: {exc}") from None
        count = data.get("count")
        if not isinstance(count, int):
            tokens = data.get("tokens")
            if not isinstance(tokens, list):
                raise GatewayError(500, f"backend '{self.name}' /tokenize returned no count")
            count = len(tokens)
        return TokenCount(count, exact=True)
