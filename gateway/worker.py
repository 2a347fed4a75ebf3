"""The worker side of `serve --workers N`: what one of the N processes does beyond serving.

It tells the supervisor when it listens (a JSON line on stdout), stops when the supervisor is gone
(its stdin, a pipe from the supervisor, reaches end of file — even after a SIGKILL), and shares its
metrics with the other workers over a unix socket in the supervisor's run directory, so whichever
worker answers /metrics can add up all of them.
"""
from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from gateway.metrics_merge import merge

PEER_TIMEOUT_S = 2.0  # a worker that does not answer a scrape in time (restarting, stuck) is left out


@dataclass(frozen=True)
class WorkerRole:
    """Which worker this process is, of how many, and where the workers' sockets live."""

    index: int
    count: int
    rundir: Path

    def socket_path(self, index: int) -> str:
        return str(self.rundir / f"worker-{index}.sock")

    def describe(self) -> dict:
        """What /health says about the process that answered."""
        return {"index": self.index, "pid": os.getpid(), "workers": self.count}

    def ready(self, banner_env: dict[str, str]) -> None:
        """Tell the supervisor this worker accepts connections (and what the banner should print)."""
        os.write(1, orjson.dumps({"ready": self.index, "pid": os.getpid(), "env": banner_env}) + b"\n")

    def watch_supervisor(self, loop: asyncio.AbstractEventLoop, gone: Callable[[], None]) -> None:
        """Call `gone` on the loop once the supervisor's end of stdin closes (it exited or was killed)."""
        def wait() -> None:
            try:
                while os.read(0, 512):
                    pass
            except OSError:
                pass
            loop.call_soon_threadsafe(gone)

        threading.Thread(target=wait, name="supervisor-watch", daemon=True).start()

    async def serve_metrics(self, exposition: Callable[[], bytes]) -> asyncio.AbstractServer:
        """Answer each connection on this worker's socket with its own exposition, then close."""
        async def answer(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                writer.write(exposition())
                await writer.drain()
            finally:
                writer.close()

        path = self.socket_path(self.index)
        if os.path.exists(path):  # left by the worker this one replaces
            os.unlink(path)
        return await asyncio.start_unix_server(answer, path)

    def cleanup(self, server: asyncio.AbstractServer) -> None:
        """Close this worker's metrics socket and remove it (the run directory too, once it is empty)."""
        server.close()
        try:
            os.unlink(self.socket_path(self.index))
            os.rmdir(self.rundir)  # the supervisor removes it too; this covers a supervisor that was killed
        except OSError:
            pass  # other workers' sockets are still there

    async def metrics(self, own: bytes) -> bytes:
        """Every worker's metrics added up (the ones that answer within PEER_TIMEOUT_S)."""
        peers = [self._fetch(i) for i in range(self.count) if i != self.index]
        texts = [own.decode()] + [t for t in await asyncio.gather(*peers) if t is not None]
        return merge(texts)

    async def _fetch(self, index: int) -> str | None:
        async def read() -> bytes:
            reader, writer = await asyncio.open_unix_connection(self.socket_path(index))
            try:
                return await reader.read()
            finally:
                writer.close()

        try:
            return (await asyncio.wait_for(read(), PEER_TIMEOUT_S)).decode()
        except (OSError, asyncio.TimeoutError):
            return None
