"""Fallback chains over real HTTP: `fallback = "other"` answers when a backend's replicas are all down
or overloaded, the switch is invisible to the client, and the log line says what and why."""
from __future__ import annotations

import asyncio
import json

import pytest

from gateway.config import ConfigError, parse_config
from tests.conftest import gateway_config
from tests.support.net import free_port
from tests.upstream import FAIL, TEXT

BODY = {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}


async def _log_lines(path) -> list[dict]:
    await asyncio.sleep(0.3)  # the writer thread
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_overloaded_pool_falls_back(start_upstream, start_gateway, tmp_path):
    busy = [await start_upstream("vllm") for _ in range(2)]
    for up in busy:
        up.default = FAIL(429, "too many requests")
    spare = await start_upstream("openai", models=["spare-model"])
    spare.default = TEXT("the spare answered")
    log = tmp_path / "requests.jsonl"
    toml = gateway_config({
        "main": {"type": "vllm", "base_url": [u.url for u in busy], "model": "test-model", "fallback": "spare",
                 "model_mapping": {"claude-*": "test-model"}},
        "spare": {"type": "openai", "base_url": spare.url, "model": "spare-model"},
    }, default="main", log_path=str(log))
    gw = await start_gateway(toml)
    status, data = await gw.messages(BODY, **{"X-Claude-Code-Session-Id": "s1"})
    assert status == 200, data
    assert data["content"][0]["text"] == "the spare answered"
    assert data["model"] == "claude-sonnet-4-6"  # the client sees the model it asked for
    assert all(len(u.received) == 1 for u in busy), "each replica is tried once before falling back"
    assert spare.received[0]["model"] == "spare-model"

    frames = await gw.stream(BODY)
    text = "".join(d["delta"].get("text", "") for n, d in frames if n == "content_block_delta")
    assert text == "the spare answered" and [n for n, _ in frames].count("message_start") == 1

    lines = await _log_lines(log)
    assert [line["backend"] for line in lines] == ["spare", "spare"]
    fb = lines[0]["fallback"]
    assert fb["from"] == "main" and fb["to"] == "spare" and fb["reason"] == "overloaded"
    assert "overloaded" in fb["error"]
    metrics = await (await gw.get("/metrics")).text()
    assert 'gateway_fallbacks_total{backend="main",fallback="spare",reason="overloaded"} 2.0' in metrics


async def test_chain_of_dead_backends_reaches_the_live_one(start_upstream, start_gateway, tmp_path):
    last = await start_upstream("openai")
    last.default = TEXT("third time lucky")
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(3)]
    log = tmp_path / "requests.jsonl"
    toml = gateway_config({
        "a": {"type": "vllm", "base_url": dead[:2], "model": "m", "fallback": "b"},
        "b": {"type": "openai", "base_url": dead[2], "model": "m", "fallback": "c"},
        "c": {"type": "openai", "base_url": last.url, "model": "test-model"},
    }, default="a", log_path=str(log))
    gw = await start_gateway(toml)
    status, data = await gw.messages(BODY)
    assert status == 200, data
    assert data["content"][0]["text"] == "third time lucky"
    line = (await _log_lines(log))[0]
    assert line["backend"] == "c" and line["backend_model"] == "test-model"
    assert line["fallback"]["from"] == "a" and line["fallback"]["to"] == "c"
    assert line["fallback"]["reason"] == "unavailable" and "not reachable" in line["fallback"]["error"]


async def test_request_errors_do_not_fall_back(start_upstream, start_gateway):
    main = await start_upstream("openai")
    main.default = FAIL(400, "bad request: temperature out of range")
    spare = await start_upstream("openai")
    gw = await start_gateway(gateway_config({
        "main": {"type": "openai", "base_url": main.url, "model": "test-model", "fallback": "spare"},
        "spare": {"type": "openai", "base_url": spare.url, "model": "test-model"},
    }, default="main"))
    status, data = await gw.messages(BODY)
    assert status == 400 and "temperature out of range" in data["error"]["message"]
    assert spare.received == []


async def test_without_fallback_the_error_reaches_the_client(start_upstream, start_gateway):
    up = await start_upstream("openai")
    up.default = FAIL(503, "warming up")
    gw = await start_gateway(gateway_config({"main": {"type": "openai", "base_url": up.url, "model": "test-model"}},
                                            default="main"))
    status, data = await gw.messages(BODY)
    assert status == 529 and data["error"]["type"] == "overloaded_error"


@pytest.mark.parametrize("backends, message", [
    ({"a": {"fallback": "nope"}}, "names backend 'nope', which is not defined"),
    ({"a": {"fallback": "a"}}, "names the backend itself"),
    ({"a": {"fallback": "b"}, "b": {"fallback": "a"}}, "a -> b -> a is a loop"),
])
def test_bad_fallbacks_are_config_errors(backends, message):
    tables = {name: {"type": "openai", "base_url": "http://127.0.0.1:9", "model": "m", **extra}
              for name, extra in backends.items()}
    with pytest.raises(ConfigError, match=message):
        parse_config(gateway_config(tables))


async def test_counting_tokens_on_a_dead_pool_falls_back(start_upstream, start_gateway, tmp_path):
    spare = await start_upstream("vllm")
    spare.default = TEXT("counted elsewhere")
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    log = tmp_path / "requests.jsonl"
    gw = await start_gateway(gateway_config({
        # A prompt near this window needs the exact count from /tokenize, which no replica answers.
        "main": {"type": "vllm", "base_url": dead, "model": "m", "context_window": 300, "fallback": "spare"},
        "spare": {"type": "vllm", "base_url": spare.url, "model": "test-model"},
    }, default="main", log_path=str(log)))
    long = {**BODY, "messages": [{"role": "user", "content": "word " * 150}]}
    status, data = await gw.messages(long)
    assert status == 200, data
    assert data["content"][0]["text"] == "counted elsewhere"
    assert len(spare.received) == 1
    line = (await _log_lines(log))[0]
    assert line["fallback"]["reason"] == "unavailable"
    assert "no replica of backend 'main' could answer (2 tried)" in line["fallback"]["error"]


async def test_openai_clients_fall_back_too(start_upstream, start_gateway, tmp_path):
    busy = await start_upstream("vllm")
    busy.default = FAIL(529, "busy")
    spare = await start_upstream("openai")
    spare.default = TEXT("spare for openai clients")
    log = tmp_path / "requests.jsonl"
    gw = await start_gateway(gateway_config({
        "main": {"type": "vllm", "base_url": [busy.url], "model": "test-model", "fallback": "spare"},
        "spare": {"type": "openai", "base_url": spare.url, "model": "test-model"},
    }, default="main", log_path=str(log)))
    resp = await gw.post("/v1/chat/completions", {"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}],
                                                  "max_tokens": 16})
    data = await resp.json()
    assert resp.status == 200, data
    assert data["choices"][0]["message"]["content"] == "spare for openai clients"
    assert spare.received[0]["max_tokens"] == 16
    line = (await _log_lines(log))[0]
    assert line["backend"] == "spare" and line["fallback"]["reason"] == "overloaded"
