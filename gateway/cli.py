"""`claude-gateway serve | check | models | pull`."""
from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import json
import signal
import socket
import sys
from pathlib import Path

from aiohttp import web

from gateway.protocol.backend import BackendStartError
from gateway.code_cmd import banner, banner_env
from gateway.config import Config, ConfigError, load_config, parse_config, port_problem
from gateway.protocol.errors import GatewayError
from gateway.listener import ConnectionCap, ListenerSite, bind, raise_open_files_limit
from gateway.logs import configure_logging
from gateway.models_api import catalog
from gateway.models_cmd import model_warnings
from gateway.server import create_app, runner_options
from gateway.app_state import Gateway
from gateway.supervisor import refusal as workers_refusal, supervise
from gateway.tls import TLSError, server_context
from gateway.worker import WorkerRole


def _fail(message: str, code: int = 2) -> int:
    print(f"claude-gateway: {message}", file=sys.stderr)
    return code


def _port(text: str) -> int:
    """argparse type for --port: the rule server.port follows in the config file."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number between 1 and 65535, got {text!r}") from None
    if (problem := port_problem(port)) is not None:
        raise argparse.ArgumentTypeError(problem)
    return port


def _workers(text: str) -> int:
    """argparse type for --workers: a whole number of processes, at least 1."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of processes, 1 or more, got {text!r}")
    return count


def _worker_argv(args: argparse.Namespace) -> list[str]:
    """The command line of one worker: this `serve`, with the config and overrides it was given."""
    argv = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(Path(args.config).resolve())]
    if args.host:
        argv += ["--host", args.host]
    if args.port is not None:
        argv += ["--port", str(args.port)]
    if args.allow_public:
        argv.append("--allow-public")
    return argv


def _loopback_only(host: str) -> bool:
    """Does `host` (an address or a name) listen on this machine's loopback interface only?"""
    if not host:
        return False  # "" means every interface
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%", 1)[0]).is_loopback for i in infos)


def _public_refusal(cfg: Config) -> str | None:
    """Why `serve` must not start: a non-loopback address with no auth_token, unless allowed."""
    server = cfg.server
    if server.auth_token or server.allow_public or _loopback_only(server.host):
        return None
    return (f"refusing to listen on {server.host or 'every interface'} without an auth token: anyone who can "
            "reach this machine could use your backends. Set [server] auth_token (or the GATEWAY_AUTH_TOKEN "
            "environment variable) and give clients the same value as ANTHROPIC_AUTH_TOKEN, or listen on "
            "127.0.0.1; to serve without a token anyway, pass --allow-public or set [server] allow_public = true.")


def _describe(cfg: Config, name: str) -> str:
    b = cfg.backends[name]
    if len(b.base_urls) > 1:
        return f"{b.type} pool of {len(b.base_urls)} replicas"
    return f"{b.type} at {b.base_url}" if b.base_url else f"{b.type} model {b.model}"


async def _serve(cfg: Config, role: WorkerRole | None = None) -> int:
    """One server process: all of `serve`, or (with `role`) one worker of `serve --workers N`."""
    try:
        tls = server_context(cfg.server)
    except TLSError as exc:
        return _fail(str(exc), 1)
    gateway = Gateway(cfg, worker=role)
    raise_open_files_limit(cfg.server.max_connections)
    cap = ConnectionCap(cfg.server.max_connections, gateway.connections)
    try:
        # Bound before the backends load: a port in use is reported at once, not after a model download.
        bound = await bind(cfg.server.host, cfg.server.port, cap, ssl=tls, reuse_port=role is not None)
    except OSError as exc:
        await gateway.close()
        return _fail(f"cannot listen on {cfg.server.host}:{cfg.server.port}: {exc.strerror or exc}. "
                     "Another process may hold the port; pick another with --port.", 1)
    # aiohttp's own shutdown timeout is a backstop: Gateway.cut_inflight ends streams at the grace
    # period itself, with an error event, while their connections are still open.
    runner = web.AppRunner(create_app(gateway), **runner_options(gateway), access_log=None,
                           shutdown_timeout=cfg.server.shutdown_grace_s + 2)
    try:
        await runner.setup()
    except BackendStartError as exc:
        bound.close()
        await gateway.close()
        return _fail(str(exc), 1)
    cap.server = runner.server
    # Everything loaded so far lives as long as the process: move it out of the collector's
    # reach, or each full collection walks it again (~100 ms pauses under load, see bench/).
    gc.collect()
    gc.freeze()
    first = role is None or role.index == 0  # one worker speaks for all about the backends
    for name, detail in (gateway.unavailable if first else {}).items():
        print(f"claude-gateway: backend '{name}' ({_describe(cfg, name)}) is not reachable: {detail}. "
              f"Start that server or fix base_url in [backends.{name}] of {cfg.path}. The gateway runs anyway; "
              f"requests routed to '{name}' fail with api_error until it answers.", file=sys.stderr)
    scheme = "https" if tls is not None else "http"
    await ListenerSite(runner, bound, cfg.server.host, cfg.server.port, scheme).start()
    url = f"{scheme}://{cfg.server.host}:{cfg.server.port}"
    env = await banner_env(cfg, gateway.router) if first else {}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    shared = None
    if role is None:
        print(banner(url, env) + await _resident_lines(gateway), file=sys.stderr, flush=True)
        if gateway.preloads:
            loop.create_task(_announce_preloaded(gateway))
    else:  # the supervisor prints the banner and the shutdown line for all workers
        shared = await role.serve_metrics(gateway.metrics.exposition)
        role.watch_supervisor(loop, lambda: _supervisor_gone(role, stop))
        role.ready(env)
    await stop.wait()
    if role is None:
        print("claude-gateway: shutting down (in-flight requests get "
              f"{cfg.server.shutdown_grace_s:g} s to finish)", file=sys.stderr, flush=True)
    gateway.stopping = True
    loop.call_later(cfg.server.shutdown_grace_s, gateway.cut_inflight)
    await runner.cleanup()  # stops listening at once, waits for in-flight requests, then flushes the log
    if role is not None and shared is not None:
        role.cleanup(shared)
    return 0


def _supervisor_gone(role: WorkerRole, stop: asyncio.Event) -> None:
    if not stop.is_set():
        print(f"claude-gateway: worker {role.index}: the supervisor is gone; shutting down", file=sys.stderr,
              flush=True)
        stop.set()


async def _resident_lines(gateway: Gateway) -> str:
    """Banner lines for in-process engines: the models resident now, and those preload is loading."""
    out = ""
    for name, backend in gateway.backends.items():
        h = await backend.health()
        if h.resident is None:
            continue
        out += f"\n  {name}: resident: {', '.join(h.resident) or 'none'}"
        if h.loading:
            out += f"; loading: {', '.join(h.loading)} (preload; GET /health says when they are resident)"
    return out


async def _announce_preloaded(gateway: Gateway) -> None:
    await asyncio.gather(*gateway.preloads, return_exceptions=True)
    print("claude-gateway: preload finished;" + (await _resident_lines(gateway)).replace("\n ", "", 1),
          file=sys.stderr, flush=True)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header] + rows]
    return "\n".join(lines)


async def _check(cfg: Config) -> int:
    tls_line, tls_ok = None, True
    if cfg.server.tls_cert:
        try:
            server_context(cfg.server)
            tls_line = f"TLS: ok, {cfg.server.tls_cert} and {cfg.server.tls_key} are a certificate and its key"
        except TLSError as exc:
            tls_line, tls_ok = f"TLS: FAILED, {exc}", False
    gateway = Gateway(cfg)
    rows, failed = [], False
    windows: dict[str, int | None] = {}
    try:
        for name, backend in gateway.backends.items():
            try:
                await backend.start()
            except BackendStartError as exc:
                rows.append([name, backend.config.type, _describe(cfg, name), "FAILED", "-", str(exc)])
                failed = True
                continue
            except Exception as exc:  # noqa: BLE001 — every backend gets probed and reported
                rows.append([name, backend.config.type, _describe(cfg, name), "unreachable", "-", str(exc)])
                failed = True
                continue
            h = await backend.health()
            windows[name] = h.context_window
            failed |= not h.ok
            models = ", ".join(h.models) or h.detail
            if backend.replicas() is not None:
                models = f"{models} ({h.detail})"
            rows.append([name, backend.config.type, _describe(cfg, name), "ok" if h.ok else "unreachable",
                         str(h.context_window or "-"), models])
            for replica in backend.replicas() or []:
                failed |= not replica["ok"]
                rows.append(["", "replica", replica["url"], "ok" if replica["ok"] else "unreachable", "-",
                             "" if replica["ok"] else replica.get("last_error", "")])
        warnings = model_warnings(gateway.backends, windows)
    finally:
        await gateway.close()
    print(_table(rows, ["BACKEND", "TYPE", "WHERE", "STATUS", "CONTEXT", "MODELS"]))
    for warning in warnings:
        print(f"\nwarning: {warning}")
    if tls_line is not None:
        print(f"\n{tls_line}")
    print(f"\nconfig {cfg.path}: valid; " + ("some backends are not usable" if failed else "all backends answer")
          + ("" if tls_ok else "; the TLS pair is not usable"))
    return 1 if failed or not tls_ok else 0


async def _models(cfg: Config) -> int:
    gateway = Gateway(cfg)
    try:
        await gateway.start()
        entries = await catalog(gateway)
    except BackendStartError as exc:  # a model that cannot load: the same paragraph `serve` prints
        return _fail(str(exc), 1)
    except GatewayError as exc:
        return _fail(exc.message, 1)
    finally:
        await gateway.close()
    rows = [[e["id"], e["display_name"], str(e.get("max_input_tokens", "-"))] for e in entries]
    print(_table(rows, ["ID", "DISPLAY NAME", "CONTEXT"]))
    return 0


def _demo_config() -> Config:
    """An in-memory config: one mlx backend serving the generated demo model, for every model name."""
    from demo_model.generate import default_root, ensure_demo_model

    print(f"claude-gateway: preparing the demo model in {default_root()} (generated once; it answers "
          "a few scripted prompts and otherwise writes noise)", file=sys.stderr, flush=True)
    path = str(ensure_demo_model(progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True)))
    return parse_config(f"""
[log]
requests = "logs/requests.jsonl"
[routing]
default = "demo"
[backends.demo]
type = "mlx"
model = {json.dumps(path)}
max_output_tokens = 2048  # backstop: a sampled demo answer that never ends stops here
[backends.demo.model_mapping]
"claude-*" = {json.dumps(path)}
""")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `claude-gateway` command."""
    parser = argparse.ArgumentParser(prog="claude-gateway",
                                     description="Anthropic Messages API in front of local and self-hosted models.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--config", default="config.toml", help="config file (default: ./config.toml)")
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument("--port", type=_port, help="listen port, 1-65535 (overrides server.port)")
    serve.add_argument("--allow-public", action="store_true",
                       help="listen on a non-loopback --host even without server.auth_token")
    serve.add_argument("--workers", type=_workers, default=1, metavar="N",
                       help="worker processes sharing the port, each with its own event loop (default 1; "
                            "N > 1 needs a config without mlx backends)")
    for hidden in ("--worker-index", "--worker-count"):  # set by the supervisor of --workers N
        serve.add_argument(hidden, type=int, help=argparse.SUPPRESS)
    serve.add_argument("--worker-dir", help=argparse.SUPPRESS)
    serve.add_argument("--demo", action="store_true",
                       help="serve a generated tiny MLX demo model (offline; generated once into "
                            "~/.cache/claude-gateway, or $CLAUDE_GATEWAY_DEMO_DIR); ignores --config")
    check = sub.add_parser("check", help="validate the config and probe every backend")
    check.add_argument("--config", default="config.toml")
    models = sub.add_parser("models", help="list what /v1/models would list")
    models.add_argument("--config", default="config.toml")
    models.add_argument("--local", action="store_true",
                        help="list the MLX models on this machine instead (size, quantisation, context, config names)")
    pull = sub.add_parser("pull", help="download MLX models into the Hugging Face cache (default: every one the "
                          "config names), a progress bar per file")
    pull.add_argument("model", nargs="*", metavar="MODEL", help="Hugging Face ids (owner/name)")
    pull.add_argument("--config", default="config.toml")
    sub.add_parser("code", help="run Claude Code against the gateway, starting one in the background if none "
                   "listens: code [--config PATH] [claude args…]", add_help=False)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["code"]:  # everything after `code` belongs to claude, so argparse stays out of it
        from gateway.code_cmd import main as code_main
        return code_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "pull" and args.model:  # named models need no config
        from gateway.models_cmd import pull as pull_models
        return pull_models(args.model, None)

    try:
        cfg = _demo_config() if getattr(args, "demo", False) else load_config(args.config)
    except ConfigError as exc:
        return _fail(str(exc))
    if args.command == "serve":
        if args.host:
            cfg.server.host = args.host
        if args.port is not None:
            cfg.server.port = args.port
        if args.allow_public:
            cfg.server.allow_public = True
        if (refusal := _public_refusal(cfg)) is not None:
            return _fail(refusal)
        if args.workers > 1 and (refusal := workers_refusal(cfg, args.workers)) is not None:
            return _fail(refusal)
    configure_logging(cfg.log.level, secrets=cfg.secrets())
    if args.command == "pull":
        from gateway.models_cmd import pull as pull_models
        return pull_models([], cfg)
    if args.command == "models" and args.local:
        from gateway.models_cmd import models_local
        return models_local(cfg)
    if args.command == "serve" and args.workers > 1:
        coro = supervise(cfg, args.workers, _worker_argv(args))
    elif args.command == "serve" and args.worker_dir:
        coro = _serve(cfg, WorkerRole(args.worker_index, args.worker_count, Path(args.worker_dir)))
    else:
        coro = {"serve": _serve, "check": _check, "models": _models}[args.command](cfg)
    try:
        return _run_loop(coro, fast=args.command == "serve")
    except KeyboardInterrupt:
        return 130


def _run_loop(coro, fast: bool) -> int:
    """asyncio.run, on uvloop for `serve` when installed (cheaper socket I/O and wakeups per streamed chunk)."""
    if fast:
        try:
            import uvloop
        except ImportError:  # Windows, or a minimal install: the stock loop works the same
            pass
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)


if __name__ == "__main__":
    sys.exit(main())
