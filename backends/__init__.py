"""Backends by config type. Modules are imported only when a backend of that type is configured,
so a remote-only config never imports mlx."""
from __future__ import annotations

import importlib

from gateway.protocol.backend import Backend
from gateway.protocol.backend_config import BackendConfig

_MODULES = {
    "openai": ("backends.openai", "OpenAIBackend"),
    "vllm": ("backends.vllm", "VLLMBackend"),
    "llamacpp": ("backends.llamacpp", "LlamaCppBackend"),
    "mlx": ("backends.mlx.backend", "MLXBackend"),
}


def create_backend(config: BackendConfig) -> Backend:
    """Instantiate the backend class for `config.type`."""
    module_name, class_name = _MODULES[config.type]
    module = importlib.import_module(module_name)
    return getattr(module, class_name)(config)
