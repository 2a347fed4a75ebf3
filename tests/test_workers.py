"""`claude-gateway serve --workers N` as real processes over real HTTP: connections spread over the
workers, /metrics adds up all of them, the shared request log keeps whole lines through rotations,
SIGTERM drains every worker, no worker outlives its supervisor, a dead worker is replaced, and a
config with an embedded MLX backend is refused."""
from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.compat_helpers import backend_table, body, with_server
from tests.conftest import TOKEN, gateway_config
from tests.gateway_process import GatewayProcess, run_cli, start_serve
from tests.support.net import free_port
from tests.sse_checks import check_stream
from tests.support.poll import wait_for
from tests.support.sse import parse_frames, read_until_event
from tests.upstream import TEXT, Script

HEADERS = {"x-api-key": TOKEN, "anthropic-version": "2023-06-01"}
START_S = 120  # N interpreters importing the gateway on a machine shared with other work
pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or not hasattr(__import__("socket"), "SO_REUSEPORT"),
                                reason="serve --workers needs SO_REUSEPORT")


async def _serve(tmp_path: Path, up, workers: int = 2, grace: float = 10, **log) -> tuple[GatewayProcess, Path]:
    path = tmp_path / "requests.jsonl"
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in log.items())
    toml = gateway_config({"up": backend_table(up)}, default="up", log_path=str(path))
    toml = toml.replace('level = "warning"\n', f'level = "warning"\n{extra}')
    config = tmp_path / "config.toml"
    config.write_text(with_server(toml, port=free_port(), shutdown_grace_s=grace))
    return await start_serve(config, "--workers", str(workers), timeout=START_S), path


def _fresh() -> aiohttp.ClientSession:
    """A client that opens a new connection per request (the kernel picks a worker per connection)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


async def _workers(url: str, count: int = 2, tries: int = 200) -> dict[int, int]:
    """worker index → pid, from /health on fresh connections until every worker has answered."""
    seen: dict[int, int] = {}
    async with _fresh() as session:
        for _ in range(tries):
            async with session.get(url + "/health") as resp:
                w = (await resp.json())["worker"]
            assert w["workers"] == count
            seen[w["index"]] = w["pid"]
            if len(seen) == count:
                return seen
    raise AssertionError(f"only workers {sorted(seen)} answered {tries} fresh connections")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie has exited; only its entry waits for a reaper


async def _until(check, timeout: float, what: str) -> None:
    assert await wait_for(check, timeout, interval=0.1), what


def _rundir(pid: int) -> Path:
    """The supervisor's run directory, from a worker's command line."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return Path(argv[argv.index(b"--worker-dir") + 1].decode())


async def _own_metrics(sock: Path) -> str:
    """One worker's own exposition, read from its metrics socket (what the others add up)."""
    reader, writer = await asyncio.open_unix_connection(str(sock))
    try:
        return (await reader.read()).decode()
    finally:
        writer.close()


def _requests_total(text: str, route: str = "/v1/messages") -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "gateway_requests_total" and s.labels.get("route") == route:
                total += s.value
    return total


def _gauge(text: str, name: str) -> float:
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


async def _post(session: aiohttp.ClientSession, url: str, payload: dict) -> str:
    async with session.post(url + "/v1/messages", json=payload, headers=HEADERS) as resp:
        text = await resp.text()
        assert resp.status == 200, text
        return text


async def test_requests_spread_and_metrics_add_up(start_upstream, tmp_path):
    """Fresh connections reach both workers; /metrics, whichever worker answers it, counts every
    request once (the sum of what each worker counted itself) and says 2 workers."""
    up = await start_upstream("openai")
    gp, _log = await _serve(tmp_path, up)
    try:
        pids = await _workers(gp.url)
        n = 40
        async with _fresh() as session:
            sem = asyncio.Semaphore(8)

            async def one(i: int) -> None:
                async with sem:
                    await _post(session, gp.url, body(stream=i % 2 == 0))

            await asyncio.gather(*(one(i) for i in range(n)))
            own = [_requests_total(await _own_metrics(_rundir(pids[0]) / f"worker-{i}.sock")) for i in (0, 1)]
            assert sum(own) == n and min(own) > 0, own  # both workers answered some
            for _ in range(6):  # scrapes land on either worker; each answers the same totals
                async with session.get(gp.url + "/metrics") as resp:
                    text = await resp.text()
                assert _requests_total(text) == n, text
                assert _gauge(text, "gateway_workers") == 2
                assert _gauge(text, "gateway_requests_in_flight") == 0
    finally:
        await gp.stop()


def _read_all(log: Path) -> list[bytes]:
    """Every line of the log and its rotations (plain and gzipped)."""
    lines = []
    for f in sorted(log.parent.iterdir()):
        if f.name.startswith(log.name) and not f.name.endswith(".lock"):
            assert not f.name.endswith(".tmp"), f"a compression was left half done: {f.name}"
            data = gzip.decompress(f.read_bytes()) if f.name.endswith(".gz") else f.read_bytes()
            assert data == b"" or data.endswith(b"\n"), f"{f.name} ends inside a line"
            lines += data.splitlines()
    return lines


async def test_log_lines_whole_from_both_workers_through_rotations(start_upstream, tmp_path):
    """Both workers append to one log under concurrent load while it rotates many times (and
    compresses): every line is whole JSON, none is lost or doubled, no rotated file is half-written."""
    up = await start_upstream("openai")
    gp, log = await _serve(tmp_path, up, rotate_mb=0.05, keep=200, gzip=True)
    try:
        pids = await _workers(gp.url)
        n = 240
        pad = "x" * 3000  # about 3 KB of body per line: some 15 rotations
        async with _fresh() as session:
            sem = asyncio.Semaphore(16)

            async def one(i: int) -> None:
                async with sem:
                    await _post(session, gp.url, body(messages=[{"role": "user", "content": f"{i} {pad}"}]))

            await asyncio.gather(*(one(i) for i in range(n)))
            own = [_requests_total(await _own_metrics(_rundir(pids[0]) / f"worker-{i}.sock")) for i in (0, 1)]
            assert min(own) > 0, own
    finally:
        await gp.stop()
    assert gp.proc.returncode == 0, gp.stderr
    records = [json.loads(line) for line in _read_all(log)]
    assert len(records) == n
    assert len({r["request_id"] for r in records}) == n
    assert sorted(int(r["body"]["messages"][0]["content"].split()[0]) for r in records) == list(range(n))
    rotated = [f for f in log.parent.iterdir() if f.name.endswith(".gz")]
    assert len(rotated) >= 5, sorted(f.name for f in log.parent.iterdir())


async def test_sigterm_drains_an_in_flight_stream_then_all_exit(start_upstream, tmp_path):
    """SIGTERM to the supervisor: the stream already running finishes (message_stop), new
    connections are refused, every worker and the supervisor exit 0."""
    up = await start_upstream("openai")
    gp, log = await _serve(tmp_path, up, grace=10)
    try:
        pids = await _workers(gp.url)
        words = [f"w{i} " for i in range(16)]
        up.push(Script(deltas=[{"content": w} for w in words], delay_s=0.1))
        async with aiohttp.ClientSession() as session:
            resp = await session.post(gp.url + "/v1/messages", json=body(stream=True), headers=HEADERS)
            assert resp.status == 200
            head = await read_until_event(resp.content, "content_block_delta")
            gp.signal(signal.SIGTERM)
            rest = await resp.content.read()
        s = check_stream(parse_frames((head + rest).decode()))
        assert s.text == "".join(words) and s.stop_reason == "end_turn"
        assert await gp.wait_exit(30) == 0, gp.stderr
        assert not any(_alive(p) for p in pids.values())
        assert "shutting down" in gp.stderr
        streamed = [json.loads(ln) for ln in log.read_text().splitlines() if '"stream":true' in ln]
        assert [(r["status"], r["stop_reason"]) for r in streamed] == [(200, "end_turn")]
    finally:
        await gp.stop()


async def test_sigkill_of_the_supervisor_leaves_no_worker(start_upstream, tmp_path):
    """A supervisor killed outright: its workers notice (their pipe from it closes) and exit, and
    the port is free again."""
    up = await start_upstream("openai")
    gp, _log = await _serve(tmp_path, up, grace=2)
    try:
        pids = await _workers(gp.url)
        gp.signal(signal.SIGKILL)
        await gp.wait_exit(10)
        await _until(lambda: not any(_alive(p) for p in pids.values()), 20,
                     f"workers {pids} outlived their supervisor")
        async with _fresh() as session:
            with pytest.raises(aiohttp.ClientConnectorError):
                await session.get(gp.url + "/health", timeout=aiohttp.ClientTimeout(total=2))
    finally:
        await gp.stop()
        for pid in pids.values():  # should the test fail: no stray process stays behind
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


async def test_a_killed_worker_is_replaced(start_upstream, tmp_path):
    """A worker that dies is logged and replaced by a new process with the same index, which serves."""
    up = await start_upstream("openai")
    up.default = TEXT("still here")
    gp, _log = await _serve(tmp_path, up)
    try:
        pids = await _workers(gp.url)
        os.kill(pids[1], signal.SIGKILL)
        await _until(lambda: "worker 1 restarted" in gp.stderr, START_S, "no replacement:\n" + gp.stderr)
        assert f"worker 1 (pid {pids[1]}) stopped with signal SIGKILL" in gp.stderr
        now = await _workers(gp.url)
        assert now[0] == pids[0] and now[1] != pids[1]
        async with _fresh() as session:
            for _ in range(6):
                assert "still here" in await _post(session, gp.url, body())
    finally:
        await gp.stop()


async def test_mlx_config_refused(tmp_path):
    """--workers with an embedded MLX backend: exit 2 and one paragraph saying why, before anything loads."""
    config = tmp_path / "config.toml"
    config.write_text(with_server(gateway_config({"local": {"type": "mlx", "model": "mlx-community/some-model"}},
                                                 default="local"), port=free_port()))
    rc, _out, err = await run_cli("serve", "--config", str(config), "--workers", "3")
    assert rc == 2, err
    assert "--workers 3 cannot serve the embedded MLX backend 'local'" in err
    assert "load its own copy of the model" in err
    assert err.count("\n") == 1  # one paragraph


async def test_workers_must_be_positive(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(gateway_config({}))
    rc, _out, err = await run_cli("serve", "--config", str(config), "--workers", "0")
    assert rc == 2 and "--workers: must be a whole number of processes, 1 or more" in err
