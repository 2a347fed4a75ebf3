"""Structured output for the MLX backend: output_config json_schema by constrained decoding.

llguidance (maintained by Microsoft, used by vLLM and llama.cpp) compiles the schema into a token
matcher; a logits processor masks every token the schema does not allow at each step, so a
finished answer is always JSON that matches. Compact JSON (no free whitespace) keeps a weak model
from padding forever. llguidance's own mlx helper needs Metal, so the mask is applied with plain
mlx ops here and runs on CPU too.
"""
from __future__ import annotations

import threading
from typing import Any, cast

import llguidance
import llguidance.hf
import mlx.core as mx
import numpy as np

from gateway.protocol.errors import invalid

_lock = threading.Lock()
_tokenizers: dict[int, tuple[Any, llguidance.LLTokenizer]] = {}  # id(hf tokenizer) → (it, llg tokenizer)


def _llg_tokenizer(tokenizer: Any) -> llguidance.LLTokenizer:
    """The llguidance view of an mlx-lm TokenizerWrapper (built once per tokenizer: ~1 s)."""
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    with _lock:
        hit = _tokenizers.get(id(hf))
        if hit is not None and hit[0] is hf:
            return hit[1]
    eos = sorted(getattr(tokenizer, "eos_token_ids", None) or [hf.eos_token_id])
    llt = llguidance.hf.from_tokenizer(hf, eos_token=eos[0])
    with _lock:
        _tokenizers[id(hf)] = (hf, llt)
    return llt


class JsonSchemaProcessor:
    """An mlx-lm logits processor: (tokens so far, logits) → logits with disallowed tokens at -inf."""

    def __init__(self, matcher: llguidance.LLMatcher):
        self.matcher = matcher
        self._seen: int | None = None  # tokens of the context already fed to the matcher

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        n = tokens.size
        if self._seen is None:
            self._seen = n  # the first call sees the prompt only
        elif n > self._seen:
            # mx.array.tolist is typed for any shape; the token history is 1-D, so a list of ids.
            for t in cast("list[int]", tokens[self._seen:].tolist()):
                self.matcher.consume_token(t)
            self._seen = n
        if self.matcher.is_error():
            # The grammar outgrew llguidance's limits mid-answer (e.g. a schema that requires itself):
            # unmasked sampling would break the promise of schema-valid JSON, so the request fails.
            reason = self.matcher.get_error().strip().splitlines()
            raise ValueError(f"output_config.format.schema: constrained decoding failed: "
                             f"{reason[0] if reason else 'matcher error'}")
        bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        vocab = logits.shape[-1]
        if len(bits) < vocab:
            bits = np.pad(bits, (0, vocab - len(bits)))  # padding rows of the embedding are never valid
        allowed = mx.array(bits[:vocab].astype(np.bool_))
        return mx.where(allowed, logits, mx.array(-float("inf"), dtype=logits.dtype))


def json_schema_processor(tokenizer: Any, schema: dict) -> JsonSchemaProcessor:
    """A fresh processor for one request; a schema llguidance cannot compile is a 400."""
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            schema, defaults={"whitespace_flexible": False, "lenient": True})
    except ValueError as exc:
        raise invalid(f"output_config.format.schema: {exc}") from None
    matcher = llguidance.LLMatcher(_llg_tokenizer(tokenizer), grammar, log_level=0)
    if matcher.is_error():
        raise invalid(f"output_config.format.schema: not usable for constrained decoding: {matcher.get_error()}")
    return JsonSchemaProcessor(matcher)
