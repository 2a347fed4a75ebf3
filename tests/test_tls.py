"""HTTPS served directly ([server] tls_cert / tls_key): a real `serve` process with a certificate made on
the spot (openssl CLI), called by the official anthropic SDK; `check` validates the pair."""
from __future__ import annotations

import shutil
import ssl
import subprocess

import aiohttp
import anthropic
import pytest

from tests.conftest import TOKEN, gateway_config
from tests.gateway_process import run_cli, start_serve
from tests.support.net import free_port

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _certificate(directory, name: str = "gw") -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key (PEM files)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return str(cert), str(key)


def _config(tmp_path, upstream_url: str, cert: str, key: str) -> str:
    toml = gateway_config({"up": {"type": "openai", "base_url": upstream_url, "model": "test-model"}}, default="up")
    return toml.replace("port = 8082", f'port = {free_port()}\ntls_cert = "{cert}"\ntls_key = "{key}"')


async def test_https_with_the_anthropic_sdk(tmp_path, start_upstream):
    up = await start_upstream("openai")
    cert, key = _certificate(tmp_path)
    path = tmp_path / "config.toml"
    path.write_text(_config(tmp_path, up.url, cert, key))
    gw = await start_serve(path)
    try:
        assert gw.url.startswith("https://127.0.0.1:")
        client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=TOKEN, max_retries=0,
                                          http_client=anthropic.DefaultAsyncHttpxClient(
                                              verify=ssl.create_default_context(cafile=cert)))
        message = await client.messages.create(model="claude-sonnet-4-6", max_tokens=32,
                                               messages=[{"role": "user", "content": "hi"}])
        assert message.content[0].text == "Hello there!"
        async with client.messages.stream(model="claude-sonnet-4-6", max_tokens=32,
                                          messages=[{"role": "user", "content": "hi"}]) as stream:
            assert await stream.get_final_text() == "Hello there!"
        await client.close()

        # Without trusting the certificate the handshake fails: it really is TLS, not plain HTTP.
        untrusting = anthropic.AsyncAnthropic(base_url=gw.url, api_key=TOKEN, max_retries=0)
        with pytest.raises(anthropic.APIConnectionError):
            await untrusting.messages.create(model="claude-sonnet-4-6", max_tokens=8,
                                             messages=[{"role": "user", "content": "hi"}])
        await untrusting.close()
        # Plain HTTP to the HTTPS port gets no answer a client could mistake for the API.
        async with aiohttp.ClientSession() as plain:
            with pytest.raises(aiohttp.ClientError):
                async with plain.get(gw.url.replace("https://", "http://") + "/health",
                                     timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    await resp.read()
    finally:
        await gw.stop()


async def test_check_validates_the_pair(tmp_path, start_upstream):
    up = await start_upstream("openai")
    cert, key = _certificate(tmp_path, "one")
    _, other_key = _certificate(tmp_path, "two")
    good = tmp_path / "good.toml"
    good.write_text(_config(tmp_path, up.url, cert, key))
    code, out, err = await run_cli("check", "--config", str(good))
    assert code == 0 and "TLS: ok" in out, out + err

    mismatched = tmp_path / "bad.toml"
    mismatched.write_text(_config(tmp_path, up.url, cert, other_key))
    code, out, err = await run_cli("check", "--config", str(mismatched))
    assert code == 1 and "TLS: FAILED" in out and "not a usable pair" in out, out + err
    assert "PRIVATE KEY" not in out + err

    code, _, err = await run_cli("serve", "--config", str(mismatched), timeout=30)
    assert code == 1 and "not a usable pair" in err and "Traceback" not in err

    missing = tmp_path / "missing.toml"
    missing.write_text(_config(tmp_path, up.url, cert, str(tmp_path / "nope.key")))
    code, out, _ = await run_cli("check", "--config", str(missing))
    assert code == 1 and "tls_key file" in out and "nope.key not found" in out, out


async def test_half_a_pair_is_a_config_error(tmp_path):
    path = tmp_path / "config.toml"
    toml = gateway_config({"up": {"type": "openai", "base_url": "http://127.0.0.1:9", "model": "m"}})
    path.write_text(toml.replace("port = 8082", 'port = 8082\ntls_cert = "gw.crt"'))
    code, _, err = await run_cli("check", "--config", str(path))
    assert code == 2 and "'server.tls_cert' is set but 'server.tls_key' is not" in err
