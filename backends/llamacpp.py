"""llama.cpp server: the OpenAI wire format plus /props (n_ctx, slots), /apply-template and
/tokenize for exact counts, and slot affinity so a session keeps its KV cache."""
from __future__ import annotations

import asyncio
import zlib

from backends.base import BackendRequest, BackendUnavailable, TokenCount
from backends.openai import OpenAIBackend, _int
from backends.replicas import Replica
from backends.translate import (
    Dialect,
    template_kwargs,
    to_openai_messages,
    to_openai_tools,
)
from gateway.errors import GatewayError


class LlamaCppBackend(OpenAIBackend):
    """A llama.cpp `llama-server`."""

    dialect = Dialect(top_k=True, thinking_switch=True, reasoning_history=True)

    def __init__(self, config):
        super().__init__(config)
        self.n_ctx: int | None = None
        self.total_slots: int | None = None

    async def after_discovery(self) -> None:
        await asyncio.gather(*(self.probe_facts(r) for r in self.pool.replicas))
        replica = self.pool.primary()
        self.n_ctx = replica.facts.get("n_ctx")
        self.total_slots = replica.facts.get("total_slots")

    async def probe_facts(self, replica: Replica) -> None:
        """n_ctx and the slot count of one replica (servers of a pool may run different -np)."""
        try:
            props = await self.get_json(replica.root + "/props")
        except BackendUnavailable:
            return  # older servers: fall back to config.context_window
        settings = props.get("default_generation_settings")
        n_ctx = _int(settings.get("n_ctx")) if isinstance(settings, dict) else None
        replica.facts["n_ctx"] = n_ctx or _int(props.get("n_ctx"))
        replica.facts["total_slots"] = _int(props.get("total_slots"))

    async def context_window(self, model: str) -> int | None:
        if self.config.context_window:
            return self.config.context_window
        if self.n_ctx is None:
            await self._models_cached()
        return self.n_ctx

    def extra_fields(self, breq: BackendRequest) -> dict:
        return {"cache_prompt": True}

    def replica_fields(self, breq: BackendRequest, replica: Replica) -> dict:
        slots = replica.facts.get("total_slots")
        if breq.session_id and slots and slots > 1:
            # The same session lands on the same slot of its replica, whose KV cache still holds its prefix.
            return {"id_slot": zlib.crc32(breq.session_id.encode()) % slots}
        return {}

    async def count_tokens(self, breq: BackendRequest) -> TokenCount:
        req = breq.request
        body: dict = {"messages": to_openai_messages(req, self.dialect, breq.model),
                      "chat_template_kwargs": template_kwargs(req)}
        if req.tools:
            body["tools"] = to_openai_tools(req)
        try:
            rendered = await self.get_json(self.root + "/apply-template", body=body, timeout=self.config.timeout_s)
            prompt = rendered.get("prompt")
            if not isinstance(prompt, str):
                raise GatewayError(500, f"backend '{self.name}' /apply-template returned no prompt")
            data = await self.get_json(self.root + "/tokenize", body={"content": prompt, "add_special": True},
                                       timeout=self.config.timeout_s)
        except BackendUnavailable as exc:
            raise GatewayError(500, f"backend '{self.name}' could not count tokens: {exc}") from None
        tokens = data.get("tokens")
        if not isinstance(tokens, list):
            raise GatewayError(500, f"backend '{self.name}' /tokenize returned no tokens")
        return TokenCount(len(tokens), exact=True)
