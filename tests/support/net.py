"""Ports and readiness for the servers that tests and bench scripts start on 127.0.0.1."""
from __future__ import annotations

import asyncio
import http.client
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable

import aiohttp

from tests.support.poll import wait_for, wait_for_sync

EXITED = "exited"  # what a readiness probe reports once the server's process is gone
ATTEMPT_TIMEOUT_S = 5.0  # one readiness GET; a server that is up answers far sooner


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_http(url: str, proc: subprocess.Popen | None = None, *, timeout: float = 30.0,
                    log: Callable[[], str] = lambda: "") -> None:
    """Poll GET `url` until it answers 200; RuntimeError (ending with `log()`) when `proc` exits first
    or `timeout` s pass."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT_S)) as session:
        async def probe() -> int | str | None:
            if proc is not None and proc.poll() is not None:
                return EXITED
            try:
                async with session.get(url) as resp:
                    return resp.status
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return None

        answer = await wait_for(probe, timeout, until=_settled, interval=0.05)
    _raise_unless_ready(url, answer, proc, timeout, log)


def wait_http_sync(url: str, proc: subprocess.Popen | None = None, *, timeout: float = 30.0,
                   log: Callable[[], str] = lambda: "") -> None:
    """`wait_http` for code without an event loop (it blocks the calling thread)."""
    def probe() -> int | str | None:
        if proc is not None and proc.poll() is not None:
            return EXITED
        try:
            with urllib.request.urlopen(url, timeout=ATTEMPT_TIMEOUT_S) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (OSError, http.client.HTTPException):
            return None

    _raise_unless_ready(url, wait_for_sync(probe, timeout, until=_settled, interval=0.05), proc, timeout, log)


def _settled(answer: int | str | None) -> bool:
    return answer == 200 or answer == EXITED


def _raise_unless_ready(url: str, answer: int | str | None, proc: subprocess.Popen | None, timeout: float,
                        log: Callable[[], str]) -> None:
    if answer == 200:
        return
    if answer == EXITED:
        assert proc is not None
        raise RuntimeError(f"the server for {url} exited with {proc.returncode}:\n{log()}")
    raise RuntimeError(f"{url} did not answer 200 within {timeout:g} s (last: {answer}):\n{log()}")
