"""Helpers for tests that read the request log a real gateway wrote."""
from __future__ import annotations

import asyncio
import gzip
import json
import sys
from pathlib import Path

from tests.support.poll import wait_for

ROOT = Path(__file__).resolve().parent.parent


def read_lines(path: Path) -> list[bytes]:
    """Raw lines (newline included) of a plain or gzipped log file."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        return f.read().splitlines(keepends=True)


def read_records(path: Path) -> list[dict]:
    """Every record of a log file; each line must be whole JSON."""
    out = []
    for line in read_lines(path):
        assert line.endswith(b"\n"), f"cut line in {path}: {line[:80]!r}"
        out.append(json.loads(line))
    return out


async def wait_records(path: Path, n: int, timeout: float = 5.0) -> list[dict]:
    """The log's records once it holds at least `n` (the writer thread appends shortly after a response)."""
    def whole() -> int:  # while waiting, a line still being written (or a file being rotated) is not an error
        try:
            return sum(1 for line in read_lines(path) if line.endswith(b"\n"))
        except FileNotFoundError:
            return 0

    count = await wait_for(whole, timeout, until=lambda c: c >= n)
    assert count >= n, f"{path} holds {count} records, expected {n}"
    return read_records(path)


async def run_cli(*args: str, cwd: Path = ROOT, env: dict | None = None) -> tuple[int, str, str]:
    """Run tools/log_replay.py as a subprocess without blocking the event loop (the gateways live on it)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, str(ROOT / "tools" / "log_replay.py"), *args,
                                                cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class OwnGateway:
    """A gateway the test stops itself (to check what shutdown flushes): `async with OwnGateway(toml) as gw`."""

    def __init__(self, toml: str, token: str | None = None):
        self.toml = toml
        self.token = token

    async def __aenter__(self):
        import aiohttp
        from aiohttp import web

        from gateway.config import parse_config
        from gateway.server import create_app
        from gateway.app_state import Gateway
        from tests.conftest import RunningGateway

        gw = Gateway(parse_config(self.toml))
        runner = web.AppRunner(create_app(gw), handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.running = RunningGateway(f"http://127.0.0.1:{port}", gw, runner, aiohttp.ClientSession(), self.token)
        return self.running

    async def __aexit__(self, *exc) -> None:
        await self.running.session.close()
        await self.running.runner.cleanup()


async def wait_until(predicate, timeout: float = 5.0) -> None:
    """Poll `predicate` until it holds (the request log is written by a thread, just after the response)."""
    assert await wait_for(predicate, timeout), "condition not reached in time"


async def run_cli_tty(*args: str, cwd: Path = ROOT, columns: int = 200) -> tuple[int, str]:
    """Run tools/log_replay.py with stdout on a pseudo-terminal `columns` wide (what a user at a terminal sees)."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    proc = await asyncio.create_subprocess_exec(sys.executable, str(ROOT / "tools" / "log_replay.py"), *args,
                                                cwd=cwd, stdout=slave, stderr=asyncio.subprocess.PIPE,
                                                # the terminal's own size, not a COLUMNS a test runner set
                                                env={k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")})
    os.close(slave)
    chunks = []
    loop = asyncio.get_running_loop()

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    await asyncio.gather(loop.run_in_executor(None, read), proc.wait())
    os.close(master)
    return proc.returncode, b"".join(chunks).decode().replace("\r\n", "\n")


def log_has(path: Path, text: str) -> bool:
    """Does the log file hold `text` yet? (False while a rotation has moved it away.)"""
    try:
        return text in path.read_text()
    except FileNotFoundError:
        return False
