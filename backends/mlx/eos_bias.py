"""A length-dependent end-of-sequence bias for the MLX backend (config `eos_bias`).

Hugging Face's `exponential_decay_length_penalty`: after `start` generated tokens, each EOS
logit grows by |score| · (factor^n − 1), n tokens past the start, so a sampled answer that would
ramble on ends instead. The score here is the EOS log-probability rather than the raw logit: a
logit's offset is arbitrary (softmax ignores it), a log-probability's is not, so the same factor
gives every model the same horizon — once factor^n reaches 2 the EOS token is at least as likely as
all other tokens together.
"""
from __future__ import annotations

from collections.abc import Iterable

import mlx.core as mx

from backends.mlx.options import EosBias

# The bias stops growing here: EOS is by then certain, and an unbounded power would overflow
# half-precision logits.
MAX_MULTIPLIER = 100.0


class EosBiasProcessor:
    """An mlx-lm logits processor: (prompt and generated tokens, logits) → logits with EOS raised."""

    # Stateless: the bias depends only on how many tokens follow the prompt, so a batch rebuilt
    # mid-answer may resume a request that uses it.
    replayable = True

    def __init__(self, eos_ids: Iterable[int], prompt_len: int, bias: EosBias):
        self.eos = mx.array(sorted(eos_ids), dtype=mx.int32)
        self.prompt_len = prompt_len
        self.start = bias.start
        self.factor = bias.factor

    def multiplier(self, generated: int) -> float:
        """factor^n − 1 for the n tokens past `start` (0 before it), capped at MAX_MULTIPLIER."""
        past = generated - self.start
        if past <= 0:
            return 0.0
        try:
            return min(self.factor ** past - 1.0, MAX_MULTIPLIER)
        except OverflowError:
            return MAX_MULTIPLIER

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        scale = self.multiplier(tokens.size - self.prompt_len)
        if scale == 0.0 or self.eos.size == 0:
            return logits
        scores = logits.astype(mx.float32)
        logprobs = scores[:, self.eos] - mx.logsumexp(scores, axis=-1, keepdims=True)
        boost = mx.abs(logprobs) * scale
        boost = mx.where(mx.isfinite(boost), boost, 0.0)  # a masked (-inf) EOS stays masked
        return logits.at[:, self.eos].add(boost.astype(logits.dtype))
