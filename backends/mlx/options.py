"""The config keys only the MLX backend reads, typed and checked here (the config loader asks the
backends package for them), so the web layer's config holds none of them. Imports no mlx."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gateway.protocol.backend_config import BackendOptions, OptionError

# Key → the Python types a TOML value may have (the loader checks these before `parse`).
KEYS: dict[str, type | tuple[type, ...]] = {
    "max_resident_models": int, "cache_mb": (int, float), "cache_ttl_s": (int, float), "max_batch": int,
    "cache_across_sessions": bool, "preload": (bool, list), "download_on_demand": bool, "eos_bias": dict}


@dataclass(frozen=True)
class EosBias:
    """`eos_bias = { start, factor }`: after `start` generated tokens the end-of-sequence logits grow
    by factor per token (Hugging Face's exponential_decay_length_penalty; backends.mlx.eos_bias)."""

    start: int
    factor: float


@dataclass(frozen=True)
class MLXOptions(BackendOptions):
    """An mlx backend's own keys; the defaults are what an absent key means."""

    max_resident_models: int = 1  # models kept loaded; the least recently used idle one is unloaded
    cache_mb: float = 4096  # prompt-cache byte budget (MB)
    cache_ttl_s: float = 1800  # prompt-cache entries unused this long are dropped
    max_batch: int = 8  # requests decoded together
    cache_across_sessions: bool = False  # any request may reuse any cached prefix (a gateway with one user)
    preload: bool | tuple[str, ...] = False  # models loaded once the server listens: true = every configured one
    download_on_demand: bool = False  # a request for a hub model not downloaded yet downloads it (else 503)
    eos_bias: EosBias | None = None  # a sampled answer ends instead of rambling to max_tokens; None: off


def parse(name: str, table: dict[str, Any], routed_models: list[str]) -> MLXOptions:
    """The options of backend `name` from its config table (types already checked against KEYS);
    `routed_models` are the models requests reach it with (its model and model_mapping values)."""
    for key in ("max_resident_models", "cache_ttl_s", "max_batch"):
        if key in table and table[key] <= 0:
            raise OptionError(key, f"'backends.{name}.{key}' must be positive.")
    if "cache_mb" in table and table["cache_mb"] < 0:
        raise OptionError("cache_mb", f"'backends.{name}.cache_mb' must be 0 (no cache) or more.")
    fields = {k: table[k] for k in KEYS if k in table}
    if isinstance(table.get("preload"), list):
        fields["preload"] = _preload(name, table["preload"], routed_models)
    if "eos_bias" in table:
        fields["eos_bias"] = _eos_bias(name, table["eos_bias"])
    return MLXOptions(**fields)


def _preload(name: str, entries: list, routed_models: list[str]) -> tuple[str, ...]:
    """`preload = [...]` names models of this backend: its model or model_mapping values."""
    for entry in entries:
        if not isinstance(entry, str) or not entry:
            raise OptionError("preload", f"'backends.{name}.preload' entries must be model names (non-empty "
                                         f"strings), got {entry!r}; or set preload = true for every model of the "
                                         "backend.")
        if entry not in routed_models:
            raise OptionError("preload", f"'backends.{name}.preload' names {entry!r}, which is neither "
                                         f"'backends.{name}.model' nor a value of its model_mapping; preload loads "
                                         f"models that requests are routed to. Known here: "
                                         f"{', '.join(dict.fromkeys(routed_models))}.")
    return tuple(entries)


def _eos_bias(name: str, value: dict) -> EosBias:
    """`eos_bias = { start = N, factor = F }`: N generated tokens (0 or more), then EOS grows by F (> 1) a token."""
    example = "e.g. eos_bias = { start = 256, factor = 1.01 }"
    unknown = sorted(set(value) - {"start", "factor"})
    if unknown or len(value) != 2:
        what = f"has unknown key(s) {', '.join(unknown)}" if unknown else "needs both 'start' and 'factor'"
        raise OptionError("eos_bias", f"'backends.{name}.eos_bias' {what}; {example}.")
    start, factor = value["start"], value["factor"]
    if not isinstance(start, int) or isinstance(start, bool) or start < 0:
        raise OptionError("eos_bias", f"'backends.{name}.eos_bias.start' must be a whole number of generated "
                                      f"tokens, 0 or more; got {start!r} ({example}).")
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not 1.0 < factor < math.inf:
        raise OptionError("eos_bias", f"'backends.{name}.eos_bias.factor' must be a number above 1 (the bias "
                                      f"grows by this factor per token past 'start'); got {factor!r} ({example}).")
    return EosBias(start=start, factor=float(factor))
