"""`serve --workers N`: a supervisor process that runs N `serve` workers on one port.

Each worker is a whole `claude-gateway serve` process with its own event loop that binds the port
with SO_REUSEPORT, so the kernel spreads incoming connections over them. The supervisor holds the
port too (bound, never listening: it receives no connections) so it stays reserved while a worker
restarts, prints the banner once every worker listens, replaces a worker that dies (with backoff),
and on SIGTERM/SIGINT has every worker drain its in-flight requests. Workers read a pipe from the
supervisor and shut down when it closes, so none outlives a supervisor that was killed.
"""
from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import orjson

from gateway.code_cmd import banner
from gateway.config import Config

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 30.0  # a worker that ran this long before dying restarts without the built-up backoff
_KILL_AFTER_S = 10.0  # beyond shutdown_grace_s: a worker still running then is killed


def refusal(cfg: Config, count: int) -> str | None:
    """Why `serve --workers N` cannot run this config, as one paragraph (or None)."""
    mlx = [name for name, b in cfg.backends.items() if b.type == "mlx"]
    if mlx:
        return (f"--workers {count} cannot serve the embedded MLX backend '{mlx[0]}': every worker is a separate "
                f"process, so each would load its own copy of the model ({count} copies of the weights in memory, "
                f"{count} engines competing for one GPU, {count} separate prompt caches). Run `serve` without "
                "--workers for a config with an mlx backend, or run the model behind a server of its own "
                "(mlx_lm.server, vLLM, llama.cpp) and reach it through an openai, vllm or llamacpp backend.")
    if not hasattr(socket, "SO_REUSEPORT"):
        return (f"--workers {count} needs SO_REUSEPORT, which this platform lacks, so the workers cannot share "
                "one port. Run `serve` without --workers.")
    return None


def _reserve(host: str, port: int) -> list[socket.socket]:
    """Bind host:port with SO_REUSEPORT without listening (OSError when a process without it holds the port)."""
    held = []
    try:
        for family, type_, proto, _name, addr in socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                                    flags=socket.AI_PASSIVE):
            sock = socket.socket(family, type_, proto)
            held.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:  # as asyncio binds it: IPv6 only, next to an IPv4 socket
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
    except OSError:
        for sock in held:
            sock.close()
        raise
    return held


def _exit_text(rc: int) -> str:
    if rc < 0:
        try:
            return f"signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"signal {-rc}"
    return f"exit code {rc}"


class Supervisor:
    """Starts, watches and stops the workers of one `serve --workers N`."""

    def __init__(self, cfg: Config, count: int, argv: list[str]):
        self.cfg = cfg
        self.count = count
        self.argv = argv  # `serve` with the same config and overrides, minus --workers
        self.rundir = Path(tempfile.mkdtemp(prefix="claude-gateway-"))  # 0700: the workers' metrics sockets
        self.procs: list[asyncio.subprocess.Process | None] = [None] * count
        self.stop = asyncio.Event()
        self._pumps: set[asyncio.Future] = set()  # copy what workers print after "ready" (a full pipe blocks them)

    async def _spawn(self, index: int) -> tuple[asyncio.subprocess.Process, dict | None]:
        """Start worker `index`; its ready message, or None when it exited first."""
        proc = await asyncio.create_subprocess_exec(
            *self.argv, "--worker-index", str(index), "--worker-count", str(self.count),
            "--worker-dir", str(self.rundir), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        self.procs[index] = proc
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        try:
            ready = orjson.loads(line) if line else None
        except orjson.JSONDecodeError:
            ready = None
        self._pumps.add(pump := asyncio.ensure_future(_pass_on(proc.stdout)))
        pump.add_done_callback(self._pumps.discard)
        return proc, ready

    async def _keep(self, index: int, proc: asyncio.subprocess.Process) -> None:
        """Replace worker `index` whenever it dies, until the supervisor stops."""
        backoff = BACKOFF_FIRST_S
        while True:
            started = time.monotonic()
            rc = await proc.wait()
            if self.stop.is_set():
                return
            if time.monotonic() - started >= HEALTHY_AFTER_S:
                backoff = BACKOFF_FIRST_S
            print(f"claude-gateway: worker {index} (pid {proc.pid}) stopped with {_exit_text(rc)}; starting a new "
                  f"one in {backoff:g} s", file=sys.stderr, flush=True)
            try:
                await asyncio.wait_for(self.stop.wait(), backoff)
                return
            except asyncio.TimeoutError:
                pass
            backoff = min(backoff * 2, BACKOFF_MAX_S)
            proc, ready = await self._spawn(index)
            if ready is not None:
                print(f"claude-gateway: worker {index} restarted (pid {proc.pid})", file=sys.stderr, flush=True)

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the exit code of `serve`."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)
        try:
            # Worker 0 alone first: a worker that cannot start says why once, not N times.
            first, ready = await self._spawn(0)
            started = [(first, ready)]
            if ready is not None:
                started += await asyncio.gather(*(self._spawn(i) for i in range(1, self.count)))
            failed = next((p for p, r in started if r is None), None)
            if failed is not None:
                self.stop.set()
                await self._terminate()
                return await failed.wait() or 1
            assert ready is not None  # worker 0 is in `started`: had it failed, `failed` would say so
            self._banner(ready)
            keepers = [asyncio.ensure_future(self._keep(i, p)) for i, (p, _r) in enumerate(started)]
            await self.stop.wait()
            print("claude-gateway: shutting down (in-flight requests get "
                  f"{self.cfg.server.shutdown_grace_s:g} s to finish)", file=sys.stderr, flush=True)
            for keeper in keepers:  # first: none may start a worker while the others are stopped
                keeper.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)
            await self._terminate()
            return 0
        finally:
            await self._terminate()
            shutil.rmtree(self.rundir, ignore_errors=True)

    def _banner(self, ready: dict) -> None:
        scheme = "https" if self.cfg.server.tls_cert else "http"
        url = f"{scheme}://{self.cfg.server.host}:{self.cfg.server.port}"
        print(banner(url, ready["env"], self.count), file=sys.stderr, flush=True)

    async def _terminate(self) -> None:
        """SIGTERM every live worker (each drains like a single `serve`), then wait; kill stragglers."""
        live = [p for p in self.procs if p is not None and p.returncode is None]
        for proc in live:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        if not live:
            return
        timeout = self.cfg.server.shutdown_grace_s + _KILL_AFTER_S
        _done, pending = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in live], timeout=timeout)
        for proc in live:
            if proc.returncode is None:
                proc.kill()
        if pending:
            await asyncio.wait(pending)


async def _pass_on(stream: asyncio.StreamReader) -> None:
    while line := await stream.readline():
        sys.stdout.buffer.write(line)
        sys.stdout.flush()


async def supervise(cfg: Config, count: int, argv: list[str]) -> int:
    """Run `count` workers of `serve` on cfg's port (SO_REUSEPORT) until SIGTERM/SIGINT."""
    try:
        held = _reserve(cfg.server.host, cfg.server.port)
    except OSError as exc:
        print(f"claude-gateway: cannot listen on {cfg.server.host}:{cfg.server.port}: {exc.strerror or exc}. "
              "Another process may hold the port; pick another with --port.", file=sys.stderr)
        return 1
    try:
        return await Supervisor(cfg, count, argv).run()
    finally:
        for sock in held:
            sock.close()
