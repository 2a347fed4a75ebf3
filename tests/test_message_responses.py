"""anthropic-compat.md sections D (non-streaming response) and E (tool use, non-streaming)."""
from __future__ import annotations

import asyncio
import json
import re

import pytest

from tests.compat_helpers import MODEL, body, sent_messages, start_stack
from tests.upstream import EMPTY, LEN, STOPSEQ, TEXT, TOOL, TOOLS2, Script

MESSAGE_KEYS = {"id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"}
TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
WEATHER_TOOL = {"name": "get_weather", "description": "Current weather",
                "input_schema": {"type": "object", "properties": {"location": {"type": "string"}},
                                 "required": ["location"]}}


async def _message(gw, payload: dict) -> dict:
    status, data = await gw.messages(payload)
    assert status == 200, data
    return data


# -- D. non-streaming response ---------------------------------------------------------------


async def test_d1_text_message_shape(stack):
    """D1: `TEXT("Hello there!")` → 200 JSON message: msg_ id, model, exact text content, end_turn, stop_sequence null, usage."""
    up, gw = stack
    up.push(TEXT("Hello there!"))
    resp = await gw.post("/v1/messages", body())
    assert resp.status == 200
    assert resp.content_type == "application/json"
    data = await resp.json()
    assert data["type"] == "message" and data["role"] == "assistant"
    assert data["id"].startswith("msg_")
    assert isinstance(data["model"], str)
    assert data["content"] == [{"type": "text", "text": "Hello there!"}]
    assert data["stop_reason"] == "end_turn"
    assert "stop_sequence" in data and data["stop_sequence"] is None
    assert isinstance(data["usage"], dict)
    # the official SDK parses the same answer into its types
    up.push(TEXT("Hello there!"))
    msg = await gw.anthropic().messages.create(model=MODEL, max_tokens=100,
                                               messages=[{"role": "user", "content": "hi"}])
    assert msg.type == "message" and msg.role == "assistant" and msg.id.startswith("msg_")
    assert [(b.type, b.text) for b in msg.content] == [("text", "Hello there!")]
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
    assert msg.usage.input_tokens >= 1 and msg.usage.output_tokens >= 1


async def test_d2_text_is_exactly_the_backend_answer(start_upstream, start_gateway):
    """D2: the returned text is exactly the backend's answer: no template tokens, no `<think>` tags, no extra whitespace."""
    up, gw = await start_stack(start_upstream, start_gateway)
    code = "def f(x):\n    return x * 2\n\n\n# trailing comment  "
    up.push(TEXT(code, pieces=7))
    data = await _message(gw, body())
    assert data["content"] == [{"type": "text", "text": code}]
    # reasoning inlined as <think> tags, thinking not requested: neither tags nor reasoning show up
    up.push(Script(deltas=[{"content": "<thi"}, {"content": "nk>let me plan</th"}, {"content": "ink>The answer"},
                           {"content": " is 4."}]))
    data = await _message(gw, body())
    text = "".join(b.get("text", "") for b in data["content"])
    assert text == "The answer is 4."
    assert all(b["type"] == "text" for b in data["content"])


async def test_d3_length_is_max_tokens(stack):
    """D3: `LEN(s)` → `stop_reason:"max_tokens"`."""
    up, gw = stack
    up.push(LEN("This answer is cut"))
    data = await _message(gw, body(max_tokens=5))
    assert data["stop_reason"] == "max_tokens"
    assert data["content"] == [{"type": "text", "text": "This answer is cut"}]


async def test_d4_usage_integers(stack):
    """D4: `usage.input_tokens` ≥ 1 and `output_tokens` ≥ 1 (non-empty output); cache fields integers or absent."""
    up, gw = stack
    up.push(TEXT("Some output here"))
    usage = (await _message(gw, body()))["usage"]
    for key in ("input_tokens", "output_tokens"):
        assert type(usage[key]) is int and usage[key] >= 1, usage
    for key in ("cache_read_input_tokens", "cache_creation_input_tokens"):
        assert key not in usage or (type(usage[key]) is int and usage[key] >= 0), usage


async def test_d4_input_tokens_exclude_cached(start_upstream, start_gateway):
    """D4: `input_tokens` excludes the cached tokens, which are reported as `cache_read_input_tokens`."""
    up, gw = await start_stack(start_upstream, start_gateway)
    up.push(Script(deltas=[{"content": "ok"}], usage={"prompt_tokens": 1000, "completion_tokens": 3,
                                                      "total_tokens": 1003,
                                                      "prompt_tokens_details": {"cached_tokens": 600}}))
    usage = (await _message(gw, body()))["usage"]
    assert usage["input_tokens"] == 400
    assert usage["cache_read_input_tokens"] == 600
    assert usage.get("cache_creation_input_tokens", 0) == 0
    assert usage["output_tokens"] == 3


async def test_d5_empty_output(stack):
    """D5: `EMPTY` → exactly one block `{"type":"text","text":""}` with `end_turn`."""
    up, gw = stack
    up.push(EMPTY())
    data = await _message(gw, body())
    assert data["content"] == [{"type": "text", "text": ""}]
    assert data["stop_reason"] == "end_turn"


async def test_d6_ids_unique(start_upstream, start_gateway):
    """D6: `id` is unique across 100 calls."""
    _, gw = await start_stack(start_upstream, start_gateway)
    ids: list[str] = []
    for _ in range(10):
        batch = await asyncio.gather(*(gw.messages(body()) for _ in range(10)))
        ids += [data["id"] for status, data in batch if status == 200]
    assert len(ids) == 100
    assert len(set(ids)) == 100


@pytest.mark.parametrize("model", ["claude-opus-4-8", "claude-sonnet-4-5-20250929", "claude-haiku-4-5[1m]"])
async def test_d7_model_echoed(start_upstream, start_gateway, model):
    """D7: the `model` field echoes the name the client sent, the same in streaming and non-streaming."""
    up, gw = await start_stack(start_upstream, start_gateway)
    data = await _message(gw, body(model=model))
    assert data["model"] == model
    frames = await gw.stream(body(model=model))
    assert frames[0][1]["message"]["model"] == model
    assert up.received[-1]["model"] == "test-model"


async def test_d8_stop_sequence(stack):
    """D8: `STOPSEQ("abc","END")` with `stop_sequences:["END"]` → stop_sequence "END", text "abc" without END."""
    up, gw = stack
    up.push(STOPSEQ("abc", "END"))
    data = await _message(gw, body(stop_sequences=["END"]))
    assert data["stop_reason"] == "stop_sequence"
    assert data["stop_sequence"] == "END"
    assert data["content"] == [{"type": "text", "text": "abc"}]


async def test_d8_stop_sequence_reported_by_vllm(start_upstream, start_gateway):
    """D8: a vLLM server that stops on the sequence itself (finish stop + stop_reason) → stop_sequence."""
    up, gw = await start_stack(start_upstream, start_gateway, "vllm")
    up.push(Script(deltas=[{"content": "ab"}, {"content": "c"}], stop_reason="END"))
    data = await _message(gw, body(stop_sequences=["END"]))
    assert (data["stop_reason"], data["stop_sequence"]) == ("stop_sequence", "END")
    assert data["content"] == [{"type": "text", "text": "abc"}]


async def test_d9_no_foreign_fields(stack):
    """D9: no foreign top-level fields (`object`, `choices`, `timings`) and no `usage.total_tokens`."""
    up, gw = stack
    for script in (TEXT("plain"), TOOL("get_weather", {"location": "Paris"}), EMPTY()):
        up.push(script)
        data = await _message(gw, body(tools=[WEATHER_TOOL]))
        assert set(data) <= MESSAGE_KEYS | {"container"}, set(data) - MESSAGE_KEYS
        assert "total_tokens" not in data["usage"]
        assert set(data["usage"]) <= {"input_tokens", "output_tokens", "cache_read_input_tokens",
                                      "cache_creation_input_tokens", "service_tier", "server_tool_use",
                                      "cache_creation"}


# -- E. tool use, non-streaming --------------------------------------------------------------


async def test_e1_tool_use_block(stack):
    """E1: `TOOL("get_weather", {"location":"Paris"})` → a tool_use block whose `input` is an object; `tool_use`."""
    up, gw = stack
    up.push(TOOL("get_weather", {"location": "Paris"}))
    data = await _message(gw, body(tools=[WEATHER_TOOL]))
    tools = [b for b in data["content"] if b["type"] == "tool_use"]
    assert len(tools) == 1
    block = tools[0]
    assert set(block) == {"type", "id", "name", "input"}
    assert block["name"] == "get_weather"
    assert block["input"] == {"location": "Paris"}
    assert data["stop_reason"] == "tool_use"


async def test_e2_tool_use_ids(start_upstream, start_gateway):
    """E2: `tool_use.id` matches `^[a-zA-Z0-9_-]+$` and is unique within the response and across calls."""
    up, gw = await start_stack(start_upstream, start_gateway)
    ids = []
    for _ in range(5):
        # the backend reuses the same call ids every time, as small local servers do
        up.push(TOOLS2())
        data = await _message(gw, body(tools=[WEATHER_TOOL]))
        ids += [b["id"] for b in data["content"] if b["type"] == "tool_use"]
    assert len(ids) == 10
    assert all(TOOL_ID.match(i) for i in ids), ids
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("toolu_") for i in ids)


async def test_e3_lead_text_then_tool(stack):
    """E3: `TOOL(..., lead="Let me check.")` → `content == [text "Let me check.", tool_use]`, in that order."""
    up, gw = stack
    up.push(TOOL("get_weather", {"location": "Paris"}, lead="Let me check."))
    data = await _message(gw, body(tools=[WEATHER_TOOL]))
    assert [b["type"] for b in data["content"]] == ["text", "tool_use"]
    assert data["content"][0] == {"type": "text", "text": "Let me check."}
    assert data["content"][1]["input"] == {"location": "Paris"}


async def test_e4_two_tool_calls(stack):
    """E4: `TOOLS2` → two tool_use blocks with distinct ids, in the backend's order; `stop_reason:"tool_use"`."""
    up, gw = stack
    up.push(TOOLS2())
    data = await _message(gw, body(tools=[WEATHER_TOOL]))
    blocks = data["content"]
    assert [(b["type"], b["name"], b["input"]) for b in blocks] == [
        ("tool_use", "get_weather", {"location": "Paris"}), ("tool_use", "get_time", {"tz": "CET"})]
    assert blocks[0]["id"] != blocks[1]["id"]
    assert data["stop_reason"] == "tool_use"


@pytest.mark.parametrize("function", [{"name": "list_files", "arguments": ""}, {"name": "list_files"},
                                      {"name": "list_files", "arguments": "{}"}],
                         ids=["empty", "absent", "empty-object"])
async def test_e5_empty_arguments(start_upstream, start_gateway, function):
    """E5: a tool call with empty or absent arguments → `input: {}`."""
    up, gw = await start_stack(start_upstream, start_gateway)
    up.push(Script(deltas=[{"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": function}]}],
                   finish_reason="tool_calls"))
    data = await _message(gw, body(tools=[{"name": "list_files", "input_schema": {"type": "object"}}]))
    assert [(b["type"], b["name"], b["input"]) for b in data["content"]] == [("tool_use", "list_files", {})]
    assert data["stop_reason"] == "tool_use"


async def test_e6_round_trip_with_sdk(stack):
    """E6: the E1 `content` sent back verbatim plus a `tool_result` with the same id → 200, text answer, `end_turn`."""
    up, gw = stack
    client = gw.anthropic()
    up.push(TOOL("get_weather", {"location": "Paris"}), TEXT("It is sunny in Paris."))
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    first = await client.messages.create(model=MODEL, max_tokens=200, tools=[WEATHER_TOOL], messages=messages)
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    messages += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21°C"}]}]
    second = await client.messages.create(model=MODEL, max_tokens=200, tools=[WEATHER_TOOL], messages=messages)
    assert second.stop_reason == "end_turn"
    assert [(b.type, b.text) for b in second.content] == [("text", "It is sunny in Paris.")]
    got = sent_messages(up)
    assert got[-2]["tool_calls"][0]["id"] == call.id
    assert json.loads(got[-2]["tool_calls"][0]["function"]["arguments"]) == {"location": "Paris"}
    assert got[-1] == {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21°C"}


@pytest.mark.parametrize("name", ["mcp__github__create_or_update_file_in_repository_with_a_very_long_descriptive_name",
                                  "my-tool_v2", "_x-"])
async def test_e7_tool_name_exact(start_upstream, start_gateway, name):
    """E7: `tool_use.name` equals the requested tool name exactly, including names over 64 chars and with `-`/`_`."""
    up, gw = await start_stack(start_upstream, start_gateway)
    up.push(TOOL(name, {"a": 1}))
    data = await _message(gw, body(tools=[{"name": name, "input_schema": {"type": "object"}}]))
    assert [b["name"] for b in data["content"] if b["type"] == "tool_use"] == [name]
    assert up.received[-1]["tools"][0]["function"]["name"] == name


async def test_e8_malformed_arguments(stack):
    """E8: malformed tool-call JSON → no 500, no corrupted body; the call is dropped or `input:{}`; valid calls survive."""
    up, gw = stack
    deltas = [
        {"tool_calls": [{"index": 0, "id": "call_0", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"location": "Par'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": 'is", oops'}}]},
        {"tool_calls": [{"index": 1, "id": "call_1", "type": "function",
                         "function": {"name": "get_time", "arguments": '{"tz": '}}]},
        {"tool_calls": [{"index": 1, "function": {"arguments": '"CET"}'}}]},
    ]
    up.push(Script(deltas=deltas, finish_reason="tool_calls"))
    resp = await gw.post("/v1/messages", body(tools=[WEATHER_TOOL]))
    assert resp.status == 200
    data = json.loads(await resp.text())  # a well-formed body
    tools = [b for b in data["content"] if b["type"] == "tool_use"]
    assert {"name": "get_time", "input": {"tz": "CET"}}.items() <= tools[-1].items()
    broken = [b for b in tools if b["name"] == "get_weather"]
    assert broken == [] or [b["input"] for b in broken] == [{}]
    assert all(isinstance(b["input"], dict) for b in tools)
