"""vLLM: the OpenAI wire format plus /tokenize, max_model_len, the thinking switch and the stop
string it reports (`stop_reason`)."""
from __future__ import annotations

from gateway.protocol.backend import BackendRequest, BackendUnavailable, TokenCount
from backends.openai import OpenAIBackend
from backends.translate import (
    LATE_SYSTEM_PROBE,
    Dialect,
    template_kwargs,
    to_openai_messages,
    to_openai_tools,
)
from backends.upstream_errors import render_error
from gateway.protocol.errors import GatewayError


class VLLMBackend(OpenAIBackend):
    """A vLLM server (`vllm serve`)."""

    dialect = Dialect(top_k=True, thinking_switch=True, reasoning_history=True, reports_stop_string=True)
    counts_exactly = True

    def __init__(self, config):
        super().__init__(config)
        self._late_system_ok: dict[str, bool] = {}  # per model: its tokenizer's template renders one

    async def template_system_mode(self, model: str) -> str:
        if model not in self._late_system_ok:
            # vLLM renders the model's chat template for /tokenize: a template that refuses a late
            # system message refuses it there too (400), without generating anything.
            try:
                await self.get_json(self.root + "/tokenize", body={"model": model, "messages": LATE_SYSTEM_PROBE},
                                    timeout=self.config.timeout_s)
                self._late_system_ok[model] = True
            except BackendUnavailable as exc:
                if exc.status is None or exc.status >= 500:
                    return "keep"  # not reachable now: decide on a later request
                self._late_system_ok[model] = False
        return "keep" if self._late_system_ok[model] else "as_user"

    async def count_tokens(self, breq: BackendRequest) -> TokenCount:
        return await self.on_replicas(breq, lambda: self._count_exactly(breq))

    async def _count_exactly(self, breq: BackendRequest) -> TokenCount:
        req = breq.request
        body: dict = {
            "model": breq.model,
            "messages": to_openai_messages(req, self.dialect, breq.model, await self.system_messages(req, breq.model)),
            "add_generation_prompt": True,
            "chat_template_kwargs": template_kwargs(req),
        }
        if req.tools:
            body["tools"] = to_openai_tools(req)
        try:
            data = await self.get_json(self.root + "/tokenize", body=body, timeout=self.config.timeout_s)
        except BackendUnavailable as exc:
            if exc.status == 400:  # vLLM answers 400 when the chat template refuses the conversation
                raise render_error(self.name, str(exc)) from None
            raise self.count_failed(exc) from None
        count = data.get("count")
        if not isinstance(count, int):
            tokens = data.get("tokens")
            if not isinstance(tokens, list):
                raise GatewayError(500, f"backend '{self.name}' /tokenize returned no count")
            count = len(tokens)
        return TokenCount(count, exact=True)
