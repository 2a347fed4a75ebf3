"""`claude-gateway code [claude args…]`: Claude Code pointed at this gateway.

Reuses a gateway already listening on the configured port (after checking it is one), else starts
`serve` in the background and waits for it. Claude Code gets the environment `serve`'s banner
prints: base URL, token, model discovery, one model name per family as the config routes it, and
an auto-compact window no larger than the smallest routed context, so Claude Code compacts
before a local model's window is full.
"""
from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from backends import create_backend
from gateway.config import Config, ConfigError, load_config
from gateway.router import Route, Router

# The names Claude Code sends for each family when nothing overrides them: the globs a config
# writes for any release match these too.
FAMILIES = (("OPUS", "opus", "claude-opus-4-8"), ("SONNET", "sonnet", "claude-sonnet-4-6"),
            ("HAIKU", "haiku", "claude-haiku-4-5"))
START_TIMEOUT_S = 1800  # a first start may download a model
INSTALL_HINT = ("Claude Code is not installed (no `claude` on PATH). Install it with "
                "`npm install -g @anthropic-ai/claude-code` (needs Node.js 18 or newer) or "
                "`curl -fsSL https://claude.ai/install.sh | bash`, then run `claude-gateway code` again.")


@dataclass(frozen=True)
class FamilyRoute:
    env: str  # OPUS | SONNET | HAIKU
    name: str  # what Claude Code will send for this family
    route: Route


async def family_routes(router: Router) -> list[FamilyRoute]:
    """Per family: the config's own exact name for it if it has one, else the backend model that
    Claude Code's default name routes to (the router serves a backend model by its own name)."""
    out = []
    exact = router.exact_names()
    for env, family, default_name in FAMILIES:
        named = next((n for n in exact if family in n), None)
        route = await _resolve(router, named or default_name)
        if route is not None:
            out.append(FamilyRoute(env, named or route.model, route))
    return out


async def _resolve(router: Router, name: str) -> Route | None:
    try:
        return await router.resolve(name)
    except Exception:  # noqa: BLE001 — a family nothing routes (a 404, a backend down) is left to Claude Code
        return None


def client_url(cfg: Config) -> str:
    """The URL a client on this machine uses (a wildcard listen address becomes loopback)."""
    host = cfg.server.host or "127.0.0.1"
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{'https' if cfg.server.tls_cert else 'http'}://{host}:{cfg.server.port}"


def claude_env(url: str, token: str, families: list[FamilyRoute], contexts: dict[str, int | None]) -> dict[str, str]:
    """Environment variables for Claude Code; `contexts` maps a family's env name to its window."""
    env = {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_AUTH_TOKEN": token,
           "CLAUDE_CODE_ENABLE_GATEWAY_MODEL_DISCOVERY": "1"}
    for f in families:
        env[f"ANTHROPIC_DEFAULT_{f.env}_MODEL"] = f.name
    windows = [c for c in contexts.values() if c]
    if windows:
        # One value for every family: the smallest, so switching models never overflows first.
        env["CLAUDE_CODE_AUTO_COMPACT_WINDOW"] = str(min(windows))
        pct = autocompact_pct(min(windows))
        if pct is not None:
            env["CLAUDE_AUTOCOMPACT_PCT_OVERRIDE"] = str(pct)
    return env


# Claude Code 2.1.328 reads a window below COMPACT_WINDOW_MIN as that minimum, subtracts its
# output reservation, and fires at min(window * pct / 100, window - SUMMARY_BUFFER); the
# percentage is the only knob that still lowers the threshold for a smaller real window.
COMPACT_WINDOW_MIN = 100_000
OUTPUT_RESERVE = 20_000
SUMMARY_BUFFER = 13_000


def autocompact_pct(window: int) -> int | None:
    """CLAUDE_AUTOCOMPACT_PCT_OVERRIDE that puts the threshold below `window`, or None if not needed."""
    if window >= COMPACT_WINDOW_MIN:
        return None
    target = window - OUTPUT_RESERVE - SUMMARY_BUFFER  # the margin Claude Code keeps itself
    if target <= 0:
        # No threshold keeps that margin: a tiny one would compact every turn, so the server's
        # context budget and its "prompt is too long" answer stay in charge.
        return None
    return target * 100 // (COMPACT_WINDOW_MIN - OUTPUT_RESERVE)


def shell_line(env: dict[str, str]) -> str:
    """`K=V … claude`, quoted for a POSIX shell."""
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " claude"


def banner(url: str, env: dict[str, str], workers: int = 1) -> str:
    """serve's first lines: where it listens and how to point Claude Code at it."""
    count = f" ({workers} workers)" if workers > 1 else ""
    return f"claude-gateway listening on {url}{count}\n  use it: {shell_line(env)}\n  or run: claude-gateway code"


async def banner_env(cfg: Config, router: Router) -> dict[str, str]:
    """What serve's banner prints, from the running server's own routes (the token is not printed)."""
    families = await family_routes(router)
    contexts = {f.env: await _safe_context(f.route) for f in families}
    token = "<server.auth_token>" if cfg.server.auth_token else "any"
    return claude_env(client_url(cfg), token, families, contexts)


async def _safe_context(route: Route) -> int | None:
    try:
        return await route.backend.context_window(route.model)
    except Exception:  # noqa: BLE001 — an unknown window only leaves the variable out
        return None


# -- the command ------------------------------------------------------------------------------

def _fail(message: str) -> int:
    print(f"claude-gateway: {message}", file=sys.stderr)
    return 1


def _get(url: str, token: str | None, timeout: float = 3.0, cafile: str | None = None) -> tuple[int, str]:
    """(status, body) of a GET; raises OSError when nothing answers. `cafile`: the gateway's own
    certificate (server.tls_cert), trusted whether or not a public CA signed it."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(url, headers=headers)
    context = ssl.create_default_context(cafile=cafile) if cafile else None
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def _probe(url: str, cafile: str | None = None) -> str | None:
    """None when nothing listens at `url`; else what `GET /` answered."""
    try:
        status, body = _get(url + "/", None, cafile=cafile)
    except OSError:
        return None
    return f"{status} {body}"


def _is_gateway(answer: str) -> bool:
    return answer.startswith("200 claude-gateway")


def _serve_log(cfg: Config) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "claude-gateway" / f"serve-{cfg.server.port}.log"


def _start_gateway(cfg: Config, url: str) -> int | str:
    """Start `serve` detached and wait until it answers: its pid, or why it did not start."""
    log_path = _serve_log(cfg)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"claude-gateway: no gateway on {url}; starting one in the background (output: {log_path})",
          file=sys.stderr, flush=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg.path)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    shown = 0
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        shown = _echo_new(log_path, shown)  # download or demo-generation progress
        answer = _probe(url, cfg.server.tls_cert)
        if answer is not None:
            if _is_gateway(answer):
                return proc.pid
            proc.terminate()
            return f"something else answers on {url} ({answer[:80]!r})"
        if proc.poll() is not None:
            _echo_new(log_path, shown)
            return f"the gateway exited with status {proc.returncode} before listening (output above, also in {log_path})"
        time.sleep(0.2)
    proc.terminate()
    return f"the gateway did not start listening within {START_TIMEOUT_S} s (see {log_path})"


def _echo_new(path: Path, shown: int) -> int:
    try:
        data = path.read_bytes()
    except OSError:
        return shown
    if len(data) > shown:
        sys.stderr.buffer.write(data[shown:])
        sys.stderr.flush()
    return len(data)


async def _env_from_running(cfg: Config, url: str, token: str | None) -> dict[str, str]:
    """Routes from the config, context windows from the running gateway (which has loaded the models)."""
    backends = {name: create_backend(b) for name, b in cfg.backends.items()}
    try:
        families = await family_routes(Router(cfg, backends))
    finally:
        for b in backends.values():
            await b.close()
    windows: dict[str, int] = {}
    try:
        status, body = await asyncio.to_thread(_get, url + "/v1/models?limit=1000", token, 3.0, cfg.server.tls_cert)
        if status == 200:
            windows = {m["id"]: m["max_input_tokens"] for m in json.loads(body)["data"] if m.get("max_input_tokens")}
        status, body = await asyncio.to_thread(_get, url + "/health", token, 3.0, cfg.server.tls_cert)
        health = json.loads(body).get("backends", {}) if status == 200 else {}
    except (OSError, ValueError, KeyError, TypeError):
        health = {}
    contexts: dict[str, int | None] = {}
    for f in families:
        backend = f.route.backend
        if f.name in windows and f.name != f.route.model:  # a config name: the server resolved its window
            contexts[f.env] = windows[f.name]
        elif backend.config.type == "mlx" and f.route.model != backend.config.model:
            contexts[f.env] = windows.get(f.route.model)  # a mapped local model knows its own window
        else:  # a backend's window (a model id may be listed by several backends)
            contexts[f.env] = (health.get(backend.name) or {}).get("context_window")
    return claude_env(url, token or "any", families, contexts)


def main(argv: list[str]) -> int:
    """`code [--config PATH] [--] [claude args…]`: exec Claude Code against the gateway."""
    config_path = "config.toml"
    if argv[:1] == ["--config"] and len(argv) >= 2:
        config_path, argv = argv[1], argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        return _fail(str(exc))
    claude = shutil.which("claude")
    if claude is None:
        return _fail(INSTALL_HINT)
    url = client_url(cfg)
    answer = _probe(url, cfg.server.tls_cert)
    if answer is None:
        started = _start_gateway(cfg, url)
        if isinstance(started, str):
            return _fail(started)
        print(f"claude-gateway: gateway running in the background on {url} (pid {started}; stop it with "
              f"`kill {started}`)", file=sys.stderr, flush=True)
    elif not _is_gateway(answer):
        return _fail(f"port {cfg.server.port} is taken by something that is not claude-gateway (GET / answered "
                     f"{answer[:80]!r}). Stop it, or set another [server] port in {cfg.path}.")
    env = asyncio.run(_env_from_running(cfg, url, cfg.server.auth_token))
    child = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}  # would override the token
    child.update(env)
    if cfg.server.tls_cert:  # Claude Code is a Node program: trust the gateway's own certificate
        child["NODE_EXTRA_CA_CERTS"] = cfg.server.tls_cert
    os.execve(claude, [claude, *argv], child)
    return 0  # not reached
