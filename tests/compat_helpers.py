"""Shared pieces of the anthropic-compat conformance tests (the ones that import this module)."""
from __future__ import annotations

import json

import aiohttp

from tests.conftest import TOKEN, RunningGateway, gateway_config

MODEL = "claude-opus-4-8"
USER_HI = [{"role": "user", "content": "hi"}]


def body(**kw) -> dict:
    """The minimal /v1/messages body, with fields overridden or added."""
    return {"model": MODEL, "max_tokens": 100, "messages": USER_HI, **kw}


def with_server(toml: str, **settings) -> str:
    """Set keys of the [server] table of a gateway_config() TOML text (replacing ones already there)."""
    head, sep, rest = toml.partition("[log]")
    lines = [ln for ln in head.splitlines() if ln.split("=")[0].strip() not in settings]
    lines += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    return "\n".join(lines) + "\n" + sep + rest


def backend_table(up, flavor: str | None = None, **extra) -> dict:
    """The [backends.up] table for a scripted upstream (Claude names map to test-model)."""
    return {"type": flavor or up.flavor, "base_url": up.url, "model": "test-model",
            "model_mapping": {MODEL: "test-model", "claude-*": "test-model"}, **extra}


async def start_stack(start_upstream, start_gateway, flavor: str = "openai", *, token: str | None = TOKEN,
                      upstream: dict | None = None, server: dict | None = None, **backend) -> tuple:
    """One upstream of `flavor` and a gateway in front of it (the default backend)."""
    up = await start_upstream(flavor, **(upstream or {}))
    toml = gateway_config({"up": backend_table(up, **backend)}, token=token, default="up")
    if server:
        toml = with_server(toml, **server)
    gw = await start_gateway(toml, token=token)
    return up, gw


async def assert_error(resp: aiohttp.ClientResponse, status: int, type_: str) -> dict:
    """`resp` is E(status, type): JSON content type and the Anthropic error shape."""
    text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == "application/json", (resp.content_type, text)
    data = json.loads(text)
    assert data["type"] == "error", data
    assert data["error"]["type"] == type_, data
    assert isinstance(data["error"]["message"], str) and data["error"]["message"], data
    return data


def sent(up) -> dict:
    """The last OpenAI chat body the upstream received."""
    assert up.received, "the upstream received no chat request"
    return up.received[-1]


def sent_messages(up) -> list[dict]:
    return sent(up)["messages"]


def text_of(content) -> str:
    """An OpenAI message content (string or parts) as plain text."""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content or [] if p.get("type") == "text")


async def post_raw(gw: RunningGateway, path: str, data: bytes | str, headers) -> aiohttp.ClientResponse:
    """POST with exactly the given headers (a dict or a list of pairs, repeated names allowed)."""
    return await gw.session.post(gw.url + path, data=data, headers=headers)
