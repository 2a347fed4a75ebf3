"""llama.cpp server: the OpenAI wire format plus /props (per-slot n_ctx, slots, chat template),
/apply-template and /tokenize for exact counts, and slot affinity so a session keeps its KV cache."""
from __future__ import annotations

import asyncio
import zlib

import httpx2
import orjson

from gateway.protocol.backend import (
    BackendHealth,
    BackendRequest,
    BackendUnavailable,
    ModelInfo,
    TokenCount,
)
from backends.openai import (
    MAX_ERROR_BYTES,
    MAX_JSON_BYTES,
    OpenAIBackend,
    _int,
)
from backends.replicas import Replica
from backends.translate import (
    LATE_SYSTEM_PROBE,
    Dialect,
    template_kwargs,
    to_openai_messages,
    to_openai_tools,
)
from backends.upstream_errors import error_message, template_error
from gateway.protocol.errors import GatewayError
from gateway.protocol.redact import scrub
from gateway.protocol.tokens import estimate_tokens


class LlamaCppBackend(OpenAIBackend):
    """A llama.cpp `llama-server`."""

    dialect = Dialect(top_k=True, thinking_switch=True, reasoning_history=True, reports_stop_string=True)
    counts_exactly = True

    def __init__(self, config):
        super().__init__(config)
        self.n_ctx: int | None = None  # per slot: what one request can use
        self.total_slots: int | None = None
        self.late_system_ok: bool | None = None  # does the chat template render a late system message

    async def after_discovery(self) -> None:
        await asyncio.gather(*(self.probe_facts(r) for r in self.pool.replicas))
        replica = self.pool.primary()
        self.total_slots = replica.facts.get("total_slots")
        self.n_ctx = replica.facts.get("n_ctx")
        for info in self._discovered:
            if info.context_window is None:
                info.context_window = self.config.context_window or self.n_ctx
        if replica.facts.get("chat_template"):
            try:
                status, _ = await self._render({"messages": LATE_SYSTEM_PROBE})
            except GatewayError:
                return  # gone again since /props: ask on the next discovery
            self.late_system_ok = status == 200

    async def probe_facts(self, replica: Replica) -> None:
        """n_ctx per slot and the slot count of one replica (servers of a pool may run different -np)."""
        try:
            props = await self.get_json(replica.root + "/props")
        except BackendUnavailable:
            return  # older servers: fall back to config.context_window
        total_slots = _int(props.get("total_slots"))
        settings = props.get("default_generation_settings")
        n_ctx = _int(settings.get("n_ctx")) if isinstance(settings, dict) else None
        if n_ctx is None and (total := _int(props.get("n_ctx"))):
            # Only the whole KV cache is given: with --parallel N each slot has 1/N of it.
            n_ctx = total // (total_slots or 1)
        replica.facts.update(n_ctx=n_ctx, total_slots=total_slots,
                             chat_template=isinstance(props.get("chat_template"), str))

    async def template_system_mode(self, model: str) -> str:
        if self.late_system_ok is None:
            await self._models_cached()
        return "as_user" if self.late_system_ok is False else "keep"

    async def context_window(self, model: str) -> int | None:
        if self.config.context_window:
            return self.config.context_window
        if self.n_ctx is None:
            await self._models_cached()
        return self.n_ctx

    async def health(self) -> BackendHealth:
        health = await super().health()
        if health.ok and health.context_window is None:
            health.context_window = self.n_ctx
        return health

    async def models(self) -> list[ModelInfo]:
        out = await super().models()
        for info in out:
            info.context_window = info.context_window or self.config.context_window or self.n_ctx
        return out

    def extra_fields(self, breq: BackendRequest) -> dict:
        fields: dict = {"cache_prompt": True}
        if breq.request.stop_sequences:
            # Its OpenAI chunks do not say which stop string matched; the debug block does.
            fields["verbose"] = True
        return fields

    def replica_fields(self, breq: BackendRequest, replica: Replica) -> dict:
        slots = replica.facts.get("total_slots")
        if breq.session_id and slots and slots > 1:
            # The same session lands on the same slot of its replica, whose KV cache still holds its prefix.
            return {"id_slot": zlib.crc32(breq.session_id.encode()) % slots}
        return {}

    async def _render(self, body: dict) -> tuple[int, dict | str]:
        """POST /apply-template: (status, JSON answer) or (status, the server's error message)."""
        try:
            status, raw = await self.fetch_raw(self.root + "/apply-template", body, self.config.timeout_s,
                                               MAX_JSON_BYTES)
        except (httpx2.HTTPError, asyncio.TimeoutError, OSError) as exc:
            raise self.count_failed(BackendUnavailable(f"{type(exc).__name__} {exc}".strip())) from None
        if status != 200:
            return status, scrub(error_message(raw[:MAX_ERROR_BYTES]), self.secrets)
        try:
            data = orjson.loads(raw) if len(raw) <= MAX_JSON_BYTES else None
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise GatewayError(500, f"backend '{self.name}' /apply-template did not answer a JSON object "
                                    f"of at most {MAX_JSON_BYTES} bytes")
        return status, data

    async def count_tokens(self, breq: BackendRequest) -> TokenCount:
        return await self.on_replicas(breq, lambda: self._count_exactly(breq))

    async def _count_exactly(self, breq: BackendRequest) -> TokenCount:
        req = breq.request
        body: dict = {"messages": to_openai_messages(req, self.dialect, breq.model,
                                                     await self.system_messages(req, breq.model)),
                      "chat_template_kwargs": template_kwargs(req)}
        if req.tools:
            body["tools"] = to_openai_tools(req)
        status, rendered = await self._render(body)
        if status in (404, 405, 501):  # a server without /apply-template: no exact count
            return TokenCount(estimate_tokens(req), exact=False)
        if status != 200 or not isinstance(rendered, dict):
            if status in (400, 500) and isinstance(rendered, str):
                # /apply-template only renders: its failure is the template's, and deterministic.
                raise template_error(self.name, rendered)
            raise GatewayError(500, f"backend '{self.name}' /apply-template answered {status}: {rendered}")
        prompt = rendered.get("prompt")
        if not isinstance(prompt, str):
            raise GatewayError(500, f"backend '{self.name}' /apply-template returned no prompt")
        try:
            data = await self.get_json(self.root + "/tokenize", body={"content": prompt, "add_special": True},
                                       timeout=self.config.timeout_s)
        except BackendUnavailable as exc:
            raise self.count_failed(exc) from None
        tokens = data.get("tokens")
        if not isinstance(tokens, list):
            raise GatewayError(500, f"backend '{self.name}' /tokenize returned no tokens")
        return TokenCount(len(tokens), exact=True)
