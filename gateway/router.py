"""Model name → (backend, backend model): an exact model_mapping name, then a glob, then a model a
backend serves under that name, then [routing] default."""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from gateway.protocol.backend import Backend
from gateway.config import Config
from gateway.protocol.errors import GatewayError, not_found

# Claude Code appends context-size hints such as "[1m]" to model names.
_SUFFIX = re.compile(r"\[[^\]]*\]$")


@dataclass(slots=True)
class Route:
    backend: Backend
    model: str  # the backend model


class Router:
    """Resolves requested names: exact key, first glob in file order, a backend model, default."""

    def __init__(self, config: Config, backends: dict[str, Backend]):
        self.backends = backends
        self.default = backends[config.default_backend] if config.default_backend else None
        self.exact: dict[str, tuple[Backend, str]] = {}
        self.globs: list[tuple[str, Backend, str]] = []
        for name, bcfg in config.backends.items():
            for key, value in bcfg.model_mapping.items():
                if any(ch in key for ch in "*?["):
                    self.globs.append((key, backends[name], value))
                else:
                    self.exact.setdefault(key, (backends[name], value))

    def exact_names(self) -> list[str]:
        """Names the config spells out (listed by /v1/models)."""
        return list(self.exact)

    def glob_matches(self, ids: list[str]) -> list[str]:
        """Of `ids`, those a glob serves and no exact key names, in the order given."""
        return [i for i in ids if i not in self.exact and any(fnmatch.fnmatchcase(i, p) for p, _, _ in self.globs)]

    async def serving(self, name: str) -> Route | None:
        """The route that serves `name` by name (exact, glob, hint suffix, backend model), without
        falling back to the default backend: what GET /v1/models/{id} answers for."""
        route = await self._match(name)
        if route is None and _SUFFIX.search(name):
            route = await self._match(_SUFFIX.sub("", name))
        return route

    async def resolve(self, name: str) -> Route:
        """The route for a requested model name, or a 404 that lists what is available."""
        route = await self.serving(name)
        if route is None and self.default is not None:
            route = Route(self.default, await default_model(self.default))
        if route is None:
            names = self.exact_names() + [m for b in self.backends.values() for m in b.configured_models()]
            raise not_found(f"model '{name}' is not served here. Available: {', '.join(dict.fromkeys(names))}")
        return route

    async def _match(self, name: str) -> Route | None:
        hit = self.exact.get(name)
        if hit:
            return Route(*hit)
        for pattern, backend, model in self.globs:
            if fnmatch.fnmatchcase(name, pattern):
                return Route(backend, model)
        for backend in self.backends.values():
            if name in backend.configured_models():
                return Route(backend, name)
        for backend in self.backends.values():
            if any(m.id == name for m in await backend.models()):
                return Route(backend, name)
        return None


async def default_model(backend: Backend) -> str:
    """The model a backend serves a name nothing maps: its configured model, else the first it lists."""
    if backend.config.model:
        return backend.config.model
    models = await backend.models()
    if not models:
        raise GatewayError(500, f"backend '{backend.name}' has no 'model' configured and lists no models")
    return models[0].id
