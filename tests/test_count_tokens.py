"""anthropic-compat.md section K: /v1/messages/count_tokens."""
from __future__ import annotations

import json

import pytest

from tests.compat_helpers import MODEL, assert_error, post_raw, start_stack
from tests.upstream import TEXT

COUNT = "/v1/messages/count_tokens"
PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
PROSE = ("The gateway translates Anthropic Messages requests into OpenAI chat completions and back. "
         "It keeps the prompt prefix stable so that the backend's prompt cache stays warm, clamps "
         "max_tokens to the context window, and reports usage the way Claude Code expects it. ")
TOOLS = [{"name": "Read", "description": "Read a file from the local filesystem. " * 5,
          "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"},
                                                            "offset": {"type": "number"}},
                           "required": ["file_path"], "additionalProperties": False}},
         {"name": "Bash", "description": "Run a shell command and return its output. " * 5,
          "input_schema": {"type": "object", "properties": {"command": {"type": "string"}},
                           "required": ["command"]}}]


def _count_body(**kw) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **kw}


async def _count(gw, payload: dict, path: str = COUNT) -> int:
    resp = await gw.post(path, payload)
    text = await resp.text()
    assert resp.status == 200, text
    data = json.loads(text)
    assert set(data) == {"input_tokens"}, data
    assert type(data["input_tokens"]) is int and data["input_tokens"] >= 1
    return data["input_tokens"]


async def test_k1_count_tokens_shape(stack):
    """K1: `{model, messages}` with no `max_tokens` → 200 with exactly `{"input_tokens": <int ≥ 1>}`."""
    up, gw = stack
    await _count(gw, _count_body())
    assert up.received == []


def _everything() -> dict:
    cc = {"type": "ephemeral"}
    return {
        "model": MODEL,
        "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": cc}],
        "tools": TOOLS, "tool_choice": {"type": "auto"},
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "messages": [
            {"role": "system", "content": "inline system note"},
            {"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_1PX}},
                {"type": "text", "text": "what is in the picture?", "cache_control": cc}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "look at the file", "signature": "sig"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "/a"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "data"}],
                 "cache_control": cc},
                {"type": "text", "text": "continue"}]},
        ],
        "metadata": {"user_id": "user_abc_account_x_session_y"}, "context_management": {"edits": []},
        "output_config": {"effort": "high"}, "stream": True, "max_tokens": 64000,
    }


@pytest.mark.parametrize("variant", ["everything", "system-string", "tool_choice-any", "adaptive", "beta-query"])
async def test_k2_accepts_every_messages_body_shape(stack, variant):
    """K2: count_tokens accepts every body shape /v1/messages accepts (system, tools, thinking, images, ...), no 400."""
    up, gw = stack
    payload, path = _everything(), COUNT
    if variant == "system-string":
        payload["system"] = "plain system string"
    elif variant == "tool_choice-any":
        payload["tool_choice"] = {"type": "any"}
        del payload["max_tokens"]
    elif variant == "adaptive":
        payload["thinking"] = {"type": "adaptive"}
        del payload["max_tokens"]
    elif variant == "beta-query":
        path = COUNT + "?beta=true"
    await _count(gw, payload, path)
    assert up.received == []  # never generates


async def test_k3_monotonic(stack):
    """K3: adding a system prompt, tools, or thinking blocks in the history increases the count."""
    up, gw = stack
    history = [{"role": "user", "content": "read it"},
               {"role": "assistant", "content": [{"type": "text", "text": "Done."}]},
               {"role": "user", "content": "thanks"}]
    base = await _count(gw, _count_body(messages=history))
    assert await _count(gw, _count_body(messages=history, system=PROSE)) > base
    assert await _count(gw, _count_body(messages=history, tools=TOOLS)) > base
    # Thinking inside the current tool loop: the part of history a model (and Anthropic) keeps.
    loop = [{"role": "user", "content": "read it"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Read",
                                               "input": {"file_path": "/a"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "data"}]}]
    thinking = [loop[0], {"role": "assistant", "content": [{"type": "thinking", "thinking": PROSE,
                                                            "signature": "sig"}] + loop[1]["content"]}, loop[2]]
    enabled = {"type": "enabled", "budget_tokens": 1024}
    assert await _count(gw, _count_body(messages=thinking, thinking=enabled)) > \
        await _count(gw, _count_body(messages=loop, thinking=enabled))


async def test_k4_count_matches_usage(stack):
    """K4: `count_tokens(B).input_tokens` equals usage input + cache_read + cache_creation of /v1/messages with B,
    exactly for tokenizer backends, within the documented estimate tolerance (±25%, gateway/protocol/tokens.py) for openai."""
    up, gw = stack
    payload = {"model": MODEL, "max_tokens": 256, "system": PROSE, "tools": TOOLS,
               "messages": [{"role": "user", "content": PROSE * 3},
                            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Read",
                                                               "input": {"file_path": "/etc/hosts"}}]},
                            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                                          "content": PROSE * 2}]}]}
    counted = await _count(gw, payload)
    up.push(TEXT("ok"))
    status, data = await gw.messages(payload)
    assert status == 200, data
    u = data["usage"]
    used = u["input_tokens"] + u.get("cache_read_input_tokens", 0) + u.get("cache_creation_input_tokens", 0)
    if up.flavor == "openai":
        assert abs(counted - used) <= 0.25 * used, (counted, used)
    else:
        assert counted == used


async def test_k5_errors_same_shapes_no_generation(start_upstream, start_gateway):
    """K5: count_tokens errors use the same shapes (E(400) bad body, E(401) auth) and never call generation."""
    up, gw = await start_stack(start_upstream, start_gateway, "vllm")
    await assert_error(await gw.post(COUNT, b"{nope"), 400, "invalid_request_error")
    await assert_error(await gw.post(COUNT, {"model": MODEL}), 400, "invalid_request_error")
    await assert_error(await gw.post(COUNT, {"messages": [{"role": "user", "content": "hi"}]}), 400,
                       "invalid_request_error")
    await assert_error(await post_raw(gw, COUNT, json.dumps(_count_body()), {"content-type": "application/json"}),
                       401, "authentication_error")
    await _count(gw, _count_body())
    assert up.received == []
    assert up.tokenize_calls == 1  # only the valid, authorised request reached the tokenizer


async def test_k6_large_claude_code_body_counted_without_generation(stack):
    """K6: an 85 KB Claude Code body is counted without running generation."""
    up, gw = stack
    tools = [{**TOOLS[i % 2], "name": f"Tool{i}"} for i in range(25)]
    history = []
    for i in range(30):
        history.append({"role": "user", "content": f"step {i}: " + PROSE * 7})
        history.append({"role": "assistant", "content": f"answer {i}: " + PROSE * 2})
    history.append({"role": "user", "content": "final"})
    payload = _count_body(system=PROSE * 10, tools=tools, messages=history)
    assert len(json.dumps(payload)) >= 85_000
    counted = await _count(gw, payload)
    assert counted > 85_000 / 8  # plausibly the whole body, not a fragment
    assert up.received == []
