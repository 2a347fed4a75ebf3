"""SIGTERM on a real `claude-gateway serve` process: it stops accepting connections at once, lets
in-flight streams finish within server.shutdown_grace_s (cutting longer ones with an error event),
flushes the request log, and exits 0."""
from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import aiohttp
import pytest

from tests.compat_helpers import backend_table, body, with_server
from tests.conftest import TOKEN, gateway_config
from tests.gateway_process import GatewayProcess, start_serve
from tests.support.net import free_port
from tests.sse_checks import check_stream
from tests.support.poll import wait_for
from tests.support.sse import parse_frames, read_until_event
from tests.upstream import Script

HEADERS = {"x-api-key": TOKEN, "anthropic-version": "2023-06-01"}


async def _serve(tmp_path: Path, up, grace: float) -> tuple[GatewayProcess, Path]:
    log = tmp_path / "requests.jsonl"
    toml = gateway_config({"up": backend_table(up)}, default="up", log_path=str(log))
    path = tmp_path / "config.toml"
    path.write_text(with_server(toml, port=free_port(), shutdown_grace_s=grace))
    return await start_serve(path), log


async def _refused(url: str) -> bool:
    """True when a fresh connection to the gateway is refused."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        try:
            async with session.get(url + "/", timeout=aiohttp.ClientTimeout(total=2)):
                return False
        except aiohttp.ClientConnectorError:
            return True


async def _wait_refused(url: str, timeout: float = 3.0) -> bool:
    return await wait_for(lambda: _refused(url), timeout, interval=0.05)


def _log_lines(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_drains_in_flight_stream(start_upstream, tmp_path, sig):
    """A stream running when the signal arrives completes (message_stop) while new connections are
    already refused; the process exits 0 and its log line is on disk."""
    up = await start_upstream("openai")
    words = [f"w{i} " for i in range(16)]
    up.push(Script(deltas=[{"content": w} for w in words], delay_s=0.1))  # about 1.6 s
    gp, log = await _serve(tmp_path, up, grace=10)
    try:
        async with aiohttp.ClientSession() as session:
            resp = await session.post(gp.url + "/v1/messages", json=body(stream=True), headers=HEADERS)
            assert resp.status == 200
            head = await read_until_event(resp.content, "content_block_delta")
            gp.signal(sig)
            assert await _wait_refused(gp.url), "the gateway still accepts connections after the signal"
            assert up.completed == 0  # refused while the stream was still running
            rest = await resp.content.read()
        s = check_stream(parse_frames((head + rest).decode()))
        assert s.text == "".join(words) and s.stop_reason == "end_turn"
        assert await gp.wait_exit(10) == 0, gp.stderr
        lines = _log_lines(log)
        assert [(ln["path"], ln["status"], ln["stop_reason"], ln["error"]) for ln in lines] == \
            [("/v1/messages", 200, "end_turn", None)]
        assert "shutting down" in gp.stderr
    finally:
        await gp.stop()


async def test_sigterm_grace_period_cuts_long_stream(start_upstream, tmp_path):
    """A stream longer than shutdown_grace_s ends with an overloaded_error event (Claude Code retries
    on it), the upstream request is cancelled, the log line says why, and the process still exits 0."""
    up = await start_upstream("openai")
    up.push(Script(deltas=[{"content": f"w{i} "} for i in range(200)], delay_s=0.1))  # 20 s
    gp, log = await _serve(tmp_path, up, grace=0.5)
    try:
        async with aiohttp.ClientSession() as session:
            resp = await session.post(gp.url + "/v1/messages", json=body(stream=True), headers=HEADERS)
            head = await read_until_event(resp.content, "content_block_delta")
            gp.signal(signal.SIGTERM)
            rest = await asyncio.wait_for(resp.content.read(), 5)
        s = check_stream(parse_frames((head + rest).decode()), ok=False)
        assert s.text.startswith("w0 ") and "message_stop" not in s.names
        assert s.error["type"] == "overloaded_error" and "shutting down" in s.error["message"]
        assert await gp.wait_exit(10) == 0, gp.stderr
        assert up.cancelled == 1 and up.completed == 0
        [line] = _log_lines(log)
        assert line["status"] == 200 and line["error"]["type"] == "overloaded_error"
    finally:
        await gp.stop()


async def test_sigterm_when_idle_exits_at_once_and_flushes(start_upstream, tmp_path):
    """With nothing in flight the process exits promptly, every finished request already logged."""
    up = await start_upstream("openai")
    gp, log = await _serve(tmp_path, up, grace=30)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                async with session.post(gp.url + "/v1/messages", json=body(), headers=HEADERS) as resp:
                    assert resp.status == 200
        gp.signal(signal.SIGTERM)
        assert await gp.wait_exit(5) == 0, gp.stderr  # the 30 s grace is a limit, not a wait
        assert [ln["status"] for ln in _log_lines(log)] == [200, 200, 200]
    finally:
        await gp.stop()


async def test_sigterm_grace_period_answers_waiting_json_request(start_upstream, tmp_path):
    """A non-streaming request still waiting when the grace period ends gets a JSON 529
    overloaded_error (retryable) instead of a dropped connection."""
    up = await start_upstream("openai")
    up.push(Script(deltas=[{"content": "never"}], headers_delay_s=20))
    gp, log = await _serve(tmp_path, up, grace=0.5)
    try:
        async with aiohttp.ClientSession() as session:
            pending = asyncio.ensure_future(session.post(gp.url + "/v1/messages", json=body(), headers=HEADERS))
            await asyncio.wait_for(up.started.wait(), 5)
            gp.signal(signal.SIGTERM)
            resp = await asyncio.wait_for(pending, 5)
            assert resp.status == 529
            err = await resp.json()
        assert err["error"]["type"] == "overloaded_error" and "shutting down" in err["error"]["message"]
        assert await gp.wait_exit(10) == 0, gp.stderr
        [line] = _log_lines(log)
        assert line["status"] == 529 and line["error"]["type"] == "overloaded_error"
    finally:
        await gp.stop()
