"""Starts a real `llama-server` (built by llamacpp_build) on 127.0.0.1 for the real-server tier."""
from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.net import free_port, wait_http_sync

START_TIMEOUT_S = 60.0


@dataclass
class LlamaServer:
    """One running llama-server process (ours: stopped by its own PID)."""

    proc: subprocess.Popen
    port: int
    log: Path
    args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=10) as resp:
            return json.loads(resp.read())

    def post(self, path: str, body: dict) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_llama_server(binary: Path, model: Path, log: Path, *, ctx: int = 8192, parallel: int = 1,
                       extra: tuple[str, ...] = ()) -> LlamaServer:
    """llama-server for `model` with `ctx` tokens of KV cache split over `parallel` slots; waits until
    it serves (/health 200)."""
    port = free_port()
    args = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-c", str(ctx),
            "-np", str(parallel), "-t", "1", "--no-webui", "--no-warmup", *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = LlamaServer(proc, port, log, args)
    try:  # /health answers 503 while the model loads, 200 once it serves
        wait_http_sync(server.url + "/health", proc, timeout=START_TIMEOUT_S,
                       log=lambda: log.read_text(errors="replace")[-3000:])
    except RuntimeError:
        server.stop()
        raise
    return server
