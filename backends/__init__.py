"""Backends by config type, and the config keys each type owns. Modules are imported only when a
backend of that type is configured, so a remote-only config never imports mlx (the MLX options
module imports no mlx)."""
from __future__ import annotations

import importlib

from typing import Any

from gateway.protocol.backend import Backend
from gateway.protocol.backend_config import BackendConfig, BackendOptions

__all__ = ["create_backend", "option_keys", "parse_options"]

_MODULES = {
    "openai": ("backends.openai", "OpenAIBackend"),
    "vllm": ("backends.vllm", "VLLMBackend"),
    "llamacpp": ("backends.llamacpp", "LlamaCppBackend"),
    "mlx": ("backends.mlx.backend", "MLXBackend"),
}

# Types with keys of their own: the module with KEYS (key → TOML value types) and parse().
_OPTIONS = {"mlx": "backends.mlx.options"}


def option_keys() -> dict[str, dict[str, type | tuple[type, ...]]]:
    """Backend type → the keys only that type reads, with the Python types a value may have."""
    return {kind: importlib.import_module(module).KEYS for kind, module in _OPTIONS.items()}


def parse_options(kind: str, name: str, table: dict[str, Any], routed_models: list[str]) -> BackendOptions | None:
    """The typed options of backend `name` of type `kind` (raises OptionError); None for a type
    without keys of its own."""
    module = _OPTIONS.get(kind)
    return importlib.import_module(module).parse(name, table, routed_models) if module else None


def create_backend(config: BackendConfig) -> Backend:
    """Instantiate the backend class for `config.type`."""
    module_name, class_name = _MODULES[config.type]
    module = importlib.import_module(module_name)
    return getattr(module, class_name)(config)
