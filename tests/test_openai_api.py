"""POST /v1/chat/completions with the official openai SDK as client, in front of scripted upstreams."""
from __future__ import annotations

import asyncio
import json
import os

import openai
import pytest

from tests.conftest import TOKEN, gateway_config
from tests.logtools import json_lines, run_cli, wait_records
from tests.support.poll import wait_for
from tests.upstream import FAIL, FAIL_MID, TEXT, THINK, TOOL, TOOLS2, Script

MODEL = "gpt-4o"
USER = [{"role": "user", "content": "hi"}]


def client(gw, **kw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=kw.pop("api_key", TOKEN), max_retries=0, **kw)


async def _stack(start_upstream, start_gateway, tmp_path, flavor: str = "openai", default: str | None = "up",
                 **backend):
    up = await start_upstream(flavor)
    cfg = {"type": flavor, "base_url": up.url, "model": "test-model",
           "model_mapping": {MODEL: "test-model", "gpt-5*": "test-model"}, **backend}
    gw = await start_gateway(gateway_config({"up": cfg}, default=default, log_path=str(tmp_path / "log.jsonl")))
    gw.log_path = tmp_path / "log.jsonl"
    return up, gw


@pytest.mark.parametrize("flavor", ["openai", "vllm", "llamacpp"])
async def test_json_answer_and_the_body_the_upstream_gets(start_upstream, start_gateway, tmp_path, flavor):
    up, gw = await _stack(start_upstream, start_gateway, tmp_path, flavor)
    up.push(Script(deltas=[{"content": "Hello "}, {"content": "there!"}],
                   usage={"prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42,
                          "prompt_tokens_details": {"cached_tokens": 32}}))
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "weather?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_abc", "type": "function", "function": {"name": "get_weather",
                                                                       "arguments": '{"city": "Paris"}'}}]},
               {"role": "tool", "tool_call_id": "call_abc", "content": "sunny", "name": "get_weather"}]
    async with client(gw) as c:
        r = await c.chat.completions.create(model=MODEL, messages=history, max_completion_tokens=100,
                                            temperature=0.2, top_p=0.9, seed=7, stop=["END"],
                                            presence_penalty=0.5, logit_bias={"42": -100}, user="u1",
                                            extra_body={"top_k": 20, "vendor_flag": True})
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == MODEL
    [choice] = r.choices
    assert choice.message.content == "Hello there!" and choice.finish_reason == "stop"
    assert choice.message.tool_calls is None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (40, 2, 42)
    assert r.usage.prompt_tokens_details.cached_tokens == 32
    sent = up.received[-1]
    # The client's body, not a re-translation: its messages as written, its extras, its tool call ids.
    assert sent["messages"] == history
    # A non-streaming client: a server told the stop strings answers in one piece (stream_options only goes
    # with a stream); a generic server is not told them, and streams so the gateway can cut it at one.
    assert sent["model"] == "test-model"
    if flavor == "openai":
        assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    else:
        assert sent["stream"] is False and "stream_options" not in sent
    for key, value in {"max_completion_tokens": 100, "temperature": 0.2, "top_p": 0.9, "seed": 7, "stop": ["END"],
                       "presence_penalty": 0.5, "logit_bias": {"42": -100}, "user": "u1", "top_k": 20,
                       "vendor_flag": True}.items():
        assert sent[key] == value, key
    assert "max_tokens" not in sent


async def test_stream_with_and_without_usage_and_keep_alive_during_prefill(start_upstream, start_gateway, tmp_path):
    up, gw = await _stack(start_upstream, start_gateway, tmp_path)
    up.push(Script(deltas=[{"content": "slow "}, {"content": "start"}], first_delay_s=1.2))
    async with client(gw) as c:
        stream = await c.chat.completions.create(model=MODEL, messages=USER, stream=True,
                                                 stream_options={"include_usage": True})
        chunks = [ch async for ch in stream]
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "slow start"
        assert chunks[0].choices[0].delta.role == "assistant"
        assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 2
        assert all(ch.usage is None for ch in chunks[:-1])
        assert len({ch.id for ch in chunks}) == 1

        stream = await c.chat.completions.create(model=MODEL, messages=USER, stream=True)
        chunks = [ch async for ch in stream]
        assert all(ch.choices and ch.usage is None for ch in chunks)
    # On the wire: comments while the upstream prefills, then data lines, then [DONE].
    up.push(Script(deltas=[{"content": "x"}], first_delay_s=1.2))
    resp = await gw.post("/v1/chat/completions", {"model": MODEL, "messages": USER, "stream": True},
                         Authorization=f"Bearer {TOKEN}")
    raw = await resp.text()
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    frames = [f for f in raw.split("\n\n") if f]
    assert ": keep-alive" in frames and "event:" not in raw
    assert frames[-1] == "data: [DONE]"
    assert all(f == ": keep-alive" or f.startswith("data: ") for f in frames)


async def test_parallel_tool_calls_stream_and_json(start_upstream, start_gateway, tmp_path):
    up, gw = await _stack(start_upstream, start_gateway, tmp_path)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"location": {"type": "string"}}}}},
        {"type": "function", "function": {"name": "get_time", "description": "the time",
                                          "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}}}]
    up.push(TOOLS2(), TOOLS2())
    async with client(gw) as c:
        stream = await c.chat.completions.create(model=MODEL, messages=USER, tools=tools, stream=True,
                                                 tool_choice="auto", parallel_tool_calls=True)
        calls: dict[int, dict] = {}
        finish = None
        async for ch in stream:
            for tc in ch.choices[0].delta.tool_calls or []:
                call = calls.setdefault(tc.index, {"id": tc.id, "name": tc.function.name, "arguments": ""})
                if tc.id is not None:  # id and name come once, in the call's first delta
                    assert tc.id == call["id"] and tc.function.name == call["name"]
                call["arguments"] += tc.function.arguments or ""
            finish = ch.choices[0].finish_reason or finish
        assert finish == "tool_calls"
        assert calls == {0: {"id": "call_0", "name": "get_weather", "arguments": '{"location": "Paris"}'},
                         1: {"id": "call_1", "name": "get_time", "arguments": '{"tz": "CET"}'}}

        r = await c.chat.completions.create(model=MODEL, messages=USER, tools=tools)
        msg = r.choices[0].message
        assert r.choices[0].finish_reason == "tool_calls" and msg.content is None
        assert [(t.id, t.function.name, json.loads(t.function.arguments)) for t in msg.tool_calls] == [
            ("call_0", "get_weather", {"location": "Paris"}), ("call_1", "get_time", {"tz": "CET"})]
        assert up.received[-1]["tools"] == tools and "parallel_tool_calls" not in up.received[-1]

        # The answers go back under the ids the client got.
        up.push(TEXT("Paris: sunny, 14:00"))
        follow = USER + [msg.model_dump(exclude_none=True),
                         {"role": "tool", "tool_call_id": "call_0", "content": "sunny"},
                         {"role": "tool", "tool_call_id": "call_1", "content": "14:00"}]
        r = await c.chat.completions.create(model=MODEL, messages=follow, tools=tools)
    assert r.choices[0].message.content == "Paris: sunny, 14:00"
    assert [m.get("tool_call_id") for m in up.received[-1]["messages"][2:]] == ["call_0", "call_1"]


async def test_tool_call_ids_are_unique_even_when_the_upstream_repeats_them(start_upstream, start_gateway, tmp_path):
    up, gw = await _stack(start_upstream, start_gateway, tmp_path)
    deltas = [{"tool_calls": [{"index": i, "id": "call_0", "type": "function",
                               "function": {"name": "f", "arguments": "{}"}}]} for i in range(2)]
    deltas.append({"tool_calls": [{"index": 2, "type": "function", "function": {"name": "g", "arguments": "{}"}}]})
    up.push(Script(deltas=deltas, finish_reason="tool_calls"))
    async with client(gw) as c:
        r = await c.chat.completions.create(model=MODEL, messages=USER, tools=[
            {"type": "function", "function": {"name": n}} for n in ("f", "g")])
    ids = [t.id for t in r.choices[0].message.tool_calls]
    assert [t.function.name for t in r.choices[0].message.tool_calls] == ["f", "f", "g"]
    assert ids[0] == "call_0" and len(set(ids)) == 3 and all(i.startswith("call_") for i in ids)


async def test_reasoning_comes_back_as_reasoning_content(start_upstream, start_gateway, tmp_path):
    up, gw = await _stack(start_upstream, start_gateway, tmp_path)
    up.push(THINK("Let me think.", "Answer."), THINK("Let me think.", "Answer."))
    async with client(gw) as c:
        r = await c.chat.completions.create(model=MODEL, messages=USER, reasoning_effort="high")
        assert r.choices[0].message.content == "Answer."
        assert r.choices[0].message.model_extra["reasoning_content"] == "Let me think."
        stream = await c.chat.completions.create(model=MODEL, messages=USER, stream=True)
        deltas = [ch.choices[0].delta async for ch in stream]
    assert "".join(d.model_extra.get("reasoning_content") or "" for d in deltas) == "Let me think."
    assert "".join(d.content or "" for d in deltas) == "Answer."
    assert up.received[0]["reasoning_effort"] == "high"


async def test_response_format_and_a_limit_fitted_into_the_context(start_upstream, start_gateway, tmp_path):
    up, gw = await _stack(start_upstream, start_gateway, tmp_path, context_window=1000)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    up.push(TEXT('{"ok": true}'), TEXT("{}"))
    async with client(gw) as c:
        r = await c.chat.completions.create(model=MODEL, messages=USER, response_format=fmt, max_tokens=5000)
        assert json.loads(r.choices[0].message.content) == {"ok": True}
        assert up.received[-1]["response_format"] == fmt
        assert 0 < up.received[-1]["max_tokens"] < 1000  # clamped, in the field the client used
        await c.chat.completions.create(model=MODEL, messages=USER, response_format={"type": "json_object"})
    assert up.received[-1]["response_format"] == {"type": "json_object"}
    assert 0 < up.received[-1]["max_tokens"] < 1000  # no limit asked: the context still sets one


async def test_routing_by_model_and_the_openai_404(start_upstream, start_gateway, tmp_path):
    up, gw = await _stack(start_upstream, start_gateway, tmp_path, default=None)
    async with client(gw) as c:
        for name in (MODEL, "gpt-5-mini", "test-model"):  # exact, glob, backend model
            r = await c.chat.completions.create(model=name, messages=USER)
            assert r.model == name and up.received[-1]["model"] == "test-model"
        with pytest.raises(openai.NotFoundError) as exc:
            await c.chat.completions.create(model="llama-9", messages=USER)
    err = exc.value.body
    assert err["code"] == "model_not_found" and err["type"] == "invalid_request_error"
    assert "llama-9" in err["message"] and MODEL in err["message"] and "test-model" in err["message"]
    assert set(exc.value.response.json()) == {"error"}
    _, gw2 = await _stack(start_upstream, start_gateway, tmp_path / "b", default="up")
    async with client(gw2) as c:  # with a default backend, any name is served
        r = await c.chat.completions.create(model="llama-9", messages=USER)
    assert r.choices[0].message.content == "Hello there!"


@pytest.mark.parametrize("body, param", [
    ({"model": MODEL}, "messages"),
    ({"model": MODEL, "messages": []}, "messages"),
    ({"messages": USER}, "model"),
    ({"model": MODEL, "messages": USER, "temperature": 5}, "temperature"),
    ({"model": MODEL, "messages": USER, "n": 3}, "n"),
    ({"model": MODEL, "messages": USER, "logprobs": True}, "logprobs"),
    ({"model": MODEL, "messages": USER, "functions": [{"name": "f"}]}, "functions"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "messages.0.content.0.type"),
    ({"model": "", "messages": USER}, "model"),
    ({"model": MODEL, "messages": USER, "stop": [1]}, "stop"),
    ({"model": MODEL, "messages": USER, "reasoning_effort": "extreme"}, "reasoning_effort"),
    ({"model": MODEL, "messages": USER, "tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools.0.type"),
    ({"model": MODEL, "messages": ["hi"]}, "messages.0"),
    ({"model": MODEL, "messages": USER, "tool_choice": "required"}, "tool_choice"),
    ({"model": MODEL, "messages": USER, "max_completion_tokens": 0}, "max_completion_tokens"),
    ({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
    ({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}, "messages.0.tool_call_id"),
    ({"model": MODEL, "messages": USER, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice.function.name"),
    ({"model": MODEL, "messages": USER, "response_format": {"type": "xml"}}, "response_format.type"),
    ({"model": MODEL, "messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
     "messages.0.tool_calls.0.function.arguments"),
])
async def test_bad_requests_are_openai_shaped_400s(start_upstream, start_gateway, tmp_path, body, param):
    up, gw = await _stack(start_upstream, start_gateway, tmp_path)
    resp = await gw.post("/v1/chat/completions", body)
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"].startswith(param)
    assert resp.headers["request-id"].startswith("req_")
    assert up.received == []
    [line] = await wait_records(gw.log_path, 1)
    assert line["api"] == "openai" and line["status"] == 400 and line["error"]["type"] == "invalid_request_error"


async def test_auth_transport_and_upstream_errors(start_upstream, start_gateway, tmp_path):
    up, gw = await _stack(start_upstream, start_gateway, tmp_path)
    async with client(gw, api_key="wrong") as c:
        with pytest.raises(openai.AuthenticationError) as exc:
            await c.chat.completions.create(model=MODEL, messages=USER)
    assert exc.value.body["code"] == "invalid_api_key" and TOKEN not in exc.value.response.text
    resp = await gw.post("/v1/chat/completions", b"{not json")
    assert resp.status == 400 and "error" in await resp.json()
    resp = await gw.post("/v1/chat/completions", {"model": MODEL, "messages": USER}, **{"x-api-key": TOKEN})
    assert resp.status == 200  # the Anthropic header works here too
    up.push(FAIL(429, "slow down", retry_after="3"), FAIL(503, "busy"), FAIL_MID(500))
    async with client(gw) as c:
        with pytest.raises(openai.RateLimitError) as exc:
            await c.chat.completions.create(model=MODEL, messages=USER)
        assert exc.value.response.headers["retry-after"] == "3" and "slow down" in exc.value.body["message"]
        with pytest.raises(openai.APIStatusError) as exc:  # known before the first byte: a real status
            await c.chat.completions.create(model=MODEL, messages=USER, stream=True)
        assert exc.value.status_code == 529 and exc.value.body["code"] == "overloaded"
        stream = await c.chat.completions.create(model=MODEL, messages=USER, stream=True)
        got = ""
        with pytest.raises(openai.APIError) as exc:
            async for ch in stream:
                got += ch.choices[0].delta.content or ""
        assert got == "partial answer" and "died mid-stream" in str(exc.value)
        up.push(TEXT("still serving"))
        r = await c.chat.completions.create(model=MODEL, messages=USER)
        assert r.choices[0].message.content == "still serving"
    lines = await wait_records(gw.log_path, 7)
    assert [ln["status"] for ln in lines] == [401, 400, 200, 429, 529, 200, 200]
    assert {ln["api"] for ln in lines} == {"openai"}
    assert lines[5]["error"]["message"].endswith("died mid-stream")


async def test_client_disconnect_cancels_the_upstream(start_upstream, start_gateway, tmp_path):
    up, gw = await _stack(start_upstream, start_gateway, tmp_path)
    up.push(Script(deltas=[{"content": f"word{i} "} for i in range(500)], delay_s=0.01))
    resp = await gw.post("/v1/chat/completions", {"model": MODEL, "messages": USER, "stream": True})
    assert resp.status == 200
    await resp.content.readuntil(b"word3")
    resp.close()
    assert await wait_for(lambda: up.cancelled == 1, timeout=1.5), "upstream never saw the cancellation"
    assert up.completed == 0
    [line] = await wait_records(gw.log_path, 1)
    assert line["status"] == 499 or line["error"]["type"] == "client_disconnected"


async def test_request_log_and_metrics_know_the_api(start_upstream, start_gateway, tmp_path):
    up, gw = await _stack(start_upstream, start_gateway, tmp_path)
    up.push(TOOL("get_weather", {"city": "Oslo"}, lead="Checking."))
    async with client(gw) as c:
        await c.chat.completions.create(model=MODEL, messages=USER, tools=[
            {"type": "function", "function": {"name": "get_weather"}}],
            extra_headers={"X-Claude-Code-Session-Id": "sess-oai"})
    resp = await gw.post("/v1/messages", {"model": MODEL, "max_tokens": 20, "messages": USER})
    assert resp.status == 200
    oai, anth = await wait_records(gw.log_path, 2)
    assert (oai["api"], anth["api"]) == ("openai", "anthropic")
    assert (oai["session_id"], anth["session_id"]) == ("sess-oai", None)
    assert oai["path"] == "/v1/chat/completions" and oai["model"] == MODEL and oai["backend"] == "up"
    assert oai["stop_reason"] == "tool_use" and oai["tool_names"] == ["get_weather"]
    assert oai["response"][1]["input"] == {"city": "Oslo"} and oai["body"]["messages"] == USER
    metrics = await (await gw.session.get(gw.url + "/metrics")).text()
    assert any('route="/v1/chat/completions"' in ln and 'status="200"' in ln for ln in metrics.splitlines())


async def test_models_list_serves_both_sdks(start_upstream, start_gateway, tmp_path):
    import anthropic
    up = await start_upstream(models=["test-model"])
    mapping = {f"gpt-{i}": "test-model" for i in range(25)}
    gw = await start_gateway(gateway_config({"up": {"type": "openai", "base_url": up.url, "model": "test-model",
                                                    "model_mapping": mapping}}))
    async with client(gw) as c:
        page = await c.models.list()
        ids = [m.id for m in page.data]
        assert ids == list(mapping) + ["test-model"]  # one page holds them all: OpenAI clients never page
        assert all(m.object == "model" and m.owned_by == "up" and isinstance(m.created, int) for m in page.data)
        assert page.data[-1].created == 1700000000  # the upstream's own date
        one = await c.models.retrieve("gpt-3")
        assert (one.id, one.object, one.owned_by) == ("gpt-3", "model", "up")
    async with anthropic.AsyncAnthropic(base_url=gw.url, api_key=TOKEN, max_retries=0) as a:
        first = await a.models.list()
        assert len(first.data) == 20 and first.has_more  # Anthropic's default page, as before
        assert "object" not in first.model_extra and "owned_by" not in first.data[0].model_extra
        assert [m.id async for m in await a.models.list()] == ids
        assert (await a.models.retrieve("gpt-3")).display_name.startswith("gpt-3")
        # The response OpenAI clients get parses with the Anthropic SDK too.
        other = await a.models.list(extra_headers={"anthropic-version": anthropic.Omit()})
        assert [m.id for m in other.data] == ids and not other.has_more
        assert other.data[0].display_name and other.data[0].created_at.year == 1970
        assert other.model_extra["object"] == "list" and other.data[0].model_extra["owned_by"] == "up"


async def test_replay_of_an_openai_record(start_upstream, start_gateway, tmp_path):
    up, gw = await _stack(start_upstream, start_gateway, tmp_path)
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    up.push(TEXT("A says hello"), TOOL("get_weather", {"city": "Paris"}, lead="Checking."))
    async with client(gw) as c:
        await c.chat.completions.create(model=MODEL, messages=USER)
        stream = await c.chat.completions.create(model=MODEL, messages=USER, tools=tools, stream=True)
        [_ async for _ in stream]
    recs = await wait_records(gw.log_path, 2)
    up2, other = await _stack(start_upstream, start_gateway, tmp_path / "b")
    up2.push(TEXT("B says something else entirely"), TOOL("get_weather", {"city": "Lyon"}))
    env = {**os.environ, "ANTHROPIC_API_KEY": TOKEN}
    code, out, err = await run_cli("--file", str(gw.log_path), "replay", "--to", other.url, "--json",
                                   "--min-similarity", "0.9", env=env)
    results = {r["request_id"]: r for r in json_lines(out)}
    assert [b["model"] for b in up2.received] == ["test-model", "test-model"]
    assert [len(b["messages"]) for b in up2.received] == [1, 1] and up2.received[1]["tools"] == tools
    text, tool = results[recs[0]["request_id"]], results[recs[1]["request_id"]]
    assert text["new"]["status"] == 200 and text["answer"]["changed"] and "answer_changed" in text["regressions"]
    assert "+B says something else entirely" in text["answer"]["diff"]
    assert tool["new"]["tool_names"] == ["get_weather"] and tool["new"]["stop_reason"] == "tool_use"
    assert "tool_arguments_changed" in tool["regressions"]
    assert '+[tool_use get_weather] {"city":"Lyon"}' in tool["answer"]["diff"]
    assert code == 1, err

    up3, same = await _stack(start_upstream, start_gateway, tmp_path / "c")
    up3.push(TEXT("A says hello"), TOOL("get_weather", {"city": "Paris"}, lead="Checking."))
    code, out, err = await run_cli("--file", str(gw.log_path), "replay", "--to", same.url, "--json",
                                   "--strict", env=env)
    assert code == 0, out + err
    assert all(r["regressions"] == [] and r["answer"]["changed"] is False for r in json_lines(out))


async def test_shutdown_cut_reaches_openai_clients_as_an_error_chunk(start_upstream, start_gateway, tmp_path):
    up, gw = await _stack(start_upstream, start_gateway, tmp_path)
    up.push(Script(deltas=[{"content": f"w{i} "} for i in range(300)], delay_s=0.01))
    resp = await gw.post("/v1/chat/completions", {"model": MODEL, "messages": USER, "stream": True})
    await resp.content.readuntil(b"w2")
    gw.gateway.stopping = True
    gw.gateway.cut_inflight()
    raw = (await asyncio.wait_for(resp.read(), 5)).decode()
    last = [f for f in raw.split("\n\n") if f][-1]
    assert json.loads(last[6:])["error"]["code"] == "overloaded"


async def test_langchain_chat_openai_text_stream_and_tools(start_upstream, start_gateway, tmp_path):
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(location: str) -> str:
        """Current weather for a location."""
        return "sunny"

    up, gw = await _stack(start_upstream, start_gateway, tmp_path)
    llm = ChatOpenAI(model=MODEL, base_url=gw.url + "/v1", api_key=TOKEN, max_retries=0, temperature=0)
    up.push(TEXT("Hello from LangChain"), TEXT("streamed words here"), TOOL("get_weather", {"location": "Paris"}),
            TEXT("It is sunny."))
    reply = await llm.ainvoke("hi")
    assert reply.content == "Hello from LangChain" and reply.usage_metadata["output_tokens"] > 0
    pieces = [chunk.content async for chunk in llm.astream("hi")]
    assert "".join(pieces) == "streamed words here" and len(pieces) > 2
    bound = llm.bind_tools([get_weather])
    call = await bound.ainvoke([HumanMessage("weather in Paris?")])
    [tc] = call.tool_calls
    assert tc["name"] == "get_weather" and tc["args"] == {"location": "Paris"} and tc["id"] == "call_1"
    final = await bound.ainvoke([HumanMessage("weather in Paris?"), call,
                                 ToolMessage("sunny", tool_call_id=tc["id"])])
    assert isinstance(final, AIMessage) and final.content == "It is sunny."
    assert up.received[-1]["messages"][-1] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}


async def test_images_reach_a_vision_backend_as_sent_and_are_refused_elsewhere(start_upstream, start_gateway, tmp_path):
    content = [{"type": "text", "text": "what is this?"},
               {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}}]
    up, gw = await _stack(start_upstream, start_gateway, tmp_path, vision=True)
    async with client(gw) as c:
        await c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}])
    assert up.received[-1]["messages"][0]["content"] == content
    up2, blind = await _stack(start_upstream, start_gateway, tmp_path / "b")
    async with client(blind) as c:
        with pytest.raises(openai.BadRequestError) as exc:
            await c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}])
    assert "does not accept images" in exc.value.body["message"] and up2.received == []


async def test_other_methods_and_the_doubled_v1_prefix(start_upstream, start_gateway, tmp_path):
    _, gw = await _stack(start_upstream, start_gateway, tmp_path)
    resp = await gw.get("/v1/chat/completions")
    assert resp.status == 404 and (await resp.json())["error"]["message"].startswith("no route for GET")
    async with openai.AsyncOpenAI(base_url=gw.url + "/v1/v1", api_key=TOKEN, max_retries=0) as c:
        r = await c.chat.completions.create(model=MODEL, messages=USER)
    assert r.choices[0].message.content == "Hello there!"
    lines = await wait_records(gw.log_path, 2)
    assert [(ln["path"], ln["api"]) for ln in lines] == [("/v1/chat/completions", "openai"),
                                                          ("/v1/v1/chat/completions", "openai")]
