"""Non-streaming requests to OpenAI-style servers are answered from one non-streamed ChatCompletion
(stream=false upstream), and the client gets exactly the message the streaming path assembles for
the same scripted answer: content, stop, usage, errors, and the request log line."""
from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from tests.compat_helpers import MODEL, backend_table
from tests.conftest import gateway_config
from tests.logtools import wait_records
from tests.sse_checks import read_stream
from tests.support.poll import wait_for
from tests.upstream import EMPTY, FAIL, FAIL_MID, LEN, TEXT, THINK, TOOL, TOOLS2, Script, Upstream

WEATHER = {"name": "get_weather", "description": "Current weather",
           "input_schema": {"type": "object", "properties": {"location": {"type": "string"},
                                                             "days": {"type": "integer"}},
                            "required": ["location"]}}
TIME = {"name": "get_time", "description": "Current time",
        "input_schema": {"type": "object", "properties": {"tz": {"type": "string"}}}}
THINKING = {"max_tokens": 2048, "thinking": {"type": "enabled", "budget_tokens": 1024}}
TOOLS = {"tools": [WEATHER, TIME]}
FLAVORS = ["openai", "vllm", "llamacpp"]


def _tool_call(raw_args: str, lead: str | None = None) -> Script:
    """One server-parsed call whose argument text is `raw_args` (streamed in fragments)."""
    deltas = [{"content": lead}] if lead else []
    deltas.append({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                   "function": {"name": "get_weather", "arguments": ""}}]})
    deltas += [{"tool_calls": [{"index": 0, "function": {"arguments": raw_args[i:i + 5]}}]}
               for i in range(0, len(raw_args), 5)]
    return Script(deltas=deltas, finish_reason="tool_calls")


def _text_call(call: str) -> Script:
    """A model's `<tool_call>` written as content (a server without a tool parser)."""
    return TEXT(f"Checking.\n<tool_call>\n{call}\n</tool_call>", pieces=9)


def _cut_call() -> Script:
    script = TOOL("get_weather", {"location": "Paris"}, lead="Let me look.")
    script.deltas = script.deltas[:-2]
    script.finish_reason = "length"
    return script


# name: (script factory, request fields, backend fields)
CASES = {
    "text": (lambda: TEXT("Hello there, how are you today?"), {}, {}),
    "empty": (EMPTY, {}, {}),
    "inline_think_tags": (lambda: TEXT("<think>plan it</think>\n\nThe answer.", pieces=6), THINKING, {}),
    "reasoning": (lambda: THINK("Let me think about it.", "Here it is."), THINKING, {}),
    "reasoning_hidden": (lambda: THINK("Secret plan.", "Visible."), {}, {}),
    "reasoning_key": (lambda: Script(deltas=[{"reasoning": "newer vLLM key"}, {"content": "Done."}]), THINKING, {}),
    "tool_call": (lambda: TOOL("get_weather", {"location": "Paris"}, lead="Let me check."), TOOLS, {}),
    "two_tool_calls": (TOOLS2, TOOLS, {}),
    "damaged_args": (lambda: _tool_call('{"location": "Paris", "days": "3",}'), TOOLS, {}),
    "invalid_args": (lambda: _tool_call('{"town": 7}', lead="Hm."), TOOLS, {}),
    "unknown_tool": (lambda: TOOL("rm_rf", {"path": "/"}), TOOLS, {}),
    "text_call_hermes": (lambda: _text_call('{"name": "get_weather", "arguments": {"location": "Rome"}}'),
                         TOOLS, {"tool_parser": "hermes"}),
    "text_call_auto": (lambda: _text_call('{"name": "get_weather", "arguments": {"location": "Oslo", "days": "2"}}'),
                       TOOLS, {}),
    "text_call_qwen3_coder": (lambda: _text_call("<function=get_weather>\n<parameter=location>\nLima\n</parameter>\n"
                                                 "</function>"), TOOLS, {"tool_parser": "qwen3_coder"}),
    "text_call_invalid": (lambda: _text_call('{"name": "get_weather", "arguments": {"town": 1}}'), TOOLS, {}),
    "max_tokens": (lambda: LEN("one two three four"), {}, {}),
    "tool_call_cut_by_max_tokens": (_cut_call, TOOLS, {}),
    "cached_usage": (lambda: Script(deltas=[{"content": "cached answer"}],
                                    usage={"prompt_tokens": 1000, "completion_tokens": 3, "total_tokens": 1003,
                                           "prompt_tokens_details": {"cached_tokens": 900}}), {}, {}),
    # Servers told the stop strings report which one stopped them (vLLM's stop_reason, llama.cpp's
    # `verbose` block); a generic server is not told them, so that request still streams (below).
    "stop_sequence": (lambda: Script(deltas=[{"content": "ab"}, {"content": "c"}], stop_reason="END"),
                      {"stop_sequences": ["END", "STOP"]}, {}),
}

ERRORS = {
    "400": FAIL(400, "bad request field"),
    "401": FAIL(401, "wrong key"),
    "404": FAIL(404, "no such model"),
    "429": FAIL(429, "slow down", retry_after="3"),
    "500": FAIL(500, "upstream exploded"),
    "503": FAIL(503, "overloaded now"),
    "context_overflow": FAIL(400, "This model's maximum context length is 100 tokens. However, you requested "
                                  "150 tokens (120 in the messages, 30 in the completion)."),
    "template_error": FAIL(500, "Jinja Exception: System message must be at the beginning."),
    "fails_during_generation": FAIL_MID(500, "CUDA out of memory"),
}


def _request(**fields) -> dict:
    return {"model": MODEL, "max_tokens": 200, "messages": [{"role": "user", "content": "hi"}], **fields}


async def _gateway(start_upstream, start_gateway, tmp_path, flavor: str, **backend):
    up = await start_upstream(flavor)
    log = tmp_path / "requests.jsonl"
    gw = await start_gateway(gateway_config({"up": backend_table(up, **backend)}, default="up",
                                            log_path=str(log)))
    return up, gw, log


def _comparable(content: list[dict]) -> list[dict]:
    # Tool-use ids and thinking signatures are issued per response; everything else must be equal.
    return [{k: v for k, v in b.items() if k not in ("id", "signature")} for b in content]


def _logged(rec: dict) -> dict:
    same = ("status", "model", "backend", "backend_model", "input_tokens", "output_tokens", "cache_read_tokens",
            "stop_reason", "tool_names", "error", "replica")
    return {k: rec.get(k) for k in same} | {"response": _comparable(rec.get("response") or [])}


def _whole(flavor: str, fields: dict) -> bool:
    """Is this request answered from one non-streamed ChatCompletion (else streamed upstream)?"""
    return not (flavor == "openai" and fields.get("stop_sequences"))


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("case", CASES)
async def test_whole_answer_equals_the_streamed_one(start_upstream, start_gateway, tmp_path, flavor, case):
    script, fields, backend = CASES[case]
    up, gw, log = await _gateway(start_upstream, start_gateway, tmp_path, flavor, **backend)
    up.push(script(), script())
    status, message = await gw.messages(_request(**fields))
    assert status == 200, message
    async with await gw.post("/v1/messages", _request(**fields, stream=True)) as resp:
        streamed = await read_stream(resp)

    assert up.streams == [not _whole(flavor, fields), True]
    if _whole(flavor, fields):
        assert "stream_options" not in up.received[0]
    assert _comparable(message["content"]) == _comparable(streamed.content)
    assert (message["stop_reason"], message["stop_sequence"]) == (streamed.stop_reason, streamed.stop_sequence)
    assert message["usage"] == {**streamed.message["usage"], **streamed.usage}
    whole_rec, stream_rec = await wait_records(log, 2)
    assert _logged(whole_rec) == _logged(stream_rec)
    assert whole_rec["stream"] is False and stream_rec["stream"] is True
    # A non-streamed upstream answer arrives all at once: there is no time to first token to log.
    assert (whole_rec["ttft_ms"] is None) == (_whole(flavor, fields) and bool(message["content"]))


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("case", ERRORS)
async def test_upstream_errors_reach_the_client_as_they_do_streamed(start_upstream, start_gateway, tmp_path,
                                                                    flavor, case):
    up, gw, log = await _gateway(start_upstream, start_gateway, tmp_path, flavor)
    up.push(ERRORS[case], ERRORS[case])
    resp = await gw.post("/v1/messages", _request())
    whole = await resp.json()
    async with await gw.post("/v1/messages", _request(stream=True)) as sresp:
        if sresp.status == 200:  # failed after the stream began: the error event
            streamed_status, streamed_error = 200, (await read_stream(sresp, ok=False)).error
        else:
            streamed_status, streamed_error = sresp.status, (await sresp.json())["error"]

    assert up.streams == [False, True]
    assert whole["type"] == "error" and whole["error"]["type"] == streamed_error["type"]
    if streamed_status != 200:
        assert resp.status == streamed_status
        assert whole["error"]["message"] == streamed_error["message"]
        assert resp.headers.get("retry-after") == sresp.headers.get("retry-after")
    else:  # streamed, the error came after content: the JSON answer fails with the upstream's status
        assert resp.status == 500 and "CUDA out of memory" in whole["error"]["message"]
    if case == "context_overflow":
        assert whole["error"]["message"] == "prompt is too long: 120 tokens > 100 maximum"
    if case == "template_error":
        assert resp.status == 400 and "chat template" in whole["error"]["message"]
    whole_rec, _ = await wait_records(log, 2)
    assert whole_rec["status"] == resp.status and whole_rec["error"]["type"] == whole["error"]["type"]


async def test_openai_client_gets_a_whole_answer_too(start_upstream, start_gateway, tmp_path):
    """/v1/chat/completions without stream: the client's body goes on with stream=false."""
    up, gw, _ = await _gateway(start_upstream, start_gateway, tmp_path, "vllm")
    up.push(TOOL("get_weather", {"location": "Paris"}, lead="Checking."))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "weather?"}],
            "stream_options": {"include_usage": True},
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["input_schema"]}}]}
    resp = await gw.post("/v1/chat/completions", body)
    answer = await resp.json()
    assert resp.status == 200, answer
    assert up.streams == [False] and "stream_options" not in up.received[0]
    [choice] = answer["choices"]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Checking."
    [call] = choice["message"]["tool_calls"]
    assert json.loads(call["function"]["arguments"]) == {"location": "Paris"}


async def test_a_failing_replica_is_passed_over(start_upstream, start_gateway, tmp_path):
    first, second = await start_upstream("vllm"), await start_upstream("vllm")
    log = tmp_path / "requests.jsonl"
    table = backend_table(first)
    table["base_url"] = [first.url, second.url]
    gw = await start_gateway(gateway_config({"up": table}, default="up", log_path=str(log)))
    tried: list[int] = []

    def script(body: dict) -> Script:  # whichever replica the pool tries first is busy
        tried.append(1)
        return FAIL(503, "busy") if len(tried) == 1 else TEXT("from the other")

    first.default = second.default = script
    status, message = await gw.messages(_request())
    assert status == 200, message
    assert message["content"] == [{"type": "text", "text": "from the other"}]
    assert first.streams + second.streams == [False, False]
    answered = first if first.completed else second
    [rec] = await wait_records(log, 1)
    assert rec["replica"] == answered.url and rec["ttft_ms"] is None


async def test_after_a_failover_the_log_times_the_replica_that_answered(start_upstream, start_gateway, tmp_path):
    """The first replica accepts a whole answer that says it is overloaded; the second streams
    (a proxy that always does): the answer came streamed, so its first token is timed."""
    first, second = await start_upstream("vllm"), await start_upstream("vllm")
    log = tmp_path / "requests.jsonl"
    table = {**backend_table(first), "base_url": [first.url, second.url]}
    gw = await start_gateway(gateway_config({"up": table}, default="up", log_path=str(log)))
    tried: list[int] = []
    sse = ['data: {"choices":[{"index":0,"delta":{"content":"streamed anyway"},"finish_reason":"stop"}]}',
           "data: [DONE]"]

    def script(body: dict) -> Script:
        tried.append(1)
        if len(tried) == 1:
            return Script(body_pieces=lambda: [b'{"error": {"message": "server busy", "code": 503}}'],
                          stream_headers={"Content-Type": "application/json"})
        return Script(raw_lines=sse)

    first.default = second.default = script
    status, message = await gw.messages(_request())
    assert status == 200, message
    assert message["content"] == [{"type": "text", "text": "streamed anyway"}] and len(tried) == 2
    [rec] = await wait_records(log, 1)
    assert rec["ttft_ms"] is not None, rec


async def test_connection_lost_before_the_answer_moves_to_the_fallback(start_upstream, start_gateway, tmp_path):
    """A server that drops the connection instead of answering: nothing reached the client, so the
    fallback backend answers (streamed, the partial answer would already have gone out)."""
    main, spare = await start_upstream("llamacpp"), await start_upstream("openai")
    log = tmp_path / "requests.jsonl"
    gw = await start_gateway(gateway_config(
        {"main": {**backend_table(main), "fallback": "spare"},
         "spare": {"type": "openai", "base_url": spare.url, "model": "spare-model"}},
        default="main", log_path=str(log)))
    main.push(Script(deltas=[{"content": "never seen"}], die_mid=True))
    spare.push(TEXT("the spare answers"))
    status, message = await gw.messages(_request())
    assert status == 200, message
    assert message["content"] == [{"type": "text", "text": "the spare answers"}]
    assert main.streams == [False] and spare.streams == [False]
    [rec] = await wait_records(log, 1)
    assert rec["backend"] == "spare" and rec["fallback"]["from"] == "main" and rec["fallback"]["reason"] == "unavailable"


async def test_an_answer_refused_for_what_it_holds_is_not_asked_again_elsewhere(start_upstream, start_gateway,
                                                                                tmp_path):
    """A whole answer the gateway refuses (here: more tool calls at once than it takes) arrived from a
    healthy server: no other replica or fallback regenerates it, and the client hears why."""
    first, second = await start_upstream("vllm"), await start_upstream("vllm")
    spare = await start_upstream("openai")
    log = tmp_path / "requests.jsonl"
    table = {**backend_table(first), "base_url": [first.url, second.url], "fallback": "spare"}
    gw = await start_gateway(gateway_config(
        {"up": table, "spare": {"type": "openai", "base_url": spare.url, "model": "spare-model"}},
        default="up", log_path=str(log)))
    calls = [{"tool_calls": [{"index": i, "id": f"call_{i}", "type": "function",
                              "function": {"name": "get_time", "arguments": "{}"}}]} for i in range(65)]
    first.default = second.default = lambda body: Script(deltas=list(calls), finish_reason="tool_calls")
    status, err = await gw.messages(_request(**TOOLS))
    assert status == 500 and "65 tool calls" in err["error"]["message"], err
    assert len(first.streams + second.streams) == 1 and spare.streams == []
    [rec] = await wait_records(log, 1)
    assert rec["backend"] == "up" and "fallback" not in rec, rec


def test_the_scripted_upstream_writes_each_servers_shape():
    """The fake's non-streamed answers carry what the real servers put there."""
    script = Script(deltas=[{"reasoning_content": "r"}, {"content": "t"}], stop_reason="END")
    body = {"model": "m", "verbose": True}
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    vllm = Upstream("vllm")._whole(script, body, usage)
    assert vllm["choices"][0]["stop_reason"] == "END" and vllm["choices"][0]["message"]["tool_calls"] == []
    llama = Upstream("llamacpp")._whole(script, body, usage)
    assert "stop_reason" not in llama["choices"][0] and llama["__verbose"]["stopping_word"] == "END"
    assert llama["usage"]["prompt_tokens_details"] == {"cached_tokens": 0} and "timings" in llama
    openai_ = Upstream("openai")._whole(script, body, usage)
    assert openai_["choices"][0]["message"]["refusal"] is None and openai_["object"] == "chat.completion"


async def test_a_client_that_leaves_cancels_the_whole_answer(start_upstream, start_gateway, tmp_path):
    """Waiting for a whole answer, the gateway still hangs up on the server when the client leaves."""
    up, gw, _ = await _gateway(start_upstream, start_gateway, tmp_path, "vllm")
    up.push(Script(deltas=[{"content": "never sent"}], hold=asyncio.Event()))
    request = asyncio.ensure_future(gw.post("/v1/messages", _request()))
    assert await wait_for(lambda: up.whole_answers == 1)
    request.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await request
    assert await wait_for(lambda: up.cancelled == 1, timeout=5)


async def test_an_answer_without_usage_gets_an_output_estimate(start_upstream, start_gateway, tmp_path):
    """A server that reports no usage: the output is estimated from the answer's length (one piece
    carries a single delta, which is what a stream's estimate counts)."""
    up, gw, _ = await _gateway(start_upstream, start_gateway, tmp_path, "openai")
    answer = {"id": "c", "object": "chat.completion", "created": 1, "model": "test-model",
              "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "x" * 350}}]}
    up.push(Script(body_pieces=lambda: [json.dumps(answer).encode()], stream_headers={"Content-Type": "application/json"}))
    status, message = await gw.messages(_request())
    assert status == 200, message
    assert message["content"] == [{"type": "text", "text": "x" * 350}]
    assert message["usage"]["output_tokens"] == 100  # 3.5 characters a token, as prompts are estimated
