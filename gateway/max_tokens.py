"""Fit max_tokens into the backend's context window (Claude Code asks for 64000 everywhere)."""
from __future__ import annotations

from dataclasses import dataclass

from gateway.protocol.backend import Backend, BackendRequest
from gateway.protocol.errors import prompt_too_long
from gateway.protocol.tokens import estimate_tokens

# An estimate may be off by this factor; within it, the backend's own tokenizer decides.
ESTIMATE_MARGIN = 1.5


@dataclass(slots=True)
class Fit:
    max_tokens: int
    prompt_tokens: int
    exact: bool
    context_clamped: bool = False  # max_tokens is what the context window has left after the prompt


async def fit_request(backend: Backend, breq: BackendRequest) -> Fit:
    """Clamp breq.max_tokens to (context − prompt); a prompt that cannot fit is a 400.

    Backends that count with the model's own tokenizer are always asked, so the prompt size in
    message_start is exact; others are asked only when the estimate comes close to the window.
    """
    max_tokens = breq.max_tokens
    if backend.config.max_output_tokens:
        max_tokens = min(max_tokens, backend.config.max_output_tokens)
    estimate = estimate_tokens(breq.request)
    context = await backend.context_window(breq.model)
    if not backend.counts_exactly and (context is None or estimate * ESTIMATE_MARGIN + max_tokens <= context):
        return Fit(max_tokens, estimate, False)
    count = await backend.counted(breq)
    if context is None:
        return Fit(max_tokens, count.tokens, count.exact)
    prompt = count.tokens if count.exact else int(count.tokens * 1.25)
    if prompt >= context:
        raise prompt_too_long(count.tokens, context)
    room = context - prompt
    return Fit(max(1, min(max_tokens, room)), count.tokens, count.exact, context_clamped=room < max_tokens)
