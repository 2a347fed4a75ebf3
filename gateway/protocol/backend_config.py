"""One backend's settings as config.toml gives them (validated by gateway.config)."""
from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field

BACKEND_TYPES = ("mlx", "vllm", "llamacpp", "openai")


def images_hint(backend_type: str) -> str:
    """How a client's images could be answered, for the error when a backend of this type refuses them."""
    if backend_type == "mlx":
        return ("the embedded MLX backend does not take images; route this model to a vision backend "
                "(type openai, vllm or llamacpp with vision = true)")
    return "set vision = true in its [backends.*] table if the model has vision"


class BackendOptions:
    """Base of a backend type's own config keys, typed by the backend package that reads them
    (e.g. backends.mlx.options): the protocol core names no backend's keys."""


class OptionError(ValueError):
    """A backend option's value is wrong: the key (for the file:line) and what to write instead."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key
        self.message = message


@dataclass
class BackendConfig:
    name: str
    type: str
    model: str | None = None
    base_url: str | None = None  # the first replica's URL (credentials removed); base_urls has them all
    api_key: str | None = None
    api_key_env: str | None = None
    timeout_s: float = 900.0
    context_window: int | None = None
    max_output_tokens: int | None = None
    vision: bool = False
    # Where system messages after the first go: keep | merge | as_user; auto asks the chat template.
    system_messages: str = "auto"
    extra_body: dict = field(default_factory=dict)
    model_mapping: dict[str, str] = field(default_factory=dict)
    # hermes | qwen3_coder | llama3_json | mistral | auto | none; absent: mlx from the template, remote "auto"
    tool_parser: str | None = None
    # The context budget (gateway.context_budget): opt-in lossy edits, and where an oversized prompt goes.
    context_edits: list[str] = field(default_factory=list)  # "clear_tool_results"
    keep_tool_results: int = 3  # clear_tool_results keeps at least this many of the latest results
    fallback_on_overflow: str | None = None  # a backend with a larger window
    options: BackendOptions | None = None  # the keys only this backend type reads (None: its defaults)
    fallback: str | None = None  # the backend that answers when this one cannot (every replica down or overloaded)
    # Not keys: base_url as a list of replica URLs (credentials removed), and the user:password@
    # found in each, moved out of it so the URL can be shown (url_auth: the first replica's).
    base_urls: list[str] = field(default_factory=list)
    url_auths: list[tuple[str, str] | None] = field(default_factory=list)
    url_auth: tuple[str, str] | None = None

    def resolved_api_key(self) -> str | None:
        """The key from api_key_env (when set and present), else api_key."""
        if self.api_key_env and os.environ.get(self.api_key_env):
            return os.environ[self.api_key_env]
        return self.api_key

    def secrets(self) -> tuple[str, ...]:
        """What must never be shown: the API key, the URL password and the Basic credentials built from it."""
        out = [self.resolved_api_key() or ""]
        for auth in self.url_auths or [self.url_auth]:
            if auth is not None:
                user, password = auth
                out += [password, base64.b64encode(f"{user}:{password}".encode()).decode("ascii")]
        return tuple(s for s in out if s)
