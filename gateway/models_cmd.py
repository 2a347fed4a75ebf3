"""`claude-gateway pull [MODEL…]`, `models --local`, and the model warnings of `check`: which
models the config names, which of them are on this machine, and what is missing. The backends
do the work (Backend.pull, local_models, missing_models); this module prints."""
from __future__ import annotations

import sys
from pathlib import Path

from backends import create_backend
from gateway.config import Config
from gateway.protocol.backend import Backend, PullFailed
from gateway.protocol.backend_config import BackendConfig
from gateway.protocol.units import human_size

# Tokens of Claude Code's own prompt with its default tool set (system prompt, tool definitions
# and the first turns): a window below this overflows before any real work.
CLAUDE_CODE_PROMPT_TOKENS = 48_000


def mlx_names(cfg: Config) -> dict[str, list[str]]:
    """Each MLX model the config names → the config names that map to it ("local: default", "local: claude-*")."""
    out: dict[str, list[str]] = {}
    for name, b in cfg.backends.items():
        if b.type != "mlx":
            continue
        if b.model:
            out.setdefault(b.model, []).append(f"{name}: default")
        for key, value in b.model_mapping.items():
            out.setdefault(value, []).append(f"{name}: {key}")
    return out


def _mlx_backends(cfg: Config | None) -> dict[str, Backend]:
    """The config's MLX backends (created, not started), or one ad-hoc backend without a config."""
    if cfg is not None and any(b.type == "mlx" for b in cfg.backends.values()):
        return {n: create_backend(b) for n, b in cfg.backends.items() if b.type == "mlx"}
    return {"mlx": create_backend(BackendConfig(name="mlx", type="mlx"))}


def pull(models: list[str], cfg: Config | None) -> int:
    """Download each model (default: every MLX model the config names) with a progress bar per file."""
    backends = _mlx_backends(cfg)
    if models:
        todo = [(next(iter(backends.values())), m) for m in models]
    else:
        todo = [(b, m) for b in backends.values() for m in b.configured_models()]
        todo = list({m: (b, m) for b, m in reversed(todo)}.values())[::-1]  # each model once, first backend wins
    if not todo:
        print("claude-gateway: the config names no MLX model; name one: claude-gateway pull OWNER/NAME",
              file=sys.stderr)
        return 2
    failed = 0
    for backend, name in todo:
        if not Path(name).expanduser().is_dir():
            print(f"claude-gateway: pulling {name}", file=sys.stderr, flush=True)
        try:
            result = backend.pull(name, sys.stderr)
        except KeyboardInterrupt:
            end_bar = "\n" if sys.stderr.isatty() else ""
            print(f"{end_bar}claude-gateway: pull of {name} interrupted; the bytes downloaded so far are kept, and "
                  f"`claude-gateway pull {name}` continues from them", file=sys.stderr, flush=True)
            return 130
        except PullFailed as exc:
            print(f"claude-gateway: {exc}", file=sys.stderr, flush=True)
            failed += 1
            continue
        if result.local_dir:
            print(f"claude-gateway: {name} is a local directory; nothing to pull", file=sys.stderr)
        elif result.downloaded:
            print(f"claude-gateway: {name}: {len(result.downloaded)} files, {human_size(result.bytes)} "
                  f"downloaded and verified, in {result.path}", file=sys.stderr, flush=True)
        else:
            print(f"claude-gateway: {name}: up to date, in {result.path}", file=sys.stderr, flush=True)
    return 1 if failed else 0


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header] + rows)


def models_local(cfg: Config) -> int:
    """Print the MLX models on this machine (cached hub models, the config's local paths) and what is missing."""
    named = mlx_names(cfg)
    backend = next(iter(_mlx_backends(cfg).values()))
    found = backend.local_models(set(named))
    rows = [[m.name, human_size(m.size_bytes), m.quantization or "none", str(m.context or "-"),
             ", ".join(named.get(m.name, [])) or "-"] for m in found]
    print(_table(rows, ["MODEL", "SIZE", "QUANTISATION", "CONTEXT", "CONFIG NAMES"]) if rows
          else "no MLX models on this machine yet")
    have = {m.name for m in found}
    for name in named:
        if name not in have:
            hint = "the directory does not exist" if Path(name).expanduser().is_absolute() or name.startswith(".") \
                else f"run `claude-gateway pull {name}`"
            print(f"not local: {name} ({', '.join(named[name])}): {hint}")
    return 0


def model_warnings(backends: dict[str, Backend], windows: dict[str, int | None]) -> list[str]:
    """`check`'s warnings: configured models not downloaded yet, and backends whose context window
    (`windows`: backend → its default model's window) is below what Claude Code's prompt needs."""
    out = []
    for name, backend in backends.items():
        for model in backend.missing_models():
            demand = backend.downloads_on_demand()
            out.append(f"backend '{name}': {model} is not downloaded yet; run `claude-gateway pull {model}`"
                       + (" (download_on_demand is set: the first request for it downloads it)" if demand
                          else " (until then requests for it get 503)"))
    for name, window in windows.items():
        if window is not None and window < CLAUDE_CODE_PROMPT_TOKENS:
            out.append(f"backend '{name}' has a {window}-token context window; Claude Code's own prompt with "
                       f"its default tools needs about {CLAUDE_CODE_PROMPT_TOKENS} tokens, so it overflows or "
                       f"compacts at once. Use a model with a larger window (or raise context_window if the "
                       f"model supports more).")
    return out
