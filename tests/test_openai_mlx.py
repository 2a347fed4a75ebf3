"""POST /v1/chat/completions answered by the embedded MLX backend (the generated demo model),
with the official openai SDK as client: the same scripted answers an Anthropic client gets."""
from __future__ import annotations

import json

import jsonschema
import openai

from demo_model.generate import DEMO_SYSTEM, SCRIPTS, WEATHER_TOOL
from tests.conftest import TOKEN, engine_idle
from tests.logtools import wait_records

TOOL = {"type": "function", "function": {"name": WEATHER_TOOL["name"], "description": WEATHER_TOOL["description"],
                                         "parameters": WEATHER_TOOL["input_schema"]}}


def client(gw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=TOKEN, max_retries=0)


def chat(name: str, **extra) -> dict:
    """The OpenAI request that renders the same prompt as SCRIPTS[name].request()."""
    script = SCRIPTS[name]
    body = {"model": "claude-sonnet-4-6", "temperature": 0, "max_tokens": 256,
            "messages": [{"role": "system", "content": DEMO_SYSTEM}, {"role": "user", "content": script.user}]}
    if script.tools:
        body["tools"] = [TOOL]
    if script.thinking:
        body["reasoning_effort"] = "medium"
    body.update(extra)
    return body


async def test_scripted_answer_json_and_stream_agree(mlx_gw):
    gw = await mlx_gw()
    answer = SCRIPTS["hello"].answer
    async with client(gw) as c:
        r = await c.chat.completions.create(**chat("hello"))
        assert r.choices[0].message.content == answer and r.choices[0].finish_reason == "stop"
        assert r.usage.completion_tokens > 5 and r.usage.prompt_tokens > 5
        stream = await c.chat.completions.create(**chat("hello", stream=True, stream_options={"include_usage": True}))
        chunks = [ch async for ch in stream]
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == answer
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    # A second turn of the same prefix reads the prompt cache and says so.
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0
    lines = await wait_records(gw.log_path, 2)
    assert [ln["api"] for ln in lines] == ["openai", "openai"] and lines[0]["backend"] == "m"


async def test_tool_call_streams_as_tool_calls_deltas(mlx_gw):
    gw = await mlx_gw()
    async with client(gw) as c:
        stream = await c.chat.completions.create(**chat("weather", stream=True))
        calls: dict[int, dict] = {}
        finish = None
        async for ch in stream:
            for tc in ch.choices[0].delta.tool_calls or []:
                call = calls.setdefault(tc.index, {"id": tc.id, "name": tc.function.name, "arguments": ""})
                call["arguments"] += tc.function.arguments or ""
            finish = ch.choices[0].finish_reason or finish
        r = await c.chat.completions.create(**chat("weather"))
    assert finish == "tool_calls" and list(calls) == [0]
    assert calls[0]["id"].startswith("call_") and calls[0]["name"] == "get_weather"
    # The model wrote {"city": "Paris", "days": "3",}: repaired as for Anthropic clients.
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris", "days": 3}
    [tc] = r.choices[0].message.tool_calls
    assert (tc.function.name, json.loads(tc.function.arguments)) == ("get_weather", {"city": "Paris", "days": 3})
    assert r.choices[0].finish_reason == "tool_calls"


async def test_reasoning_effort_turns_thinking_on_and_returns_it(mlx_gw):
    gw = await mlx_gw()
    async with client(gw) as c:
        r = await c.chat.completions.create(**chat("think"))
    msg = r.choices[0].message
    assert msg.model_extra["reasoning_content"] == "The user wants thoughts first."
    assert msg.content == "Here is my answer."


async def test_json_schema_response_format_always_matches(mlx_gw):
    gw = await mlx_gw()
    schema = {"type": "object", "properties": {"title": {"type": "string", "maxLength": 24},
                                               "done": {"type": "boolean"}},
              "required": ["title", "done"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "t", "schema": schema, "strict": True}}
    async with client(gw) as c:
        for prompt in ("Summarize this session in a title.", "Say hello."):
            r = await c.chat.completions.create(model="claude-haiku-4-5", max_tokens=200, temperature=0,
                                                messages=[{"role": "user", "content": prompt}], response_format=fmt)
            jsonschema.validate(json.loads(r.choices[0].message.content), schema)
        r = await c.chat.completions.create(model="claude-haiku-4-5", max_tokens=2000, temperature=0,
                                            messages=[{"role": "user", "content": "Say hello."}],
                                            response_format={"type": "json_object"})
    content, finish = r.choices[0].message.content, r.choices[0].finish_reason
    if finish == "length":  # "any object": the demo model may write one string until the limit
        assert content.startswith("{"), content[:200]
    else:
        assert finish == "stop" and isinstance(json.loads(content), dict), content[:200]


async def test_stop_and_length_and_disconnect(mlx_gw):
    gw = await mlx_gw()
    async with client(gw) as c:
        r = await c.chat.completions.create(**chat("count", stop=["three"]))
        assert r.choices[0].message.content == "one, two, " and r.choices[0].finish_reason == "stop"
        r = await c.chat.completions.create(**chat("forever", max_completion_tokens=5))
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5
    resp = await gw.post("/v1/chat/completions", chat("forever", max_tokens=6000, stream=True))
    async for line in resp.content:
        if line.startswith(b"data: ") and b'"content":"l' in line:
            break
    resp.close()  # the client goes away mid-answer: generation stops
    assert "active requests: 0" in await engine_idle(gw)
