"""Secrets outside the request log: what an upstream echoes back, credentials in a base_url, the
console (our events and aiohttp's parser errors), /health, and credential-named headers."""
from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import pytest

from gateway.config import ConfigError, parse_config
from tests.compat_helpers import (
    assert_error,
    backend_table,
    body,
    start_stack,
    with_server,
)
from tests.conftest import gateway_config
from tests.gateway_process import env_without_token, start_serve
from tests.support.net import free_port
from tests.logtools import wait_records
from tests.raw_http import post_request, raw_request
from tests.sse_checks import open_stream
from tests.upstream import FAIL_MID, Script

GW_TOKEN = "sk-gw-canary-5e8f1d2c9b7a4c36a1"
BACKEND_KEY = "up-key-canary-93b1c0ffee42d17"
PASSWORD = "pw-canary-Zq81xv0Lk3"


def _assert_clean(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, f"{secret} leaked:\n" + "\n".join(
            line for line in text.splitlines() if secret in line)


# -- what the upstream echoes back -------------------------------------------------------------

async def test_upstream_quoting_our_key_never_reaches_the_client(start_upstream, start_gateway):
    """An upstream that quotes the Authorization it got (a 400, a mid-stream error event, a 401 on
    /v1/models, a model id): the client and /health see [REDACTED] where the backend key was."""
    up, gw = await start_stack(start_upstream, start_gateway, api_key=BACKEND_KEY,
                               upstream={"models": ["test-model", f"echo-{BACKEND_KEY}"]})
    up.push(Script(fail_status=400, fail_quotes_auth=True))
    data = await assert_error(await gw.post("/v1/messages", body()), 400, "invalid_request_error")
    assert "[REDACTED]" in data["error"]["message"], data
    _assert_clean(json.dumps(data), BACKEND_KEY)
    assert up.headers[-1]["Authorization"] == f"Bearer {BACKEND_KEY}"  # it really was sent and quoted

    up.push(FAIL_MID(500, f"auth was Bearer {BACKEND_KEY}"))
    s = await open_stream(gw, body(), ok=False)
    assert s.error["type"] == "api_error" and "[REDACTED]" in s.error["message"], s.error
    _assert_clean(json.dumps(s.error), BACKEND_KEY)

    resp = await gw.session.get(gw.url + "/health")
    health = await resp.text()
    assert resp.status == 200 and "test-model" in health
    _assert_clean(health, BACKEND_KEY)
    resp = await gw.get("/v1/models")
    _assert_clean(await resp.text(), BACKEND_KEY)


async def test_health_detail_of_a_refusing_upstream_is_scrubbed(start_upstream, start_gateway):
    """/health (unauthenticated) shows why a backend is down, without the key the upstream quoted."""
    up, gw = await start_stack(start_upstream, start_gateway, api_key=BACKEND_KEY,
                               upstream={"api_key": "the-key-it-wants"})
    up.quote_auth = True
    resp = await gw.session.get(gw.url + "/health")
    data = await resp.json()
    detail = data["backends"]["up"]["detail"]
    assert data["status"] == "degraded" and "401" in detail and "[REDACTED]" in detail, data
    _assert_clean(json.dumps(data), BACKEND_KEY)
    err = await assert_error(await gw.post("/v1/messages", body()), 500, "api_error")
    assert "401" in err["error"]["message"]
    _assert_clean(json.dumps(err), BACKEND_KEY)


# -- credentials in base_url -------------------------------------------------------------------

async def test_base_url_credentials_become_basic_auth_and_are_never_shown(start_upstream, tmp_path):
    """`http://alice:PASSWORD@host` works (Basic auth on every call), and neither the password nor
    the Basic token shows in /health, in errors or on stderr (at debug level), even for a backend
    with such a URL that is down."""
    up = await start_upstream("openai")
    host = up.url.removeprefix("http://")
    down = f"127.0.0.1:{free_port()}"
    basic = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    toml = gateway_config({
        "up": backend_table(up, base_url=f"http://alice:{PASSWORD}@{host}/v1"),
        "down": {"type": "openai", "base_url": f"http://bob:{PASSWORD}@{down}", "model": "m",
                 "model_mapping": {"claude-down": "m"}},
    }, token=None, default="up").replace('level = "warning"', 'level = "debug"')
    path = tmp_path / "config.toml"
    path.write_text(with_server(toml, port=free_port()))
    gp = await start_serve(path, env=env_without_token())
    seen = ""
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(gp.url + "/v1/messages", json=body()) as resp:
                assert resp.status == 200, await resp.text()
            async with session.post(gp.url + "/v1/messages", json=body(model="claude-down")) as resp:
                text = await resp.text()
                assert resp.status == 500 and down in text, text  # says where, without the userinfo
                seen += text
            async with session.get(gp.url + "/health") as resp:
                health = await resp.json()
                seen += json.dumps(health)
            assert health["backends"]["up"]["ok"] and not health["backends"]["down"]["ok"], health
    finally:
        await gp.stop()
    assert up.headers and all(h.get("Authorization") == f"Basic {basic}" for h in up.headers), up.headers
    assert "is not reachable" in gp.stderr and down in gp.stderr, gp.stderr  # the URL is still shown
    _assert_clean(seen + gp.stderr, PASSWORD, basic)


def test_base_url_credentials_and_an_api_key_are_refused():
    """Both would need the one Authorization header: the config names the key and its line."""
    with pytest.raises(ConfigError) as exc:
        parse_config('[backends.x]\ntype = "openai"\napi_key = "k"\nbase_url = "http://u:p@127.0.0.1:9"\n')
    assert "config:4" in str(exc.value) and "base_url" in str(exc.value)
    cfg = parse_config('[backends.x]\ntype = "openai"\nbase_url = "http://u%40x:p%3Aw@127.0.0.1:9/v1"\n')
    assert cfg.backends["x"].base_url == "http://127.0.0.1:9/v1"
    assert cfg.backends["x"].url_auth == ("u@x", "p:w")  # percent-decoded, as a browser would send it


# -- the console -----------------------------------------------------------------------------------

async def test_console_lines_never_carry_a_secret(start_upstream, tmp_path):
    """aiohttp's parser errors quote the header they choked on (a token followed by NUL, an
    Authorization over 8 KB, one cut in the middle of the token) and a warning of ours quotes
    upstream text holding the backend key: stderr shows none of the token or key."""
    up = await start_upstream("openai")
    toml = gateway_config({"up": backend_table(up, api_key=BACKEND_KEY)}, token=GW_TOKEN, default="up")
    path = tmp_path / "config.toml"
    path.write_text(with_server(toml, port=free_port()))
    gp = await start_serve(path, env=env_without_token())
    # Malformed tool arguments are logged (tool_call_dropped) with their first characters.
    up.push(Script(deltas=[{"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                                            "function": {"name": "w", "arguments": f"{{oops {BACKEND_KEY}"}}]}],
                   finish_reason="tool_calls"))
    try:
        for header in (b"Authorization: Bearer " + GW_TOKEN.encode() + b"\x00",
                       b"x-api-key: " + GW_TOKEN.encode() + b"\x00tail",
                       b"Authorization: Bearer " + GW_TOKEN.encode() + b" " * 9000,
                       # aiohttp quotes the first 100 bytes of an over-long value: the token is cut there
                       b"Authorization: " + b"a" * 85 + GW_TOKEN.encode() + b" " * 9000):
            status, _, rest = await raw_request(gp.url, post_request("/v1/messages", json.dumps(body()).encode(), header))
            assert status == 400, rest[:200]
        async with aiohttp.ClientSession() as session, session.post(
                gp.url + "/v1/messages", json=body(), headers={"x-api-key": GW_TOKEN}) as resp:
            assert resp.status == 200, await resp.text()
        await asyncio.sleep(0.3)
    finally:
        await gp.stop()
    err = gp.stderr
    assert "tool_call_dropped" in err and "[REDACTED]" in err, err  # the lines were written
    _assert_clean(err, GW_TOKEN, GW_TOKEN[:12], BACKEND_KEY)


# -- credential-named headers ---------------------------------------------------------------------

async def test_every_credential_named_header_is_redacted(start_upstream, start_gateway, tmp_path):
    """Headers of an unknown route are logged with every value whose name says key, token, secret,
    auth, cookie or session replaced; other headers stay readable."""
    up = await start_upstream()
    log = tmp_path / "r.jsonl"
    gw = await start_gateway(gateway_config({"up": backend_table(up)}, token=None, default="up",
                                            log_path=str(log)), token=None)
    sent = {"api-key": "v-api-key", "X-Auth-Token": "v-auth-token", "X-Client-Secret": "v-secret",
            "Proxy-Authorization": "Basic v-proxy", "Cookie": "sid=v-cookie", "X-Session": "v-session",
            "X-Claude-Code-Session-Id": "v-session-id", "X-Probe": "visible"}
    resp = await gw.session.get(gw.url + "/v1/experimental", headers=sent)
    assert resp.status == 404
    [rec] = await wait_records(log, 1)
    headers = {k.lower(): v for k, v in rec["headers"].items()}
    for name in sent:
        expected = "visible" if name == "X-Probe" else "[REDACTED]"
        assert headers[name.lower()] == expected, (name, headers)
    _assert_clean(log.read_text(), *(v for k, v in sent.items() if k != "X-Probe"))
