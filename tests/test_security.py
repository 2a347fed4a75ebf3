"""Security: constant-time token comparison, loopback by default, refusing a public address without
a token, and no secret in any log (stderr at debug level, the request log file)."""
from __future__ import annotations

import hmac
import json
import signal
from pathlib import Path

import aiohttp
import pytest

from gateway.config import parse_config
from tests.compat_helpers import backend_table, body, start_stack, with_server
from tests.conftest import TOKEN, gateway_config
from tests.gateway_process import env_without_token, run_cli, start_serve
from tests.support.net import free_port
from tests.raw_http import post_request, raw_request
from tests.upstream import TEXT

# -- token comparison ----------------------------------------------------------------------------

async def test_token_checked_with_compare_digest_for_every_candidate(start_upstream, start_gateway, monkeypatch):
    """Every presented credential goes through hmac.compare_digest (constant time), wrong or right;
    near misses (a prefix, one character off, an extension) are 401."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    _, gw = await start_stack(start_upstream, start_gateway)
    for wrong in (TOKEN[:-1], TOKEN[:-1] + "X", TOKEN + "X", "", TOKEN.upper()):
        calls.clear()
        status, _ = await gw.messages(body(), **{"x-api-key": wrong})
        assert status == 401, wrong
        assert (wrong.encode(), TOKEN.encode()) in calls
    calls.clear()
    status, _ = await gw.messages(body(), **{"x-api-key": "nope", "Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    # both candidates were compared, the matching one included: no early exit on the first
    assert {a for a, _ in calls} == {b"nope", TOKEN.encode()}


@pytest.mark.parametrize("header", [b"x-api-key: sk-t\xffest", b"Authorization: Bearer \xc3\xa9\xff",
                                    b"x-api-key: \xe2\x82\xac"], ids=["latin1", "bad-utf8-bearer", "euro"])
async def test_non_utf8_credentials_are_401_not_500(start_upstream, start_gateway, header):
    """Credential headers with bytes that are not UTF-8 are compared as bytes: 401, never a crash."""
    _, gw = await start_stack(start_upstream, start_gateway)
    # Raw header bytes: no HTTP client library would send them.
    status, _, rest = await raw_request(gw.url, post_request("/v1/messages", json.dumps(body()).encode(), header))
    err = json.loads(rest)
    assert status == 401 and err["error"]["type"] == "authentication_error", err


# -- listening address ---------------------------------------------------------------------------

def _listening_on(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net shows them) with a LISTEN socket on `port`."""
    found = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            addr, port_hex = parts[1].rsplit(":", 1)
            if int(port_hex, 16) == port and parts[3] == "0A":  # 0A = LISTEN
                found.add(addr)
    return found


def _write_config(tmp_path: Path, up, *, token: str | None = None, **server) -> tuple[Path, int]:
    port = free_port()
    toml = gateway_config({"up": backend_table(up)}, token=token, default="up",
                          log_path=str(tmp_path / "requests.jsonl"))
    toml = toml.replace('host = "127.0.0.1"\n', "")  # the default is what is under test
    path = tmp_path / "config.toml"
    path.write_text(with_server(toml, port=port, **server))
    return path, port


def test_default_host_is_loopback():
    """Without [server] host the config says 127.0.0.1."""
    cfg = parse_config('[backends.x]\ntype = "openai"\nbase_url = "http://127.0.0.1:9"\n')
    assert cfg.server.host == "127.0.0.1" and cfg.server.allow_public is False


async def test_serve_binds_loopback_by_default(start_upstream, tmp_path):
    """`serve` with no host anywhere listens on 127.0.0.1 only (checked in /proc/net, not just the banner)."""
    up = await start_upstream("openai")
    path, port = _write_config(tmp_path, up)
    gp = await start_serve(path)
    try:
        assert gp.url == f"http://127.0.0.1:{port}"
        assert _listening_on(port) == {"0100007F"}  # 127.0.0.1, and no 0.0.0.0 / :: socket
    finally:
        await gp.stop()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1"])
async def test_public_address_without_token_is_refused(start_upstream, tmp_path, host):
    """A non-loopback host without auth_token → exit 2 with one paragraph saying how to fix it; nothing listens."""
    up = await start_upstream("openai")
    path, port = _write_config(tmp_path, up)
    rc, _, err = await run_cli("serve", "--config", str(path), "--host", host, env=env_without_token())
    assert rc == 2, err
    assert "refusing to listen" in err and "auth_token" in err and "--allow-public" in err, err
    assert err.strip().count("\n") == 0  # one paragraph
    assert "Traceback" not in err
    assert _listening_on(port) == set()


@pytest.mark.parametrize("how", ["flag", "config", "env-token"])
async def test_public_address_allowed_when_told(start_upstream, tmp_path, how):
    """--allow-public, [server] allow_public = true, or a token (here from GATEWAY_AUTH_TOKEN) lifts the refusal. 192.0.2.1 (TEST-NET-1)
    is not on this machine, so binding then fails with its own message: nothing public is opened."""
    up = await start_upstream("openai")
    env = env_without_token()
    extra: list[str] = []
    if how == "flag":
        path, _ = _write_config(tmp_path, up)
        extra = ["--allow-public"]
    elif how == "config":
        path, _ = _write_config(tmp_path, up, allow_public=True)
    else:
        path, _ = _write_config(tmp_path, up)
        env["GATEWAY_AUTH_TOKEN"] = TOKEN
    rc, _, err = await run_cli("serve", "--config", str(path), "--host", "192.0.2.1", *extra, env=env)
    assert "refusing to listen" not in err, err
    assert rc == 1 and "cannot listen on 192.0.2.1" in err, err


async def test_localhost_without_token_is_fine(start_upstream, tmp_path):
    """A loopback name needs no token."""
    up = await start_upstream("openai")
    path, port = _write_config(tmp_path, up)
    gp = await start_serve(path, "--host", "localhost", env=env_without_token())
    try:
        assert _listening_on(port) and _listening_on(port) <= {"0100007F", "00000000000000000000000001000000"}
    finally:
        await gp.stop()


# -- secrets never logged ------------------------------------------------------------------------

SECRET = "sk-gw-canary-7f3a9c1e55d04b2b"
BACKEND_KEY = "up-key-canary-0e1d2c3b4a59"


async def test_token_never_appears_in_any_log(start_upstream, tmp_path):
    """At log level debug, with bodies logged, after requests that carry the token in every place a
    client could put it (headers, a wrong-but-similar key, the body, the query string, the path of
    an unknown route), neither the gateway token nor the backend's API key is in stderr or in any
    request-log file."""
    up = await start_upstream("openai", api_key=BACKEND_KEY)
    up.default = TEXT("ok")
    log = tmp_path / "logs" / "requests.jsonl"
    toml = gateway_config({"up": backend_table(up, api_key=BACKEND_KEY)}, token=SECRET, default="up",
                          log_path=str(log))
    toml = toml.replace('level = "warning"', 'level = "debug"')
    path = tmp_path / "config.toml"
    path.write_text(with_server(toml, port=free_port()))
    gp = await start_serve(path, env=env_without_token())
    good = {"x-api-key": SECRET, "anthropic-version": "2023-06-01"}
    try:
        async with aiohttp.ClientSession() as session:
            async def post(url_path: str, payload: dict, headers: dict) -> int:
                async with session.post(gp.url + url_path, json=payload, headers=headers) as resp:
                    await resp.read()
                    return resp.status

            assert await post("/v1/messages", body(), good) == 200
            assert await post("/v1/messages", body(stream=True), {"Authorization": f"Bearer {SECRET}"}) == 200
            assert await post("/v1/messages", body(), {"x-api-key": SECRET + "x"}) == 401
            assert await post("/v1/messages", body(messages=[{"role": "user", "content": f"my key is {SECRET}"}]),
                              good) == 200
            assert await post(f"/v1/messages?key={SECRET}", body(), good) == 200
            assert await post(f"/v1/{SECRET}", {"x": SECRET}, good) == 404
            assert await post("/v1/messages/count_tokens", {"model": "m", "messages": [
                {"role": "user", "content": SECRET}]}, good) == 200
            assert await post("/v1/messages", {"model": SECRET}, good) == 400
            assert await post("/v1/messages", body(model=SECRET), good) == 200  # routed to the default
            async with session.get(gp.url + "/v1/models", headers=good) as resp:
                assert resp.status == 200
        gp.signal(signal.SIGTERM)
        assert await gp.wait_exit(10) == 0
    finally:
        await gp.stop()
    files = sorted(p for p in log.parent.iterdir() if p.is_file())
    assert files, "no request log was written"
    text = gp.stderr + "".join(p.read_text(errors="replace") for p in files)
    assert len(log.read_text().splitlines()) == 10
    for secret in (SECRET, BACKEND_KEY):
        assert secret not in text, f"{secret} leaked:\n" + "\n".join(
            line for line in text.splitlines() if secret in line)
    assert "[REDACTED]" in text  # the scrubber ran (the body and the query carried the token)
    # The gateway really sent the backend key upstream (it was configured, not just absent).
    assert all(h.get("Authorization") == f"Bearer {BACKEND_KEY}" for h in up.headers)
