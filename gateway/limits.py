"""Fit max_tokens into the backend's context window (Claude Code asks for 64000 everywhere)."""
from __future__ import annotations

from dataclasses import dataclass

from backends.base import Backend, BackendRequest
from gateway.errors import prompt_too_long
from gateway.tokens import estimate_tokens

# An estimate may be off by this factor; within it, the backend's own tokenizer decides.
ESTIMATE_MARGIN = 1.5


@dataclass(slots=True)
class Fit:
    max_tokens: int
    prompt_tokens: int
    exact: bool


async def fit_request(backend: Backend, breq: BackendRequest) -> Fit:
    """Clamp breq.max_tokens to (context − prompt); a prompt that cannot fit is a 400."""
    max_tokens = breq.max_tokens
    if backend.config.max_output_tokens:
        max_tokens = min(max_tokens, backend.config.max_output_tokens)
    estimate = estimate_tokens(breq.request)
    context = await backend.context_window(breq.model)
    if context is None or estimate * ESTIMATE_MARGIN + max_tokens <= context:
        return Fit(max_tokens, estimate, False)
    count = await backend.count_tokens(breq)
    prompt = count.tokens if count.exact else int(count.tokens * 1.25)
    if prompt >= context:
        raise prompt_too_long(count.tokens, context)
    return Fit(max(1, min(max_tokens, context - prompt)), count.tokens, count.exact)
