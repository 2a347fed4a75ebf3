"""`claude-gateway serve` as a real subprocess (signals, exit codes, stderr, the log file on disk),
for the tests that need the process itself rather than an in-process app."""
from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class GatewayProcess:
    proc: asyncio.subprocess.Process
    url: str
    stderr_lines: list[str] = field(default_factory=list)
    _reader: asyncio.Task | None = None

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    async def wait_exit(self, timeout: float) -> int:
        rc = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5)
        return rc

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    async def stop(self) -> None:
        """Terminate if still running (teardown); kill after 10 s."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()


async def _collect(stream: asyncio.StreamReader, into: list[str]) -> None:
    while line := await stream.readline():
        into.append(line.decode("utf-8", "replace"))


def env_without_token() -> dict:
    """This process's environment minus GATEWAY_AUTH_TOKEN, so only the config decides the token."""
    env = dict(os.environ)
    env.pop("GATEWAY_AUTH_TOKEN", None)
    return env


async def run_cli(*args: str, env: dict | None = None, timeout: float = 30) -> tuple[int, str, str]:
    """Run `claude-gateway ARGS` to completion: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway.cli", *args, cwd=str(ROOT),
                                                env=env or dict(os.environ), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


async def start_serve(config_path: Path, *extra: str, env: dict | None = None,
                      timeout: float = 30) -> GatewayProcess:
    """Start `claude-gateway serve --config PATH` and wait for its "listening on" line."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway.cli", "serve", "--config",
                                                str(config_path), *extra, cwd=str(ROOT),
                                                env=env or dict(os.environ), stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    lines: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    url = None
    while url is None:
        try:
            line = await asyncio.wait_for(proc.stderr.readline(), max(0.1, deadline - loop.time()))
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError("the gateway did not start:\n" + "".join(lines)) from None
        if not line:
            await proc.wait()
            raise AssertionError(f"the gateway exited with {proc.returncode}:\n" + "".join(lines))
        text = line.decode("utf-8", "replace")
        lines.append(text)
        if "listening on " in text:
            url = text.split("listening on ", 1)[1].split()[0]
    gp = GatewayProcess(proc, url, lines)
    gp._reader = asyncio.ensure_future(_collect(proc.stderr, lines))
    return gp
