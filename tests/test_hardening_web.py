"""Hostile clients against the web layer, over real sockets: DNS rebinding and cross-site requests,
non-JSON posts, unbounded /metrics labels, /health amplification, slow and idle connections, bodies
of refused requests, and what malformed traffic prints on stderr."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.compat_helpers import (
    MODEL,
    assert_error,
    backend_table,
    body,
    start_stack,
    with_server,
)
from tests.conftest import TOKEN, gateway_config
from tests.gateway_process import run_cli, start_serve
from tests.support.net import free_port
from tests.support.poll import wait_for
from tests.raw_http import hostport, raw_request
from tests.upstream import TEXT, Script, Upstream


def _error_type(raw_body: bytes) -> str:
    return json.loads(raw_body)["error"]["type"]


# -- item 2: browser attacks --------------------------------------------------------------------

EVIL_HOSTS = ["rebind.evil.example", "rebind.evil.example:8082", "127.0.0.1.evil.example", "localhost.evil.example",
              "10.1.2.3", "[fe80::1]:8082"]


@pytest.mark.parametrize("host", EVIL_HOSTS)
async def test_dns_rebinding_host_is_refused_everywhere(start_upstream, start_gateway, host):
    """A page on a rebound name reaches 127.0.0.1 but its requests carry that name as Host: /v1/messages,
    /health and /metrics all answer 403 permission_error, and the upstream never hears of it."""
    up, gw = await start_stack(start_upstream, start_gateway, token=None)
    for method, path, payload in [("POST", "/v1/messages", json.dumps(body()).encode()), ("GET", "/health", b""),
                                  ("GET", "/metrics", b""), ("GET", "/v1/models", b"")]:
        req = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode() + payload
        status, headers, rest = await raw_request(gw.url, req)
        assert status == 403, (path, rest)
        assert headers["content-type"].startswith("application/json")
        assert _error_type(rest) == "permission_error"
        assert "allowed_hosts" in json.loads(rest)["error"]["message"]
    assert up.received == []


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "localhost", "LOCALHOST.:{port}",
                                  "[::1]:{port}", "127.0.0.2", "gateway.lan:9999", "GATEWAY.LAN"])
async def test_loopback_and_configured_hosts_are_served(start_upstream, start_gateway, host):
    """What real clients send (Claude Code: Host 127.0.0.1:port) and names in server.allowed_hosts work."""
    _, gw = await start_stack(start_upstream, start_gateway, token=None, server={"allowed_hosts": ["gateway.lan"]})
    host = host.format(port=hostport(gw.url)[1])
    payload = json.dumps(body()).encode()
    status, _, rest = await raw_request(gw.url, (
        f"POST /v1/messages HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode() + payload)
    assert status == 200, rest
    assert json.loads(rest)["content"][0]["text"] == "Hello there!"


async def test_cross_site_simple_post_runs_nothing(start_upstream, start_gateway):
    """The classic cross-site attack on a tokenless local gateway: a text/plain form/fetch POST from a
    web page. Refused (Origin not allowed) before any generation; without the Origin header it is
    still refused (415), and an allowed origin gets through with JSON."""
    up, gw = await start_stack(start_upstream, start_gateway, token=None,
                               server={"allowed_origins": ["http://localhost:3000"]})
    payload = json.dumps(body())
    for headers, status, type_ in [
            ({"Origin": "https://evil.example", "Content-Type": "text/plain"}, 403, "permission_error"),
            ({"Origin": "null", "Content-Type": "application/json"}, 403, "permission_error"),
            ({"Origin": "http://localhost:3000.evil.example", "Content-Type": "application/json"}, 403,
             "permission_error"),
            ({"Content-Type": "text/plain;charset=UTF-8"}, 415, "invalid_request_error"),
            ({"Content-Type": "multipart/form-data; boundary=x"}, 415, "invalid_request_error")]:
        resp = await gw.session.post(gw.url + "/v1/messages", data=payload, headers=headers)
        await assert_error(resp, status, type_)
    assert up.received == []
    resp = await gw.session.post(gw.url + "/v1/messages", data=payload,
                                 headers={"Origin": "http://localhost:3000", "Content-Type": "application/json"})
    assert resp.status == 200, await resp.text()
    assert len(up.received) == 1


async def test_origin_refused_on_get_routes_too(start_upstream, start_gateway):
    """/health and /metrics carry no token check for local scrapers, so a page must not read them either."""
    _, gw = await start_stack(start_upstream, start_gateway)
    for path in ("/health", "/metrics", "/v1/models", "/"):
        resp = await gw.session.get(gw.url + path, headers={"Origin": "http://attacker.example"})
        await assert_error(resp, 403, "permission_error")
    assert (await gw.session.get(gw.url + "/health")).status == 200


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded", "text/plain",
                                          "application/octet-stream", "application/jsonx"])
async def test_non_json_post_is_415(start_upstream, start_gateway, content_type):
    """Every POST route of the API answers a non-JSON (or missing) content type with 415 in the Anthropic
    shape, after auth (a client without the token learns nothing more than 401)."""
    up, gw = await start_stack(start_upstream, start_gateway)
    headers = {"x-api-key": TOKEN}
    if content_type:
        headers["Content-Type"] = content_type
    for path in ("/v1/messages", "/v1/messages/count_tokens", "/v1/v1/messages", "/api/event_logging/batch"):
        resp = await gw.session.post(gw.url + path, data=json.dumps(body()).encode(), headers=headers,
                                     skip_auto_headers=["Content-Type"])
        data = await assert_error(resp, 415, "invalid_request_error")
        assert "application/json" in data["error"]["message"]
    no_key = await gw.session.post(gw.url + "/v1/messages", data=b"x", headers={"Content-Type": "text/plain"})
    await assert_error(no_key, 401, "authentication_error")
    assert up.received == []


async def test_json_variants_and_real_clients_still_work(start_upstream, start_gateway):
    """application/json with a charset, the anthropic SDK, and curl with -H content-type all succeed;
    curl -d without it gets the 415 that says what to add."""
    _, gw = await start_stack(start_upstream, start_gateway)
    resp = await gw.session.post(gw.url + "/v1/messages", data=json.dumps(body()),
                                 headers={"x-api-key": TOKEN, "Content-Type": "application/json; charset=utf-8"})
    assert resp.status == 200, await resp.text()
    msg = await gw.anthropic().messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text == "Hello there!"
    base = ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", gw.url + "/v1/messages", "-H", f"x-api-key: {TOKEN}",
            "-H", "anthropic-version: 2023-06-01"]
    for extra, status in [(["-H", "content-type: application/json"], "200"), ([], "415")]:
        proc = await asyncio.create_subprocess_exec(*base, *extra, "-d", json.dumps(body()),
                                                    stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        text, code = out.decode().rsplit("\n", 1)
        assert code == status, text
        if status == "415":
            assert "application/x-www-form-urlencoded" in json.loads(text)["error"]["message"]


async def test_public_bind_allows_configured_names_only(start_upstream, start_gateway):
    """host = 0.0.0.0 (with a token): the bind address names no host, so only loopback, localhost and
    server.allowed_hosts are served."""
    up = await start_upstream()
    toml = with_server(gateway_config({"up": backend_table(up)}, default="up"), host="0.0.0.0",
                       allowed_hosts=["gw.example.org"])
    gw = await start_gateway(toml)
    for host, status in [("gw.example.org", 200), ("127.0.0.1", 200), ("0.0.0.0", 403), ("other.example.org", 403)]:
        resp = await gw.session.get(gw.url + "/v1/models", headers={"Host": host, "x-api-key": TOKEN})
        assert resp.status == status, (host, await resp.text())


# -- item 4: /metrics labels --------------------------------------------------------------------

async def test_metrics_labels_are_bounded(start_upstream, start_gateway):
    """Model names the config does not know, however long, count as model="other"; odd methods on
    unknown routes count as method="other". Configured names, globs and backend models keep their label."""
    up = await start_upstream()
    up.default = TEXT("ok")
    gw = await start_gateway(gateway_config({"up": backend_table(up)}, default="up"))
    huge = ["x" * (1024 * 1024) + str(i) for i in range(3)]
    for name in huge + [MODEL, "claude-sonnet-9", "test-model"]:
        status, data = await gw.messages(body(model=name, max_tokens=5))
        assert status == 200, data
    for method in ("PROPFIND", "PURGE"):
        await (await gw.session.request(method, gw.url + "/v1/nope")).read()
    resp = await gw.session.get(gw.url + "/metrics")
    text = await resp.text()
    assert len(text) < 64 * 1024, len(text)  # three 1 MB names made it > 3 MB before
    assert 'model="other"' in text and f'model="{MODEL}"' in text and 'model="claude-*"' in text
    assert 'model="test-model"' in text and "claude-sonnet-9" not in text
    assert 'gateway_unknown_routes_total{method="other"} 2.0' in text


# -- item 9: /health --------------------------------------------------------------------------

class SlowModels(Upstream):
    """An OpenAI upstream whose /v1/models takes `delay` seconds and counts its calls."""

    def __init__(self, delay: float):
        super().__init__("openai")
        self.delay = delay
        self.models_calls = 0

    async def list_models(self, request: web.Request) -> web.Response:
        self.models_calls += 1
        await asyncio.sleep(self.delay)
        return await super().list_models(request)


async def test_health_does_not_amplify_or_queue(start_gateway):
    """50 concurrent /health against a backend whose /v1/models takes 2 s: a couple of upstream calls,
    not 50, and every answer within about one upstream delay instead of 2, 4, … s behind each other.
    Later calls answer from the snapshot at once while it is refreshed in the background."""
    up = SlowModels(2.0)
    await up.start()
    try:
        gw = await start_gateway(gateway_config({"up": backend_table(up)}, default="up"))
        up.models_calls = 0  # the start-up probe

        async def one() -> float:
            t0 = time.perf_counter()
            resp = await gw.session.get(gw.url + "/health")
            data = await resp.json()
            assert resp.status == 200 and data["backends"]["up"]["ok"], data
            return time.perf_counter() - t0

        times = await asyncio.gather(*(one() for _ in range(50)))
        assert up.models_calls <= 2, up.models_calls
        assert max(times) < 3.5, sorted(times)[-5:]
        gw.gateway.health.refresh_s = 0  # every snapshot is now stale: refreshes run, nobody waits for them
        calls = up.models_calls
        times = await asyncio.gather(*(one() for _ in range(20)))
        assert max(times) < 1.0, sorted(times)[-5:]  # not waiting for the 2 s refresh
        assert up.models_calls - calls <= 1
    finally:
        await up.stop()


async def test_health_reports_a_backend_going_down(start_upstream, start_gateway):
    """The background state follows the backend: a stopped upstream shows as degraded after a refresh."""
    up = await start_upstream()
    gw = await start_gateway(gateway_config({"up": backend_table(up)}, default="up"))
    assert (await (await gw.get("/health")).json())["status"] == "ok"
    await up.stop()
    gw.gateway.health.refresh_s = 0
    async def health() -> dict:
        return await (await gw.get("/health")).json()

    data = await wait_for(health, 10, until=lambda d: d["status"] == "degraded", interval=0.1)
    assert data["status"] == "degraded" and not data["backends"]["up"]["ok"], data


# -- item 8: slow clients, idle connections, unread bodies (the real `serve` process) -------------

async def _serve(start_upstream, tmp_path: Path, level: str = "warning", **server):
    up = await start_upstream()
    up.default = TEXT("ok")
    toml = with_server(gateway_config({"up": backend_table(up)}, default="up",
                                      log_path=str(tmp_path / "requests.jsonl")), port=free_port(), **server)
    toml = toml.replace('level = "warning"', f'level = "{level}"')
    path = tmp_path / "config.toml"
    path.write_text(toml)
    gp = await start_serve(path)
    return up, gp


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    """Does the server end this connection (EOF or reset, maybe after an error answer) within `within` s?"""
    try:
        while await asyncio.wait_for(reader.read(65536), within):
            pass
        return True
    except (ConnectionError, OSError):
        return True
    except asyncio.TimeoutError:
        return False


async def _get_root_latency(url: str) -> float:
    t0 = time.perf_counter()
    async with aiohttp.ClientSession() as s, s.get(url + "/", timeout=aiohttp.ClientTimeout(total=10)) as r:
        assert r.status == 200
        await r.read()
    return time.perf_counter() - t0


async def test_idle_half_sent_and_slowloris_connections_are_closed(start_upstream, tmp_path):
    """500 idle sockets, 200 requests cut inside their headers and 50 slowloris clients (a header line
    every 0.2 s): the gateway holds them at first, closes every one once server.header_timeout_s has
    passed since it opened, GET / stays fast throughout, and its open file count returns to where it was."""
    timeout_s = 3.0
    _, gp = await _serve(start_upstream, tmp_path, header_timeout_s=timeout_s, max_connections=1000)
    host, port = hostport(gp.url)
    pid = gp.proc.pid
    try:
        baseline = _open_fds(pid)
        t_start = time.monotonic()
        conns = [await asyncio.open_connection(host, port) for _ in range(750)]
        opened_in = time.monotonic() - t_start
        for _, w in conns[500:700]:
            w.write(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl")

        async def drip(writer: asyncio.StreamWriter) -> None:
            writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            with contextlib.suppress(ConnectionError, OSError):
                for _ in range(100):
                    writer.write(b"X-a: b\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.2)

        drips = [asyncio.ensure_future(drip(w)) for _, w in conns[700:]]
        held = 0
        while time.monotonic() - t_start < timeout_s * 0.8:  # before any can time out
            held = max(held, _open_fds(pid) - baseline)
            if held >= 700:
                break
            await asyncio.sleep(0.05)
        assert held >= 500, (held, opened_in)  # it really held them at once
        latencies = [await _get_root_latency(gp.url) for _ in range(3)]
        closed = await asyncio.gather(*(_closed_by_server(r, opened_in + timeout_s + 3) for r, _ in conns))
        elapsed = time.monotonic() - t_start
        for d in drips:
            d.cancel()
        assert all(closed), f"{closed.count(False)} of 750 connections still open after {elapsed:.1f} s"
        assert elapsed >= timeout_s * 0.9  # nobody was closed early
        assert max(latencies) < 1.0, latencies
        for _, w in conns:
            w.close()
        assert await wait_for(lambda: _open_fds(pid) <= baseline + 5, 5, interval=0.1)
        assert "Traceback" not in gp.stderr
    finally:
        await gp.stop()


async def test_header_timeout_never_cuts_a_request_in_progress(start_upstream, tmp_path):
    """header_timeout_s = 1: a stream that takes 2.5 s, and a non-streaming answer that takes 2 s,
    finish; the same keep-alive connection then serves another request."""
    up, gp = await _serve(start_upstream, tmp_path, header_timeout_s=1)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as s:
            headers = {"x-api-key": TOKEN, "anthropic-version": "2023-06-01"}
            up.push(Script(deltas=[{"content": "tick "}] * 5, delay_s=0.5), Script(deltas=[{"content": "late"}],
                                                                                first_delay_s=2))
            async with s.post(gp.url + "/v1/messages", json=body(stream=True), headers=headers) as r:
                text = await r.text()
                assert r.status == 200 and "message_stop" in text and text.count("tick") == 5
            async with s.post(gp.url + "/v1/messages", json=body(), headers=headers) as r:
                assert r.status == 200 and (await r.json())["content"][0]["text"] == "late"
            async with s.get(gp.url + "/v1/models", headers=headers) as r:
                assert r.status == 200
    finally:
        await gp.stop()


async def test_slow_body_gets_408_and_the_connection_closes(start_upstream, tmp_path):
    """Headers complete, body trickling: 408 in the Anthropic shape after server.body_timeout_s; nothing
    reached the upstream."""
    up, gp = await _serve(start_upstream, tmp_path, body_timeout_s=1.0)
    try:
        payload = json.dumps(body()).encode()
        reader, writer = await asyncio.open_connection(*hostport(gp.url))
        writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"anthropic-version: 2023-06-01\r\nx-api-key: " + TOKEN.encode() +
                     b"\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload[:10])
        t0 = time.monotonic()
        raw = await asyncio.wait_for(reader.read(), 5)
        waited = time.monotonic() - t0
        writer.close()
        head, _, rest = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), raw[:200]
        assert _error_type(rest) == "invalid_request_error" and b"body_timeout_s" in rest
        assert 0.8 < waited < 3
        assert up.received == []
    finally:
        await gp.stop()


async def test_connection_cap_closes_idle_connections_first(start_upstream, tmp_path):
    """server.max_connections = 20 and 20 idle sockets open: a new client is still served at once (the
    oldest idle socket is closed for it), and the gateway never holds more than the cap."""
    _, gp = await _serve(start_upstream, tmp_path, max_connections=20, header_timeout_s=30)
    pid = gp.proc.pid
    try:
        baseline = _open_fds(pid)
        conns = [await asyncio.open_connection(*hostport(gp.url)) for _ in range(60)]
        await asyncio.sleep(0.3)
        assert _open_fds(pid) <= baseline + 20
        assert await _get_root_latency(gp.url) < 1.0
        closed = await asyncio.gather(*(_closed_by_server(r, 0.5) for r, _ in conns))
        assert closed.count(False) <= 20 and closed[:40] == [True] * 40  # oldest first
        for _, w in conns:
            w.close()
    finally:
        await gp.stop()


async def test_connection_cap_with_every_connection_busy_answers_529(start_upstream, tmp_path):
    """When every connection is mid-request, a connection past the cap gets 529 overloaded_error (SDKs
    retry it) instead of being queued."""
    up, gp = await _serve(start_upstream, tmp_path, max_connections=3)
    up.default = Script(deltas=[{"content": "slow"}], first_delay_s=3)
    try:
        async with aiohttp.ClientSession() as s:
            headers = {"x-api-key": TOKEN, "anthropic-version": "2023-06-01"}
            busy = [asyncio.ensure_future(s.post(gp.url + "/v1/messages", json=body(), headers=headers))
                    for _ in range(3)]
            await asyncio.sleep(0.5)
            status, headers_, rest = await raw_request(gp.url, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert status == 529 and _error_type(rest) == "overloaded_error", rest
            assert headers_.get("retry-after") == "1"
            for resp in await asyncio.gather(*busy):
                assert resp.status == 200
    finally:
        await gp.stop()


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize("path,auth", [("/v1/nope", True), ("/v1/messages", False), ("/v1/messages", True)],
                         ids=["unknown-route", "bad-token", "unknown-content-type"])
async def test_refused_requests_never_read_their_body(start_upstream, tmp_path, path, auth):
    """20 clients announce 30 MB bodies to requests the gateway refuses (an unknown route, a wrong token,
    text/plain): each gets its Anthropic-shaped answer after sending only 1 MB, the gateway's peak RSS
    grows by far less than the 600 MB announced, and the request log reports the announced size."""
    _, gp = await _serve(start_upstream, tmp_path, max_body_mb=64)
    pid = gp.proc.pid
    size = 30 * 1024 * 1024
    key = TOKEN if auth else "wrong"
    ctype = "text/plain" if path == "/v1/messages" and auth else "application/json"
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\nx-api-key: {key}\r\n"
            f"Content-Length: {size}\r\n\r\n").encode()
    try:
        await _get_root_latency(gp.url)
        before = _vm_hwm_mb(pid)

        async def attack() -> bytes:
            reader, writer = await asyncio.open_connection(*hostport(gp.url))
            writer.write(head + b"x" * (1024 * 1024))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            answer = b""
            with contextlib.suppress(ConnectionError):
                answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return answer

        answers = await asyncio.gather(*(attack() for _ in range(20)))
        expected = {"/v1/nope": b"HTTP/1.1 404", "/v1/messages": b"HTTP/1.1 401" if not auth else b"HTTP/1.1 415"}
        assert all(a.startswith(expected[path]) for a in answers), [a[:40] for a in answers]
        assert _vm_hwm_mb(pid) - before < 100, (before, _vm_hwm_mb(pid))
        if path == "/v1/nope":
            await asyncio.sleep(0.5)  # the log writer thread
            lines = [json.loads(ln) for ln in (tmp_path / "requests.jsonl").read_text().splitlines()]
            assert [ln["body_bytes"] for ln in lines if ln["event"] == "unknown_route"] == [size] * 20
    finally:
        await gp.stop()


async def test_expect_100_continue_is_not_sent_to_a_refused_request(start_upstream, start_gateway):
    """curl sends `Expect: 100-continue` for big bodies: a wrong token gets its 401 without being invited
    to send the body; a good one is invited."""
    _, gw = await start_stack(start_upstream, start_gateway)
    for key, first in [("wrong", b"HTTP/1.1 401"), (TOKEN, b"HTTP/1.1 100 Continue")]:
        reader, writer = await asyncio.open_connection(*hostport(gw.url))
        writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"x-api-key: " + key.encode() + b"\r\nExpect: 100-continue\r\nContent-Length: 100000\r\n\r\n")
        got = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
        writer.close()
        assert got.startswith(first), got


# -- item 11: malformed traffic prints one line each, never a traceback ---------------------------

MALFORMED = [
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header Line\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + TOKEN.encode() + b"A" * 9000 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: " + TOKEN.encode() + b"\x00\r\n\r\n",
    b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Type: application/json\r\nx-api-key: " + TOKEN.encode() + b"\r\n\r\nzz\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGARBAGE /x HTTP/1.1\r\n\r\n",  # a bad second request
    b"GET /\x01 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n",
    b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
]


async def test_malformed_requests_and_vanishing_clients_print_one_json_line_each(start_upstream, tmp_path):
    """Malformed HTTP (bad header lines, an oversized Authorization, a NUL after the token, broken chunked
    bodies, a bad pipelined request, bad versions) and clients that vanish mid-body or mid-stream: stderr
    holds only single JSON lines, no traceback, and never the token."""
    up, gp = await _serve(start_upstream, tmp_path, level="info")
    up.default = Script(deltas=[{"content": "x"}] * 50, delay_s=0.05)
    try:
        answers = []
        for raw in MALFORMED:
            with contextlib.suppress(ConnectionError):
                reader, writer = await asyncio.open_connection(*hostport(gp.url))
                writer.write(raw)
                answers.append(await asyncio.wait_for(reader.read(), 5))
                writer.close()
        refusals = [part for answer in answers for part in re.split(rb"HTTP/1\.[01] ", answer)[1:]
                    if part.startswith(b"400")]
        assert len(refusals) >= 6, answers
        for part in refusals:  # the parser's refusals are Anthropic-shaped too, and never echo the token
            head, _, rest = part.partition(b"\r\n\r\n")
            assert b"application/json" in head.lower() and _error_type(rest) == "invalid_request_error", part[:300]
            assert TOKEN.encode() not in part
        # mid-body: headers announce 1000 bytes, 10 arrive, the client is gone
        reader, writer = await asyncio.open_connection(*hostport(gp.url))
        writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"x-api-key: " + TOKEN.encode() + b"\r\nContent-Length: 1000\r\n\r\n{\"model\":")
        await writer.drain()
        writer.close()
        # mid-stream: read the first SSE bytes, then vanish
        for _ in range(3):
            payload = json.dumps(body(stream=True)).encode()
            reader, writer = await asyncio.open_connection(*hostport(gp.url))
            writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"x-api-key: " + TOKEN.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)
            await reader.readuntil(b"content_block_delta")
            writer.transport.abort()
        await asyncio.sleep(1.0)
        assert await _get_root_latency(gp.url) < 1
    finally:
        await gp.stop()
    lines = [ln for ln in gp.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in gp.stderr, gp.stderr[-3000:]
    assert TOKEN not in gp.stderr
    logged = [ln for ln in lines if not ln.startswith(("claude-gateway", "  use it:", "  or run:"))]
    for ln in logged:
        assert isinstance(json.loads(ln), dict), ln
    events = [json.loads(ln)["event"] for ln in logged]
    assert events.count("bad_http_request") >= 4, events


# -- also found: CLI and config ---------------------------------------------------------------

@pytest.mark.parametrize("port", ["99999", "0", "-1", "http"])
async def test_serve_port_out_of_range_is_refused_like_the_config_value(start_upstream, tmp_path, port):
    """`serve --port 99999` used to print one URL and listen on another; now it exits 2 naming the range."""
    up = await start_upstream()
    path = tmp_path / "config.toml"
    path.write_text(gateway_config({"up": backend_table(up)}, default="up"))
    rc, _, err = await run_cli("serve", "--config", str(path), "--port", port)
    assert rc == 2, err
    assert "--port" in err and "between 1 and 65535" in err, err
    assert "listening" not in err and "Traceback" not in err


def _mlx_config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[server]\nport = {port}\n[log]\nrequests = ""\n[backends.local]\ntype = "mlx"\n'
                    f'model = "{tmp_path / "no-such-model"}"\n')
    return path


async def test_models_with_a_model_that_cannot_load_prints_one_paragraph(tmp_path):
    """`claude-gateway models` with an mlx model that is not there: exit 1 and the paragraph `serve` prints."""
    path = _mlx_config(tmp_path, free_port())
    rc, out, err = await run_cli("models", "--config", str(path), timeout=120)
    assert rc == 1, (out, err)
    assert "Traceback" not in err and "Traceback" not in out
    assert err.startswith("claude-gateway: ") and "no-such-model" in err, err
    rc2, _, serve_err = await run_cli("serve", "--config", str(path), timeout=120)
    assert rc2 == 1 and serve_err.strip().splitlines()[-1] == err.strip().splitlines()[-1]


async def test_port_in_use_is_reported_before_any_model_loads(tmp_path):
    """A taken port fails at once with the port's message, not after (or instead of) loading the model:
    here the model could never load, and the port error still comes first."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc, _, err = await run_cli("serve", "--config", str(_mlx_config(tmp_path, port)), timeout=60)
    assert rc == 1, err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "no-such-model" not in err, err


@pytest.mark.parametrize("key,fragment", [("claude-[opus", "'[' at position 8"), ("", "is empty"), ("  ", "is empty")])
async def test_bad_model_mapping_keys_are_rejected_with_their_line(tmp_path, key, fragment):
    path = tmp_path / "config.toml"
    path.write_text('[backends.gpu]\ntype = "openai"\nbase_url = "http://127.0.0.1:9"\n\n'
                    f'[backends.gpu.model_mapping]\n"claude-*" = "m"\n{json.dumps(key)} = "m"\n')
    rc, _, err = await run_cli("check", "--config", str(path))
    assert rc == 2, err
    assert f"{path}:7:" in err and fragment in err and "model_mapping" in err, err


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "localhost:8000/v1", "ftp://host", "http://"])
async def test_base_url_without_scheme_is_rejected_with_its_line(tmp_path, url):
    path = tmp_path / "config.toml"
    path.write_text(f'[backends.gpu]\ntype = "vllm"\nmodel = "m"\nbase_url = "{url}"\n')
    rc, _, err = await run_cli("check", "--config", str(path))
    assert rc == 2, err
    assert f"{path}:4:" in err and "'backends.gpu.base_url' must be an http:// or https:// URL" in err, err


@pytest.mark.parametrize("url", ["admin:hunter2-secret@10.0.0.5:8000", "ftp://admin:hunter2-secret@10.0.0.5/"])
async def test_rejected_base_url_never_shows_its_password(tmp_path, url):
    path = tmp_path / "config.toml"
    path.write_text(f'[backends.gpu]\ntype = "vllm"\nmodel = "m"\nbase_url = "{url}"\n')
    rc, out, err = await run_cli("check", "--config", str(path))
    assert rc == 2, err
    assert "must be an http:// or https:// URL" in err and "[REDACTED]@" in err, err
    assert "hunter2" not in err + out


@pytest.mark.parametrize("server,fragment", [
    ('allowed_hosts = ["gw.lan:8082"]', "without scheme or port"),
    ('allowed_hosts = "gw.lan"', "must be a list"),
    ('allowed_origins = ["localhost:3000"]', "scheme://host[:port]"),
    ('allowed_origins = ["http://x.example/path"]', "no path"),
    ("header_timeout_s = 0", "must be positive"),
    ("body_timeout_s = -1", "must be positive"),
    ("max_connections = 0", "must be positive")])
async def test_new_server_keys_are_validated(tmp_path, server, fragment):
    path = tmp_path / "config.toml"
    path.write_text(f'[server]\nport = 8082\n{server}\n[backends.gpu]\ntype = "openai"\nbase_url = "http://127.0.0.1:9"\n')
    rc, _, err = await run_cli("check", "--config", str(path))
    assert rc == 2, err
    assert f"{path}:3:" in err and fragment in err, err
