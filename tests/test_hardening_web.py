"""Hostile clients against the web layer, over real sockets: DNS rebinding and cross-site requests,
non-JSON posts, unbounded /metrics labels, /health amplification, slow and idle connections, bodies
of refused requests, and what malformed traffic prints on stderr."""
from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.compat_helpers import MODEL, assert_error, backend_table, body, start_stack, with_server
from tests.conftest import TOKEN, gateway_config
from tests.gateway_process import free_port, start_serve
from tests.upstream import TEXT, Script, Upstream


def _hostport(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


async def raw_request(url: str, data: bytes, timeout: float = 10) -> tuple[int, dict, bytes]:
    """Send raw bytes, read until the server closes: (status, lowercased headers, body)."""
    reader, writer = await asyncio.open_connection(*_hostport(url))
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln))
    return int(lines[0].split()[1]), headers, rest


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
    up, gw = await start_stack(start_upstream, start_gateway, token=None, server={"allowed_hosts": ["gateway.lan"]})
    host = host.format(port=_hostport(gw.url)[1])
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
    up, gw = await start_stack(start_upstream, start_gateway)
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
    """50 concurrent /health against a backend whose /v1/models takes 1 s: a couple of upstream calls,
    not 50, and every answer within about one upstream delay instead of 1, 2, … s behind each other.
    Later calls answer from the snapshot at once while it is refreshed in the background."""
    up = SlowModels(1.0)
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
        assert max(times) < 2.5, sorted(times)[-5:]
        gw.gateway.health.refresh_s = 0  # every snapshot is now stale: refreshes run, nobody waits for them
        calls = up.models_calls
        times = await asyncio.gather(*(one() for _ in range(20)))
        assert max(times) < 0.5, sorted(times)[-5:]
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
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        data = await (await gw.get("/health")).json()
        if data["status"] == "degraded":
            break
        await asyncio.sleep(0.1)
    assert data["status"] == "degraded" and not data["backends"]["up"]["ok"], data
