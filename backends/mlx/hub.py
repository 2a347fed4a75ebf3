"""MLX models on the Hugging Face hub: where a model is on disk, `pull` (one progress bar per file,
checked against the hub's checksums, into the normal Hugging Face cache) and what the cache holds.

huggingface_hub and mlx-lm are imported on use: `models --local` and `check` stay cheap.
"""
from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol, TextIO

import orjson
import structlog

from backends.mlx import hub_file
from backends.mlx.options import MLXOptions
from gateway.protocol.backend import LocalModel, Pulled, PullFailed
from gateway.protocol.backend_config import BackendConfig
from gateway.protocol.errors import GatewayError

log = structlog.get_logger("backends.mlx")


class ModelUnavailable(Exception):
    """A model that is neither local nor downloadable; the message is one paragraph for the user."""


class NotLocal(ModelUnavailable):
    """A hub model that is not in the local cache, and nothing may download it now."""


class PullError(PullFailed):
    """A download that failed; the message is one paragraph saying what to do."""


def is_path_like(name: str) -> bool:
    """A name that can only be a local directory (a hub id is exactly owner/name)."""
    return name.startswith((".", "/", "~")) or name.count("/") != 1


def allow_patterns() -> list[str]:
    """The files of a repo that mlx-lm loads (weights, configs, tokenizer, template)."""
    from mlx_lm.utils import DEFAULT_ALLOW_PATTERNS
    return list(DEFAULT_ALLOW_PATTERNS)


def local_model(name: str) -> Path | None:
    """The directory holding `name` on this machine: the path itself, or a complete snapshot in the
    Hugging Face cache (config.json and weights present); None when it would need a download."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    if is_path_like(name):
        return None
    from huggingface_hub import snapshot_download
    try:
        found = Path(snapshot_download(name, allow_patterns=allow_patterns(), local_files_only=True))
    except Exception:  # noqa: BLE001 — any failure to find it locally means "not local"
        return None
    return found if _is_checkpoint(found) else None


def _is_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def missing_paragraph(name: str, backend: str) -> str:
    """Why `name` cannot be a model at all: neither a directory nor an owner/name hub id."""
    return (f"MLX model '{name}' for backend '{backend}' does not exist: it is neither a local directory nor a "
            f"Hugging Face id (owner/name). Point model = \"...\" in [backends.{backend}] at a directory holding "
            f"config.json, *.safetensors and the tokenizer, or run `claude-gateway serve --demo` for a generated "
            f"demo model that needs no download.")


def not_local_paragraph(name: str, backend: str) -> str:
    """What a request for a hub model that is not downloaded yet is told."""
    return (f"model '{name}' of backend '{backend}' is not downloaded yet; run `claude-gateway pull {name}` "
            f"(or set download_on_demand = true in [backends.{backend}] to download on the first request)")


def not_local_error(backend: str, name: str, exc: NotLocal) -> GatewayError:
    """The answer to a request for a model that is not downloaded: a 503 that no retry can fix
    (x-should-retry: false), and one log line."""
    log.warning("mlx_model_not_local", backend=backend, model=name, hint=f"claude-gateway pull {name}")
    return GatewayError(503, str(exc), "overloaded_error", {"x-should-retry": "false"})


def resolve_model_path(name: str, backend: str, download: bool = True, out: TextIO | None = None) -> Path:
    """A local directory for `name`: the path itself, the Hugging Face cache, or (when `download`)
    a pull with progress on `out` (stderr). Raises NotLocal when it is not local and may not download."""
    found = local_model(name)
    if found is not None:
        return found
    if is_path_like(name) or Path(name).expanduser().exists():
        raise ModelUnavailable(missing_paragraph(name, backend))
    if not download:
        raise NotLocal(not_local_paragraph(name, backend))
    log.info("mlx_model_fetch", model=name, hint="not in the local cache: downloading from Hugging Face")
    try:
        return Path(pull(name, out=out if out is not None else sys.stderr).path)
    except PullFailed as exc:  # a failed or a corrupted download alike
        raise ModelUnavailable(
            f"cannot load MLX model '{name}' for backend '{backend}': it is not in the local Hugging Face cache "
            f"and downloading it failed: {exc} Alternatively set model = \"/path/to/model\" in "
            f"[backends.{backend}] to a local copy (a directory with config.json, *.safetensors and the "
            f"tokenizer), or run `claude-gateway serve --demo` to try the gateway offline with a generated "
            f"demo model.") from None


def resolve_in_background(name: str, backend: str, download: bool) -> asyncio.Future[Path]:
    """resolve_model_path on a daemon thread. A download under way when the server shuts down does
    not hold the process until it ends (a worker of asyncio.to_thread would); the bytes it wrote
    stay for `claude-gateway pull` to continue from."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Path] = loop.create_future()

    def settle(result: Path | None, error: BaseException | None) -> None:
        if future.done():  # the caller was cancelled
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, error = resolve_model_path(name, backend, download), None
        except BaseException as exc:  # noqa: BLE001 — handed to the awaiting coroutine
            result, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    threading.Thread(target=run, name=f"mlx-model-{name}", daemon=True).start()
    return future


# -- pull -------------------------------------------------------------------------------------

def pull(name: str, out: TextIO = sys.stderr,
         on_file: Callable[[str, int], None] | None = None) -> Pulled:
    """Download the files mlx-lm needs of hub model `name` into the Hugging Face cache, skipping
    those already there; a connection that drops mid-file, or a pull that was killed mid-file,
    continues where it stopped. Each new file is checked against the hub's checksum."""
    from huggingface_hub import HfApi, snapshot_download, try_to_load_from_cache
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects

    api = HfApi()
    patterns = allow_patterns()
    try:
        commit = api.model_info(name).sha
        tree = {f.path: f for f in api.list_repo_tree(name, recursive=True, revision=commit)
                if isinstance(f, RepoFile)}
    except Exception as exc:  # noqa: BLE001 — every hub failure becomes one paragraph
        raise PullError(explain(name, exc)) from None
    files = sorted(filter_repo_objects(tree, allow_patterns=patterns))
    downloaded, nbytes = [], 0
    for path in files:
        entry = tree[path]
        if isinstance(try_to_load_from_cache(name, path, revision=commit), str):
            continue
        if on_file is not None:
            on_file(path, entry.size)
        try:
            hub_file.fetch(name, path, str(commit), hub_file.Expected.of(entry), out)
        except PullFailed:
            raise
        except Exception as exc:  # noqa: BLE001
            raise PullError(explain(name, exc, path)) from None
        downloaded.append(path)
        nbytes += entry.size
    try:
        # Every file is in the cache now: this records refs/main and the file list for offline
        # look-ups (local_model), without downloading anything again.
        snapshot = Path(snapshot_download(name, allow_patterns=patterns,
                                          tqdm_class=hub_file.bar_class(out, silent=True)))
    except Exception as exc:  # noqa: BLE001
        raise PullError(explain(name, exc)) from None
    return Pulled(name, str(snapshot), downloaded, nbytes)


def explain(name: str, exc: BaseException, path: str | None = None) -> str:
    """One paragraph for a failed hub call: offline, no such repo, private or gated, or other."""
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = constants.ENDPOINT
    local = "or point `model` at a local directory (config.json, *.safetensors, tokenizer)"
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(exc, GatedRepoError):
        return (f"{name} is a gated repository on {endpoint}: accept its terms on the model's page while logged "
                f"in, then set HF_TOKEN to a token of that account (or run `hf auth login`), {local}.")
    if isinstance(exc, RepositoryNotFoundError) and status == 401:
        refused = (response is not None and response.headers.get("X-Error-Message")
                   == "Invalid credentials in Authorization header")
        if refused:
            return (f"{endpoint} refused the token sent for {name} (HF_TOKEN or the saved login): set HF_TOKEN to "
                    f"a valid token, {local}.")
        return (f"{name} was not found on {endpoint} without a token: either the id is misspelled or the "
                f"repository is private. For a private repository set HF_TOKEN to a token that can read it "
                f"(or run `hf auth login`), {local}.")
    if isinstance(exc, RepositoryNotFoundError) or (status == 404 and path is None):
        return (f"{name} does not exist on {endpoint} (HTTP 404): check the id on the model's page (owner/name, "
                f"e.g. mlx-community/Qwen3-0.6B-4bit), {local}.")
    if isinstance(exc, RevisionNotFoundError):
        return f"{name} has no branch main on {endpoint}: check the id, {local}."
    if isinstance(exc, (httpx2.ConnectError, httpx2.TimeoutException, OfflineModeIsEnabled,
                        LocalEntryNotFoundError)):
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else f"{endpoint} cannot be reached"
        return (f"cannot download {name}: {why} ({type(exc).__name__}). Connect to the network and run "
                f"`claude-gateway pull {name}` again (files already downloaded are kept), set HF_ENDPOINT to a "
                f"reachable mirror, {local}.")
    if isinstance(exc, HfHubHTTPError):
        what = f"'{path}' of {name}" if path else name
        return (f"downloading {what} from {endpoint} failed with HTTP {status}: {str(exc).splitlines()[0]}. "
                f"Try `claude-gateway pull {name}` again later, {local}.")
    if isinstance(exc, OSError) and path is not None:
        return (f"downloading '{path}' of {name} failed: {exc}. Check the disk space of the Hugging Face cache "
                f"(HF_HOME) and run `claude-gateway pull {name}` again, {local}.")
    return f"downloading {name} failed: {type(exc).__name__}: {exc}. Run `claude-gateway pull {name}` again, {local}."


# -- what is local ----------------------------------------------------------------------------

def describe(name: str, path: Path) -> LocalModel:
    """Size on disk, quantisation and context window of the model directory `path`."""
    cfg = read_config(path)
    return LocalModel(name, str(path), _size_on_disk(path), _quantization(cfg), context_of(cfg))


def read_config(path: Path) -> dict:
    try:
        cfg = orjson.loads((path / "config.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def context_of(cfg: dict) -> int | None:
    """The context length a model's config.json states."""
    for key in ("max_position_embeddings", "max_seq_len", "n_positions", "seq_length"):
        value = cfg.get(key)
        if isinstance(value, int) and value > 0:
            return value
    text = cfg.get("text_config")
    return context_of(text) if isinstance(text, dict) else None


def window_on_disk(name: str) -> int | None:
    """The context window config.json states for a model on this machine; None when it is not here."""
    path = local_model(name)
    return context_of(read_config(path)) if path is not None else None


def _quantization(cfg: dict) -> str | None:
    q = cfg.get("quantization") or cfg.get("quantization_config")
    if not isinstance(q, dict) or "bits" not in q:
        return None
    group = f", group {q['group_size']}" if q.get("group_size") else ""
    mode = f" {q['mode']}" if isinstance(q.get("mode"), str) and q["mode"] != "affine" else ""
    return f"{q['bits']}-bit{mode}{group}"


def _size_on_disk(path: Path) -> int:
    """Bytes of the files in `path` (the blobs a cache snapshot links to, each counted once)."""
    seen: set[Path] = set()
    total = 0
    for f in path.rglob("*"):
        try:
            real = f.resolve()
            if real in seen or not real.is_file():
                continue
            seen.add(real)
            total += real.stat().st_size
        except OSError:
            continue
    return total


def cached_models(named: set[str]) -> list[LocalModel]:
    """MLX models in the Hugging Face cache: those `named` by the config, any from mlx-community, and
    any quantised by mlx (config.json `quantization`); each needs config.json and *.safetensors."""
    from huggingface_hub import scan_cache_dir
    try:
        cache = scan_cache_dir()
    except Exception:  # noqa: BLE001 — no cache directory yet: nothing is local
        return []
    out = []
    for repo in sorted(cache.repos, key=lambda r: r.repo_id.lower()):
        if repo.repo_type != "model":
            continue
        path = local_model(repo.repo_id)
        if path is None:
            continue
        if repo.repo_id in named or repo.repo_id.startswith("mlx-community/") or "quantization" in read_config(path):
            out.append(describe(repo.repo_id, path))
    return out


class _HubHost(Protocol):
    """What HubModels needs from the Backend it is mixed into (MLXBackend)."""

    config: BackendConfig
    options: MLXOptions
    name: str

    @property
    def _handles(self) -> Mapping[str, object]: ...  # loaded models by name

    @property
    def _preloading(self) -> set[str]: ...

    @property
    def _preload_failed(self) -> dict[str, str]: ...

    async def _model(self, name: str, download: bool = True) -> object: ...

    def configured_models(self) -> list[str]: ...

    def preload_names(self) -> list[str]: ...


class HubModels:
    """The model-management part of the Backend interface for the MLX backend (mixed into it)."""

    def preload_names(self: _HubHost) -> list[str]:
        """The models config `preload` names: true means every configured one."""
        preload = self.options.preload
        return self.configured_models() if preload is True else list(preload or [])

    def downloads_on_demand(self: _HubHost) -> bool:
        """The backend's `download_on_demand`."""
        return self.options.download_on_demand

    def check_names(self: _HubHost, names: list[str]) -> None:
        """Raise ModelUnavailable for a name that can be neither a directory here nor a hub id."""
        for name in names:
            if local_model(name) is None and (is_path_like(name) or Path(name).expanduser().exists()):
                raise ModelUnavailable(missing_paragraph(name, self.name))

    def loading(self: _HubHost) -> list[str]:
        return sorted(self._preloading)

    async def preload(self: _HubHost) -> None:
        """Load (downloading where needed) each preload model in turn; one that fails is reported
        in /health and on stderr, the others still load."""
        names = [n for n in self.preload_names() if n not in self._handles]
        self._preloading.update(names)
        try:
            for name in names:
                t0 = time.perf_counter()
                try:
                    await self._model(name, download=True)
                except Exception as exc:  # noqa: BLE001 — one model's failure must not stop the others' preload
                    message = str(exc) if isinstance(exc, ModelUnavailable) else f"{type(exc).__name__}: {exc}"
                    self._preload_failed[name] = message
                    log.error("mlx_preload_failed", backend=self.name, model=name, error=message)
                else:
                    log.info("mlx_preloaded", backend=self.name, model=name,
                             seconds=round(time.perf_counter() - t0, 2))
                finally:
                    self._preloading.discard(name)
        finally:  # cancelled at shutdown: nothing is loading any more
            self._preloading.difference_update(names)

    def missing_models(self: _HubHost) -> list[str]:
        return [m for m in self.configured_models() if local_model(m) is None]

    def pull(self: _HubHost, model: str, out: TextIO) -> Pulled:
        path = Path(model).expanduser()
        if path.is_dir():
            return Pulled(model, str(path), [], 0, local_dir=True)
        if path.exists() or is_path_like(model):
            raise PullError(missing_paragraph(model, self.name))
        return pull(model, out=out)

    def local_models(self, named: set[str]) -> list[LocalModel]:
        found = {m.name: m for m in cached_models(named)}
        for name in sorted(named):
            path = Path(name).expanduser()
            if name not in found and is_path_like(name) and path.is_dir():
                found[name] = describe(name, path)
        return list(found.values())
