"""Fields and block types of current Claude Code releases over HTTP: thinking display "omitted",
output_config.effort per backend, max_tokens 128000 / claude-opus-5-5, tolerance of unknown block
types (text passed on, the rest dropped, each logged once and listed by claude-gateway-replay),
and the /api/hello probe."""
from __future__ import annotations

import base64
import json

import pytest

from tests.compat_helpers import MODEL, assert_error, start_stack
from tests.conftest import TOKEN, gateway_config
from tests.logtools import json_lines, run_cli, wait_records
from tests.upstream import THINK

HI = [{"role": "user", "content": "hi"}]


# -- thinking display ------------------------------------------------------------------------

async def test_display_omitted_sends_signature_without_thinking(start_upstream, start_gateway):
    """thinking.display "omitted": the thinking block is there with a signature and empty text, in
    JSON and in SSE (no thinking_delta at all); the answer text is unchanged."""
    up, gw = await start_stack(start_upstream, start_gateway)
    body = {"model": MODEL, "max_tokens": 100, "messages": HI, "thinking": {"type": "adaptive", "display": "omitted"}}
    up.push(THINK("secret reasoning", "It is 4."))
    status, msg = await gw.messages(body)
    assert status == 200, msg
    thinking, text = msg["content"]
    assert thinking["type"] == "thinking" and thinking["thinking"] == "" and thinking["signature"]
    assert text == {"type": "text", "text": "It is 4."}
    up.push(THINK("secret reasoning", "It is 4."))
    frames = await gw.stream(body)
    deltas = [d["delta"]["type"] for name, d in frames if name == "content_block_delta"]
    assert "thinking_delta" not in deltas and "signature_delta" in deltas
    assert "secret" not in json.dumps(frames)
    # Shown as usual without display.
    up.push(THINK("secret reasoning", "It is 4."))
    status, msg = await gw.messages(dict(body, thinking={"type": "adaptive"}))
    assert msg["content"][0]["thinking"] == "secret reasoning"


async def test_omitted_thinking_goes_back_to_the_backend(start_upstream, start_gateway):
    """As with the API, omitted thinking is still the model's context: when the empty block comes
    back in the current tool loop, the backend gets the reasoning it wrote; an unknown signature
    gives nothing, and the client never sees the text."""
    from tests.upstream import Script

    up, gw = await start_stack(start_upstream, start_gateway, "vllm")  # vLLM gets the loop's reasoning back
    tools = [{"name": "Bash", "description": "Run", "input_schema": {"type": "object"}}]
    omitted = {"type": "adaptive", "display": "omitted"}
    up.push(Script(deltas=[{"reasoning_content": "plan: list files"},
                           {"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                                            "function": {"name": "Bash", "arguments": "{}"}}]}],
                   finish_reason="tool_calls"))
    status, first = await gw.messages({"model": MODEL, "max_tokens": 50, "tools": tools, "thinking": omitted,
                                       "messages": HI})
    assert status == 200, first
    thinking, call = first["content"]
    assert thinking["thinking"] == "" and thinking["signature"] and call["type"] == "tool_use"
    follow = {"model": MODEL, "max_tokens": 50, "tools": tools, "thinking": omitted, "messages": HI + [
        {"role": "assistant", "content": first["content"]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "a.txt"}]}]}
    status, _ = await gw.messages(follow)
    assert status == 200
    assistant = next(m for m in up.received[-1]["messages"] if m["role"] == "assistant")
    assert assistant["reasoning_content"] == "plan: list files"
    follow["messages"][1]["content"][0] = {"type": "thinking", "thinking": "", "signature": "gw1unknown"}
    status, _ = await gw.messages(follow)
    assert status == 200
    assistant = next(m for m in up.received[-1]["messages"] if m["role"] == "assistant")
    assert "reasoning_content" not in assistant


# -- effort ----------------------------------------------------------------------------------

@pytest.mark.parametrize("flavor", ["vllm", "llamacpp"])
async def test_effort_reaches_template_servers(start_upstream, start_gateway, flavor):
    """vLLM / llama.cpp get reasoning_effort (top level and as a chat-template variable); the levels
    beyond high map to high; adaptive thinking at low effort switches template thinking off."""
    up, gw = await start_stack(start_upstream, start_gateway, flavor)
    for effort, sent, thinking in (("medium", "medium", True), ("max", "high", True), ("xhigh", "high", True),
                                   ("low", "low", False)):
        status, _ = await gw.messages({"model": MODEL, "max_tokens": 20, "messages": HI,
                                       "thinking": {"type": "adaptive"}, "output_config": {"effort": effort}})
        assert status == 200
        body = up.received[-1]
        assert body["reasoning_effort"] == sent, body
        assert body["chat_template_kwargs"] == {"enable_thinking": thinking, "reasoning_effort": sent}
    status, _ = await gw.messages({"model": MODEL, "max_tokens": 20, "messages": HI})
    assert "reasoning_effort" not in up.received[-1]


async def test_effort_is_not_sent_to_plain_openai_servers(start_upstream, start_gateway):
    """A generic OpenAI-compatible server may reject reasoning_effort for non-reasoning models: ignored."""
    up, gw = await start_stack(start_upstream, start_gateway, "openai")
    status, _ = await gw.messages({"model": MODEL, "max_tokens": 20, "messages": HI, "output_config": {"effort": "high"}})
    assert status == 200
    assert "reasoning_effort" not in up.received[-1] and "chat_template_kwargs" not in up.received[-1]


async def test_claude_code_2_1_328_main_request_shape(start_upstream, start_gateway):
    """The fields 2.1.328 sends on every main turn: default model claude-opus-5-5 through the glob,
    max_tokens 128000 clamped to the backend's context, adaptive thinking with display omitted,
    effort, clear_thinking keep all; answered 200 with the requested model name."""
    up, gw = await start_stack(start_upstream, start_gateway, "vllm", upstream={"context": 32768})
    status, msg = await gw.messages({
        "model": "claude-opus-5-5", "max_tokens": 128000, "messages": HI, "stream": False,
        "thinking": {"type": "adaptive", "display": "omitted"}, "output_config": {"effort": "medium"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "metadata": {"user_id": json.dumps({"device_id": "d", "session_id": "s"})}})
    assert status == 200, msg
    assert msg["model"] == "claude-opus-5-5"
    assert up.received[-1]["max_tokens"] < 32768
    assert msg["context_management"] == {"applied_edits": []}


# -- tolerance -------------------------------------------------------------------------------

async def test_unknown_blocks_pass_as_text_or_are_dropped(start_upstream, start_gateway, tmp_path, capfd):
    """Unknown block types never fail the request: with text they reach the model as text, without
    it they are dropped; the log line names each type and where it was; the process log warns once
    per type; `claude-gateway-replay --unknown-blocks` lists the requests."""
    up = await start_upstream("openai")
    log = tmp_path / "requests.jsonl"
    gw = await start_gateway(gateway_config({"up": {"type": "openai", "base_url": up.url, "model": "test-model"}},
                                            default="up", log_path=str(log)))
    body = {"model": MODEL, "max_tokens": 20,
            "system": [{"type": "text", "text": "sys"}, {"type": "sys_note_x1", "text": "extra system words"}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "connector_text_x1", "connector_text": "connector words"},
                    {"type": "blob_x1", "data": 123},
                    {"type": "text", "text": "question"},
                    {"type": "tool_result", "tool_use_id": "t1", "content": [
                        {"type": "text", "text": "out"}, {"type": "search_result_x1", "content": [
                            {"type": "text", "text": "found words"}]}]}]},
                {"role": "assistant", "content": [{"type": "mid_note_x1", "text": "assistant words"},
                                                  {"type": "text", "text": "answer"}]},
                {"role": "user", "content": "next"}]}
    for _ in range(2):
        status, msg = await gw.messages(body)
        assert status == 200, msg
    sent = json.dumps(up.received[-1]["messages"])
    for words in ("extra system words", "connector words", "found words", "assistant words", "question"):
        assert words in sent, words
    assert "123" not in sent
    records = await wait_records(log, 2)
    expected = ["sys_note_x1@system", "connector_text_x1@user.content", "blob_x1@user.content",
                "search_result_x1@tool_result.content", "mid_note_x1@assistant.content"]
    assert sorted(records[-1]["unknown_blocks"]) == sorted(expected)
    captured = capfd.readouterr()
    err = captured.out + captured.err
    for label in expected:
        kind, where = label.split("@")
        lines = [ln for ln in err.splitlines() if "unknown_block_type" in ln and kind in ln]
        assert len(lines) == 1, (label, lines)  # once, though two requests carried it
        assert where in lines[0]
    status, _ = await gw.messages({"model": MODEL, "max_tokens": 5, "messages": HI})
    rc, out, _ = await run_cli("--file", str(log), "--unknown-blocks", "--json")
    listed = json_lines(out)
    assert rc == 0 and len(listed) == 2 and all(r["unknown_blocks"] for r in listed)


async def test_claude_code_text_blocks_are_text(start_upstream, start_gateway, tmp_path):
    """connector_text and mid_conv_system (types Claude Code 2.1.328 knows) reach the model as text
    and are not reported as unknown."""
    up = await start_upstream("openai")
    log = tmp_path / "requests.jsonl"
    gw = await start_gateway(gateway_config({"up": {"type": "openai", "base_url": up.url, "model": "test-model"}},
                                            default="up", log_path=str(log)))
    status, msg = await gw.messages({"model": MODEL, "max_tokens": 20, "messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [{"type": "connector_text", "connector_text": "bridging words"},
                                          {"type": "text", "text": "a"}]},
        {"role": "user", "content": [{"type": "mid_conv_system", "content": "note words"},
                                     {"type": "text", "text": "q2"}]}]})
    assert status == 200, msg
    sent = json.dumps(up.received[-1]["messages"])
    assert "bridging words" in sent and "note words" in sent
    [record] = await wait_records(log, 1)
    assert "unknown_blocks" not in record


async def test_dropping_that_would_change_the_answer_stays_a_400(start_upstream, start_gateway):
    """An image for a text-only backend and a PDF are refused, not silently dropped."""
    _, gw = await start_stack(start_upstream, start_gateway)
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"0" * 20).decode()
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}}
    pdf = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": png}}
    for block in (image, pdf):
        resp = await gw.post("/v1/messages", {"model": MODEL, "max_tokens": 5,
                                              "messages": [{"role": "user", "content": [block]}]})
        await assert_error(resp, 400, "invalid_request_error")


# -- /api/hello ------------------------------------------------------------------------------

async def test_api_hello_answers_without_auth(start_upstream, start_gateway):
    """2.1.328's start-up warm-up: HEAD and GET /api/hello → 200 with no credentials, auth still on /v1."""
    _, gw = await start_stack(start_upstream, start_gateway, token=TOKEN)
    for method in ("HEAD", "GET"):
        resp = await gw.session.request(method, gw.url + "/api/hello")
        assert resp.status == 200, method
    resp = await gw.session.get(gw.url + "/v1/models")
    await assert_error(resp, 401, "authentication_error")
    resp = await gw.session.post(gw.url + "/api/hello")
    assert resp.status == 405 or resp.status == 404


async def test_many_unknown_blocks_stay_cheap_and_bounded(start_upstream, start_gateway, tmp_path):
    """20,000 distinct unknown types with long names: answered quickly, the log line keeps a bounded
    list with bounded names."""
    import time

    up = await start_upstream("openai")
    log = tmp_path / "requests.jsonl"
    gw = await start_gateway(gateway_config({"up": {"type": "openai", "base_url": up.url, "model": "test-model"}},
                                            default="up", log_path=str(log)))
    blocks = [{"type": f"x{i}-" + "y" * 500} for i in range(20_000)] + [{"type": "text", "text": "q"}]
    started = time.perf_counter()
    status, msg = await gw.messages({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": blocks}]})
    assert status == 200, msg
    assert time.perf_counter() - started < 5
    [record] = await wait_records(log, 1)
    assert 0 < len(record["unknown_blocks"]) <= 32
    assert all(len(label) < 100 for label in record["unknown_blocks"])
