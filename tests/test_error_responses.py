"""anthropic-compat.md section C: request errors (status and shape)."""
from __future__ import annotations

import json

import pytest

from tests.compat_helpers import assert_error, body, post_raw, sent, start_stack
from tests.conftest import gateway_config
from tests.upstream import FAIL, TEXT

STATUS_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                529: "overloaded_error"}
COUNT = "/v1/messages/count_tokens"


async def test_c1_every_error_is_json_with_paired_type(start_upstream, start_gateway):
    """C1: every error from every endpoint is application/json `E(status, type)` with the documented status→type pairs."""
    up, gw = await start_stack(start_upstream, start_gateway, server={"max_body_mb": 1})
    no_key = {"content-type": "application/json"}
    seen: set[int] = set()
    cases = [
        await gw.post("/v1/messages", b"{"),
        await gw.post(COUNT, b"{"),
        await gw.post("/v1/messages", body(max_tokens=0)),
        await gw.get("/v1/models?limit=0"),
        await post_raw(gw, "/v1/messages", json.dumps(body()), no_key),
        await post_raw(gw, COUNT, json.dumps(body()), no_key),
        await gw.session.get(gw.url + "/v1/models", headers=no_key),
        await gw.session.get(gw.url + "/v1/models/x", headers=no_key),
        await gw.get("/v1/models/no-such-model"),
        await gw.get("/v1/nope"),
        await gw.post("/v1/messages", body(messages=[{"role": "user", "content": "z" * (2 * 1024 * 1024)}])),
    ]
    for script in (FAIL(429), FAIL(500), FAIL(503), FAIL(529)):
        up.push(script)
        cases.append(await gw.post("/v1/messages", body()))
    for resp in cases:
        assert resp.status in STATUS_TYPES, (resp.status, await resp.text())
        await assert_error(resp, resp.status, STATUS_TYPES[resp.status])
        seen.add(resp.status)
    # 403 is the one pair the gateway itself never has a reason to produce.
    assert seen == set(STATUS_TYPES) - {403}


async def test_c2_non_json_body(start_upstream, start_gateway):
    """C2: a body that is not JSON → E(400, invalid_request_error)."""
    up, gw = await start_stack(start_upstream, start_gateway)
    for raw in (b"not json", b"", b"\xff\xfe{}", b'{"model": "x",', b"[1, 2]", b'"just a string"'):
        for path in ("/v1/messages", COUNT):
            await assert_error(await gw.post(path, raw), 400, "invalid_request_error")
    assert up.received == []


async def test_c3_missing_model(start_upstream, start_gateway):
    """C3: missing `model` → E(400, invalid_request_error)."""
    _, gw = await start_stack(start_upstream, start_gateway)
    payload = body()
    del payload["model"]
    for path in ("/v1/messages", COUNT):
        data = await assert_error(await gw.post(path, payload), 400, "invalid_request_error")
        assert "model" in data["error"]["message"]


@pytest.mark.parametrize("messages", ["missing", [], None, "hi", [{"role": "user"}]],
                         ids=["missing", "empty", "null", "string", "no-content"])
async def test_c4_missing_or_empty_messages(start_upstream, start_gateway, messages):
    """C4: missing `messages` or `messages: []` → E(400, invalid_request_error), never a 500."""
    _, gw = await start_stack(start_upstream, start_gateway)
    payload = body()
    if messages == "missing":
        del payload["messages"]
    else:
        payload["messages"] = messages
    for path in ("/v1/messages", COUNT):
        data = await assert_error(await gw.post(path, payload), 400, "invalid_request_error")
        assert "messages" in data["error"]["message"]
    await assert_error(await gw.post("/v1/messages", {**payload, "stream": True}), 400, "invalid_request_error")


@pytest.mark.parametrize("max_tokens", ["missing", 0, -5, None, "100", 1.5], ids=str)
async def test_c5_bad_max_tokens(start_upstream, start_gateway, max_tokens):
    """C5: missing, zero or negative `max_tokens` on /v1/messages → E(400, invalid_request_error)."""
    _, gw = await start_stack(start_upstream, start_gateway)
    payload = body()
    if max_tokens == "missing":
        del payload["max_tokens"]
    else:
        payload["max_tokens"] = max_tokens
    data = await assert_error(await gw.post("/v1/messages", payload), 400, "invalid_request_error")
    assert "max_tokens" in data["error"]["message"]


@pytest.mark.parametrize("block,field", [
    ({"type": "tool_use", "name": "Read", "input": {}}, "id"),
    ({"type": "tool_use", "id": "toolu_1", "input": {}}, "name"),
    ({"type": "tool_use", "id": "", "name": "Read", "input": {}}, "id"),
    ({"type": "tool_result", "content": "x"}, "tool_use_id"),
], ids=["no-id", "no-name", "empty-id", "no-tool_use_id"])
async def test_c6_tool_blocks_missing_fields(start_upstream, start_gateway, block, field):
    """C6: a `tool_use` without `id`/`name` or a `tool_result` without `tool_use_id` → E(400) naming the field."""
    _, gw = await start_stack(start_upstream, start_gateway)
    role = "assistant" if block["type"] == "tool_use" else "user"
    messages = [{"role": "user", "content": "hi"}, {"role": role, "content": [block]}]
    if role == "assistant":
        messages.append({"role": "user", "content": "go on"})
    for path in ("/v1/messages", COUNT):
        data = await assert_error(await gw.post(path, body(messages=messages)), 400, "invalid_request_error")
        assert field in data["error"]["message"]


@pytest.mark.parametrize("thinking", [
    {"type": "enabled"},
    {"type": "enabled", "budget_tokens": 512},
    {"type": "enabled", "budget_tokens": 4096},
    {"budget_tokens": 2048},
    {"type": "sometimes"},
], ids=["no-budget", "budget-below-1024", "budget-ge-max_tokens", "no-type", "bad-type"])
async def test_c7_malformed_thinking(start_upstream, start_gateway, thinking):
    """C7: malformed thinking (no budget_tokens; budget < 1024; budget ≥ max_tokens; no type) → E(400)."""
    up, gw = await start_stack(start_upstream, start_gateway)
    data = await assert_error(await gw.post("/v1/messages", body(max_tokens=4096, thinking=thinking)),
                              400, "invalid_request_error")
    assert "thinking" in data["error"]["message"]
    assert up.received == []


async def test_c8_unknown_model_default_or_404(start_upstream, start_gateway):
    """C8: an unknown `model` → mapped to the configured default (documented) or E(404, not_found_error); never 500."""
    up = await start_upstream("openai")
    table = {"type": "openai", "base_url": up.url, "model": "test-model",
             "model_mapping": {"claude-opus-4-8": "test-model"}}
    with_default = await start_gateway(gateway_config({"up": dict(table)}, default="up"))
    status, data = await with_default.messages(body(model="gpt-99-unknown"))
    assert status == 200, data
    assert data["model"] == "gpt-99-unknown"
    assert sent(up)["model"] == "test-model"

    without = await start_gateway(gateway_config({"up": dict(table)}))
    for path, payload in (("/v1/messages", body(model="gpt-99-unknown")),
                          ("/v1/messages", body(model="gpt-99-unknown", stream=True)),
                          (COUNT, {"model": "gpt-99-unknown", "messages": [{"role": "user", "content": "hi"}]})):
        data = await assert_error(await without.post(path, payload), 404, "not_found_error")
        assert "gpt-99-unknown" in data["error"]["message"]
        assert "claude-opus-4-8" in data["error"]["message"]  # it says what is available


async def test_c9_stream_failures_before_first_byte_are_json(start_upstream, start_gateway):
    """C9: failures known before the first byte of a `stream:true` request come as non-200 JSON errors, not 200 SSE."""
    up = await start_upstream("openai")
    table = {"type": "openai", "base_url": up.url, "model": "test-model",
             "model_mapping": {"claude-opus-4-8": "test-model"}}
    gw = await start_gateway(gateway_config({"up": table}))
    await assert_error(await gw.post("/v1/messages", body(stream=True, max_tokens=0)), 400, "invalid_request_error")
    await assert_error(await gw.post("/v1/messages", body(stream=True, messages=[])), 400, "invalid_request_error")
    await assert_error(await post_raw(gw, "/v1/messages", json.dumps(body(stream=True)),
                                      {"content-type": "application/json"}), 401, "authentication_error")
    await assert_error(await gw.post("/v1/messages", body(stream=True, model="nope-model")), 404, "not_found_error")
    up.push(FAIL(500, "engine crashed"))
    await assert_error(await gw.post("/v1/messages", body(stream=True)), 500, "api_error")
    up.push(FAIL(429, "queue full"))
    await assert_error(await gw.post("/v1/messages", body(stream=True)), 429, "rate_limit_error")
    await up.stop()  # backend down
    await assert_error(await gw.post("/v1/messages", body(stream=True)), 500, "api_error")


async def test_c10_backend_failures(stack):
    """C10: backend down or crashed → E(500, api_error) (529 when saturated, 429 when the queue is full), message kept."""
    up, gw = stack
    for upstream_status, status, type_ in ((500, 500, "api_error"), (502, 500, "api_error"),
                                           (503, 529, "overloaded_error"), (529, 529, "overloaded_error"),
                                           (429, 429, "rate_limit_error")):
        up.push(FAIL(upstream_status, f"engine said no ({upstream_status})"))
        data = await assert_error(await gw.post("/v1/messages", body()), status, type_)
        assert f"engine said no ({upstream_status})" in data["error"]["message"]
    await up.stop()
    data = await assert_error(await gw.post("/v1/messages", body()), 500, "api_error")
    assert data["error"]["message"]


@pytest.mark.parametrize("flavor", ["vllm", "llamacpp", "openai"])
async def test_c11_context_overflow_prompt_too_long(start_upstream, start_gateway, flavor):
    """C11: a prompt that cannot fit the backend window → E(400, invalid_request_error) containing `prompt is too long`."""
    extra = {"context_window": 2048} if flavor == "openai" else {}  # plain OpenAI servers do not say
    up, gw = await start_stack(start_upstream, start_gateway, flavor, upstream={"context": 2048}, **extra)
    huge = "All work and no play makes Jack a dull boy. " * 2000
    for stream in (False, True):
        resp = await gw.post("/v1/messages", body(max_tokens=64000, stream=stream,
                                                  messages=[{"role": "user", "content": huge}]))
        data = await assert_error(resp, 400, "invalid_request_error")
        assert "prompt is too long" in data["error"]["message"]
    assert up.received == []  # rejected before generation


async def test_c11_upstream_context_error_is_rewritten(start_upstream, start_gateway):
    """C11: an upstream's own context-length 400 becomes the `prompt is too long` message, never a 5xx."""
    up, gw = await start_stack(start_upstream, start_gateway, "openai")
    up.push(FAIL(400, "This model's maximum context length is 8192 tokens. However, your messages resulted in "
                      "10240 tokens. Please reduce the length of the messages."))
    data = await assert_error(await gw.post("/v1/messages", body()), 400, "invalid_request_error")
    assert "prompt is too long" in data["error"]["message"]
    assert "10240" in data["error"]["message"] and "8192" in data["error"]["message"]


async def test_c12_retry_hints(start_upstream, start_gateway):
    """C12: 429 and 529 responses carry `retry-after`; non-retryable 5xx carry `x-should-retry: false`."""
    up, gw = await start_stack(start_upstream, start_gateway)
    up.push(FAIL(429, "slow down", retry_after="7"))
    resp = await gw.post("/v1/messages", body())
    await assert_error(resp, 429, "rate_limit_error")
    assert resp.headers["retry-after"] == "7"
    for script in (FAIL(429), FAIL(503), FAIL(529)):
        up.push(script)
        resp = await gw.post("/v1/messages", body())
        assert resp.status in (429, 529)
        assert int(resp.headers["retry-after"]) >= 1
    # The backend refused the gateway's own credentials: retrying the same request cannot help.
    for upstream_status in (401, 403, 501):
        up.push(FAIL(upstream_status, "bad upstream key"))
        resp = await gw.post("/v1/messages", body())
        assert resp.status >= 500
        await assert_error(resp, resp.status, STATUS_TYPES.get(resp.status, "api_error"))
        assert resp.headers.get("x-should-retry") == "false"
    up.push(TEXT("fine"))
    assert (await gw.messages(body()))[0] == 200
