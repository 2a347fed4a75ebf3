"""What real servers showed, against scripted upstreams that speak each wire format:
the vLLM-specific parts (its /tokenize renders the chat template, it reports the stop string) and
the gateway-side rules every backend type shares. tests/test_real_llamacpp.py runs the same items
against a real llama-server."""
from __future__ import annotations

import json

from tests.compat_helpers import MODEL, assert_error, body, sent, start_stack
from tests.sse_checks import open_stream
from tests.support.poll import wait_for
from tests.upstream import LEN, TEXT, Script

LATE_SYSTEM = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
               {"role": "system", "content": "Reminder: be brief."}, {"role": "user", "content": "again"}]


def _cut_call(name: str = "get_weather") -> Script:
    """A tool call whose arguments max_tokens cut after `{"city": "Pa` (finish_reason length)."""
    return Script(deltas=[{"content": "Checking."},
                          {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                           "function": {"name": name, "arguments": ""}}]},
                          {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Pa'}}]}],
                  finish_reason="length")


async def test_length_stop_inside_a_tool_call_is_max_tokens_without_the_call(start_upstream, start_gateway):
    up, gw = await start_stack(start_upstream, start_gateway, "openai")
    up.push(_cut_call(), _cut_call())
    s = await open_stream(gw, body(tools=[{"name": "get_weather", "input_schema": {"type": "object"}}]))
    assert s.stop_reason == "max_tokens"
    assert [b["type"] for b in s.content] == ["text"] and s.text == "Checking."
    status, msg = await gw.messages(body(tools=[{"name": "get_weather", "input_schema": {"type": "object"}}]))
    assert status == 200 and msg["stop_reason"] == "max_tokens"
    assert msg["content"] == [{"type": "text", "text": "Checking."}]


async def test_length_stop_after_a_finished_call_keeps_it_and_says_max_tokens(start_upstream, start_gateway):
    up, gw = await start_stack(start_upstream, start_gateway, "openai")
    up.push(Script(deltas=[{"tool_calls": [{"index": 0, "id": "c0", "type": "function",
                                            "function": {"name": "a", "arguments": '{"x": 1}'}}]},
                           {"tool_calls": [{"index": 1, "id": "c1", "type": "function",
                                            "function": {"name": "b", "arguments": '{"y": '}}]}],
                   finish_reason="length"))
    status, msg = await gw.messages(body())
    assert status == 200 and msg["stop_reason"] == "max_tokens"
    assert [(b["type"], b.get("name"), b.get("input")) for b in msg["content"]] == [("tool_use", "a", {"x": 1})]


async def test_stop_sequences_matched_by_the_gateway_for_a_generic_server(start_upstream, start_gateway):
    """A generic server is not told the stop strings (it would stop before one without saying
    which): the gateway finds it, cuts the stream there and reports it."""
    up, gw = await start_stack(start_upstream, start_gateway, "openai")
    up.push(Script(deltas=[{"content": p} for p in ("one, t", "wo, thr", "ee, four")], delay_s=0.05))
    s = await open_stream(gw, body(stop_sequences=["three", "five"]))
    assert (s.stop_reason, s.stop_sequence, s.text) == ("stop_sequence", "three", "one, two, ")
    assert "stop" not in sent(up)
    assert await wait_for(lambda: up.cancelled == 1)  # the rest was not generated for nothing


async def test_vllm_stop_string_is_forwarded_and_its_report_read(start_upstream, start_gateway):
    up, gw = await start_stack(start_upstream, start_gateway, "vllm")
    up.push(Script(deltas=[{"content": "one, two, "}], stop_reason="three"))
    s = await open_stream(gw, body(stop_sequences=["three"]))
    assert sent(up)["stop"] == ["three"]
    assert (s.stop_reason, s.stop_sequence, s.text) == ("stop_sequence", "three", "one, two, ")


async def test_vllm_auto_folds_late_system_messages_for_a_system_first_template(start_upstream, start_gateway):
    up, gw = await start_stack(start_upstream, start_gateway, "vllm")
    up.system_first_only = True
    status, msg = await gw.messages(body(system="Be kind.", messages=LATE_SYSTEM))
    assert status == 200, msg
    roles = [m["role"] for m in sent(up)["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    assert sent(up)["messages"][-1]["content"] == "Reminder: be brief.\n\nagain"


async def test_vllm_keep_reports_the_template_error_as_400(start_upstream, start_gateway):
    up, gw = await start_stack(start_upstream, start_gateway, "vllm", system_messages="keep")
    up.system_first_only = True
    data = await assert_error(await gw.post("/v1/messages", body(messages=LATE_SYSTEM)), 400,
                              "invalid_request_error")
    assert "System message must be at the beginning." in data["error"]["message"]
    assert up.received == []  # refused when counting: nothing was generated


async def test_vllm_template_that_accepts_late_system_keeps_it_in_place(start_upstream, start_gateway):
    up, gw = await start_stack(start_upstream, start_gateway, "vllm")
    status, _ = await gw.messages(body(messages=LATE_SYSTEM))
    assert status == 200
    assert [m["role"] for m in sent(up)["messages"]] == ["user", "assistant", "system", "user"]


async def test_merge_joins_late_system_messages_to_the_system_prompt(start_upstream, start_gateway):
    up, gw = await start_stack(start_upstream, start_gateway, "openai", system_messages="merge")
    status, _ = await gw.messages(body(system="Be kind.", messages=LATE_SYSTEM))
    assert status == 200
    msgs = sent(up)["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[0]["content"] == "Be kind.\n\nReminder: be brief."


async def test_generic_server_template_error_500_becomes_400(start_upstream, start_gateway):
    up, gw = await start_stack(start_upstream, start_gateway, "openai")
    up.push(Script(fail_status=500, fail_message="Jinja Exception: System message must be at the beginning."))
    data = await assert_error(await gw.post("/v1/messages", body(messages=LATE_SYSTEM)), 400,
                              "invalid_request_error")
    assert "System message must be at the beginning." in data["error"]["message"]


async def test_vllm_message_start_reports_the_exact_count(start_upstream, start_gateway):
    up, gw = await start_stack(start_upstream, start_gateway, "vllm")
    up.push(TEXT("ok"))
    s = await open_stream(gw, body(messages=[{"role": "user", "content": "count these words please " * 5}]))
    start = s.message["usage"]["input_tokens"]
    assert start == s.usage["input_tokens"] + s.usage["cache_read_input_tokens"]  # not half of it
    resp = await gw.post("/v1/messages/count_tokens", {"model": MODEL, "messages": [
        {"role": "user", "content": "count these words please " * 5}]})
    assert (await resp.json())["input_tokens"] == start


async def test_billing_header_inside_a_system_message_is_stripped(start_upstream, start_gateway):
    up, gw = await start_stack(start_upstream, start_gateway, "openai")
    messages = [{"role": "user", "content": "hi"},
                {"role": "system", "content": "x-anthropic-billing-header: cc_version=2.1.197.d71; cch=123;"},
                {"role": "system", "content": [{"type": "text", "text": "x-anthropic-billing-header: cch=9;\nStay on task."}]},
                {"role": "user", "content": "again"}]
    status, _ = await gw.messages(body(messages=messages))
    assert status == 200
    rendered = json.dumps(sent(up)["messages"])
    assert "billing" not in rendered and "Stay on task." in rendered


async def test_context_clamp_hit_is_model_context_window_exceeded(start_upstream, start_gateway):
    up, gw = await start_stack(start_upstream, start_gateway, "vllm", upstream={"context": 300})
    up.push(LEN("la " * 20), LEN("la " * 20))
    s = await open_stream(gw, body(max_tokens=64000))
    assert sent(up)["max_tokens"] < 300
    assert s.stop_reason == "model_context_window_exceeded"
    # max_output_tokens is the backend's output limit, not a full context: that stays max_tokens.
    up2, gw2 = await start_stack(start_upstream, start_gateway, "vllm", max_output_tokens=20)
    up2.push(LEN("la " * 20))
    s = await open_stream(gw2, body(max_tokens=64000))
    assert sent(up2)["max_tokens"] == 20 and s.stop_reason == "max_tokens"


async def test_validation_follows_the_anthropic_api(start_upstream, start_gateway):
    up, gw = await start_stack(start_upstream, start_gateway, "openai")
    cases = [
        ({"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "x"}]}, "input"),
        ({"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "x", "input": "{}"}]}, "input"),
        ({"role": "assistant", "content": [{"type": "thinking", "signature": "s"}]}, "thinking"),
        ({"role": "assistant", "content": [{"type": "redacted_thinking"}]}, "data"),
    ]
    for msg, field in cases:
        data = await assert_error(await gw.post("/v1/messages", body(messages=[
            {"role": "user", "content": "hi"}, msg, {"role": "user", "content": "go"}])), 400, "invalid_request_error")
        assert f"messages.1.content.0.{field}" in data["error"]["message"], data
    # thinking.display: a value this gateway does not know is tolerated (a newer Claude Code may
    # send one; it changes what is shown, not the answer), a non-string is not.
    data = await assert_error(await gw.post("/v1/messages", body(
        max_tokens=2000, thinking={"type": "adaptive", "display": 1})), 400, "invalid_request_error")
    assert "thinking.display" in data["error"]["message"]
    for display in ("summarized", "omitted"):
        status, _ = await gw.messages(body(thinking={"type": "adaptive", "display": display}))
        assert status == 200
    assert len(up.received) == 2  # nothing refused reached the backend


async def test_mlx_system_messages_modes(start_gateway, demo_model_dir, tmp_path):
    """The embedded backend takes the same modes: keep sends the late system message as it is (a
    system-first template refuses: 400 with its message), as_user and merge place it so it renders."""
    import shutil

    from demo_model.generate import SCRIPTS
    from tests.conftest import gateway_config

    strict = tmp_path / "strict-model"
    shutil.copytree(demo_model_dir, strict)
    cfg_path = strict / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = ("{%- for m in messages %}{%- if m.role == 'system' and not loop.first %}"
                            "{{ raise_exception('System message must be at the beginning.') }}{%- endif %}"
                            "{%- endfor %}" + cfg["chat_template"])
    cfg_path.write_text(json.dumps(cfg))
    request = SCRIPTS["hello"].request(max_tokens=4, messages=LATE_SYSTEM)
    for mode, expected in (("keep", 400), ("as_user", 200), ("merge", 200), ("auto", 200)):
        gw = await start_gateway(gateway_config({"m": {"type": "mlx", "model": str(strict), "system_messages": mode,
                                                      "model_mapping": {"claude-*": str(strict)}}}, default="m"))
        resp = await gw.post("/v1/messages", request)
        assert resp.status == expected, (mode, await resp.text())
        if expected == 400:
            data = await resp.json()
            assert data["error"]["type"] == "invalid_request_error"
            assert "System message must be at the beginning." in data["error"]["message"]


async def test_mlx_tool_call_cut_by_max_tokens(start_gateway, demo_model_dir):
    from demo_model.generate import SCRIPTS
    from tests.conftest import gateway_config

    model = demo_model_dir
    gw = await start_gateway(gateway_config({"m": {"type": "mlx", "model": str(model),
                                                  "model_mapping": {"claude-*": str(model)}}}, default="m"))
    for n in (6, 12, 20):
        status, msg = await gw.messages(SCRIPTS["weather"].request(max_tokens=n))
        assert status == 200 and msg["stop_reason"] == "max_tokens", (n, msg)
        assert not any(b["type"] == "tool_use" for b in msg["content"]), (n, msg)
        s = await open_stream(gw, SCRIPTS["weather"].request(max_tokens=n))
        assert s.stop_reason == "max_tokens" and all(b["type"] != "tool_use" for b in s.content), (n, s.content)


async def test_a_call_dropped_at_a_length_stop_is_in_the_log_as_incomplete(start_upstream, start_gateway, tmp_path):
    from tests.conftest import gateway_config
    from tests.logtools import wait_records

    up = await start_upstream("openai")
    log = tmp_path / "requests.jsonl"
    gw = await start_gateway(gateway_config({"up": {"type": "openai", "base_url": up.url, "model": "test-model",
                                                    "model_mapping": {"claude-*": "test-model"}}},
                                            default="up", log_path=str(log)))
    up.push(_cut_call())
    status, msg = await gw.messages(body())
    assert status == 200 and msg["content"] == [{"type": "text", "text": "Checking."}]
    [rec] = await wait_records(log, 1)
    assert rec["stop_reason"] == "max_tokens" and rec["tool_names"] == ["get_weather"]
    assert rec["response"][-1]["incomplete"] is True and rec["response"][-1]["partial_json"] == '{"city": "Pa'
