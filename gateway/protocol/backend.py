"""The Backend interface: every backend streams the same internal events (gateway.protocol.events)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import AsyncGenerator

from gateway.protocol.anthropic import MessagesRequest
from gateway.protocol.backend_config import BackendConfig
from gateway.protocol.events import Event


@dataclass(slots=True)
class BackendRequest:
    """A normalized request bound to one backend model, max_tokens already clamped."""

    request: MessagesRequest
    model: str
    max_tokens: int
    session_id: str | None = None
    replica: str | None = None  # set by a pooled backend: the replica that served (or was tried last)
    # The client's OpenAI chat-completions body (POST /v1/chat/completions): OpenAI-style backends
    # send it on with minimal change instead of re-translating `request`; others ignore it.
    openai_body: dict | None = None
    # The prompt as counted for this very request (Backend.counted): not an init field, so a copy
    # made with dataclasses.replace (an edited request, another model) starts uncounted.
    count: TokenCount | None = field(default=None, init=False)


@dataclass(slots=True)
class TokenCount:
    tokens: int
    exact: bool  # False: an estimate (the backend has no tokenizer endpoint)
    # The backend's own rendering of the counted prompt, which its stream() uses instead of
    # rendering again (the embedded MLX backend: the token ids); None for a remote backend.
    rendered: object | None = None


@dataclass(slots=True)
class ModelInfo:
    id: str
    created: int | None = None  # unix seconds, when the backend says
    context_window: int | None = None


@dataclass
class BackendHealth:
    ok: bool
    detail: str = ""
    models: list[str] = field(default_factory=list)
    context_window: int | None = None
    resident: list[str] | None = None  # models loaded in this process (None: a remote server)
    loading: list[str] = field(default_factory=list)  # models `preload` is still loading
    preload_failed: list[str] = field(default_factory=list)  # models `preload` could not load (detail says why)


@dataclass
class LocalModel:
    """A model on this machine (MLX: in the Hugging Face cache or a local directory)."""

    name: str  # hub id, or the directory as the config names it
    path: str
    size_bytes: int
    quantization: str | None  # "4-bit, group 64"; None: unquantised
    context: int | None


@dataclass
class Pulled:
    """What `pull` did for one model."""

    name: str
    path: str  # where it is now
    downloaded: list[str]  # files fetched (empty: it was all there, or it is a local directory)
    bytes: int
    local_dir: bool = False  # the name is a directory: nothing to download


class PullFailed(Exception):
    """A model that could not be downloaded; the message is one paragraph saying what to do."""


class BackendUnavailable(Exception):
    """The backend cannot be reached now; requests will fail until it comes back."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status  # the HTTP status when the server answered with an error


class Backend(ABC):
    """One configured backend: a remote server or an in-process engine."""

    # health() only reads in-process state (no network call): /health may ask it on every request
    # instead of serving a background snapshot.
    local_health = False
    # count_tokens uses the model's own tokenizer (exact and cheap): every request is counted.
    counts_exactly = False

    def __init__(self, config: BackendConfig):
        self.config = config
        self.name = config.name

    async def start(self) -> None:
        """Probe or load; raise BackendUnavailable for a server that is not there (yet)."""

    @abstractmethod
    def stream(self, req: BackendRequest) -> AsyncGenerator[list[Event], None]:
        """Generate: yields batches of events, each non-empty and written to the client in one go
        (e.g. one upstream read's). `[Started()]` alone comes first, then content events, usage, Stop;
        a backend that retries elsewhere before any content yields the retry's Started again."""

    @abstractmethod
    async def count_tokens(self, req: BackendRequest) -> TokenCount:
        """Prompt tokens of `req` as this backend would render it."""

    async def counted(self, req: BackendRequest) -> TokenCount:
        """count_tokens, once per request: the count stays on `req` for the fit and for stream()."""
        if req.count is None:
            req.count = await self.count_tokens(req)
        return req.count

    @abstractmethod
    async def context_window(self, model: str) -> int | None:
        """The model's context length in tokens, None when unknown."""

    @abstractmethod
    async def models(self) -> list[ModelInfo]:
        """The models this backend serves (configured and discovered)."""

    @abstractmethod
    async def health(self) -> BackendHealth:
        """Is the backend usable now, and what does it serve."""

    async def close(self) -> None:
        """Release connections, engines and threads."""

    def replicas(self) -> list[dict] | None:
        """Per-replica state of a pool of servers (None: a single server or an in-process engine)."""
        return None

    async def preload(self) -> None:
        """Load the models config `preload` names; runs once the server listens (a no-op for a remote server)."""

    def preload_names(self) -> list[str]:
        """The models `preload` loads once the server listens (none for a remote server)."""
        return []

    def downloads_on_demand(self) -> bool:
        """A request for a model not downloaded yet downloads it, instead of a 503 (never for a remote server)."""
        return False

    def missing_models(self) -> list[str]:
        """Configured models that need a download before they can serve (none for a remote server)."""
        return []

    def pull(self, model: str, out) -> Pulled:
        """Download `model` to this machine with progress on the text stream `out`; raises PullFailed."""
        raise PullFailed(f"backend '{self.name}' (type {self.config.type}) serves models from its server; "
                         "there is nothing to download here.")

    def local_models(self, named: set[str]) -> list[LocalModel]:
        """Models present on this machine that this kind of backend can run (`named`: those the config names)."""
        return []

    def configured_models(self) -> list[str]:
        """Backend model names named in config (default model first, then mapping values)."""
        names = [self.config.model] if self.config.model else []
        for value in self.config.model_mapping.values():
            if value not in names:
                names.append(value)
        return names


class BackendStartError(Exception):
    """The backend cannot start at all (bad model path, missing engine): the server must not run."""
