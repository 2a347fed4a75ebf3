"""The request log keeps the answer (`response`): what the client was sent, streamed or not, cut or whole."""
from __future__ import annotations

import asyncio

from tests.conftest import gateway_config
from tests.logtools import read_records, wait_records
from tests.sse_checks import check_stream
from tests.support.poll import wait_for
from tests.upstream import FAIL_MID, THINK, TOOL, Script

CONTENT_ONLY = ("type", "text", "thinking", "id", "name", "input")


def _gateway_toml(up, log, bodies: bool = True) -> str:
    toml = gateway_config({"up": {"type": "openai", "base_url": up.url, "model": "m"}}, default="up",
                          log_path=str(log))
    return toml if bodies else toml.replace("bodies = true", "bodies = false")


def _msg(text: str, **kw) -> dict:
    return {"model": "claude-opus-4-8", "max_tokens": 200, "messages": [{"role": "user", "content": text}], **kw}


def _comparable(blocks: list[dict]) -> list[dict]:
    # Tool-use ids and thinking signatures are fresh per response; the rest must match exactly.
    return [{k: v for k, v in b.items() if k in CONTENT_ONLY and k != "id"} for b in blocks]


async def test_streamed_and_whole_answers_are_logged_alike_and_as_sent(start_upstream, start_gateway, tmp_path):
    log = tmp_path / "requests.jsonl"
    up = await start_upstream()
    script = TOOL("get_weather", {"location": "Paris", "units": ["C", "F"]}, lead="Let me check that.")
    up.default = script
    gw = await start_gateway(_gateway_toml(up, log))
    status, whole = await gw.messages(_msg("weather?"))
    assert status == 200
    frames = await gw.stream(_msg("weather?"))
    thinking_up = await start_upstream()
    thinking_up.default = THINK("The user greets me; answer briefly.", "Hello to you!")
    gw2 = await start_gateway(_gateway_toml(thinking_up, log))
    thought = await gw2.stream(_msg("hi", max_tokens=2048, thinking={"type": "enabled", "budget_tokens": 1024}))
    recs = await wait_records(log, 3)

    assert recs[0]["response"] == whole["content"]  # exactly the JSON body's content
    assert _comparable(recs[1]["response"]) == _comparable(check_stream(frames).content)
    assert _comparable(recs[0]["response"]) == _comparable(recs[1]["response"]) == [
        {"type": "text", "text": "Let me check that."},
        {"type": "tool_use", "name": "get_weather", "input": {"location": "Paris", "units": ["C", "F"]}}]
    assert recs[1]["response"][1]["id"] == check_stream(frames).content[1]["id"]
    assert [b["type"] for b in recs[2]["response"]] == ["thinking", "text"]
    assert recs[2]["response"] == check_stream(thought).content  # signature included: the very blocks sent
    assert recs[2]["response"][0]["thinking"] == "The user greets me; answer briefly."
    # `body` stays the first of the large fields; readers skip both by stopping at it.
    line = log.read_bytes().splitlines()[0]
    assert line.index(b',"body":') < line.index(b',"response":')


async def test_no_answer_in_the_log_without_bodies(start_upstream, start_gateway, tmp_path):
    log = tmp_path / "requests.jsonl"
    up = await start_upstream()
    gw = await start_gateway(_gateway_toml(up, log, bodies=False))
    assert (await gw.messages(_msg("secret question")))[0] == 200
    [rec] = await wait_records(log, 1)
    assert "response" not in rec and b"Hello there" not in log.read_bytes()


async def test_a_cut_stream_logs_what_was_sent_and_counts_it(start_upstream, start_gateway, tmp_path):
    log = tmp_path / "requests.jsonl"
    up = await start_upstream()
    words = [f"w{i} " for i in range(400)]
    up.default = Script(deltas=[{"content": w} for w in words], delay_s=0.01)
    gw = await start_gateway(_gateway_toml(up, log))
    resp = await gw.post("/v1/messages", _msg("long story", stream=True))
    seen = b""
    while seen.count(b"text_delta") < 60:
        seen += await resp.content.readany()
    resp.close()  # the user pressed Esc
    [rec] = await wait_records(log, 1, timeout=10)
    assert rec["status"] == 200 and rec["error"]["type"] == "client_disconnected"
    [block] = rec["response"]
    assert block["type"] == "text" and block["incomplete"] is True
    text = block["text"]
    assert "".join(words).startswith(text) and len(text) >= len("".join(words[:60]))
    assert len(text) < len("".join(words))
    sent = text.count(" ")
    assert rec["output_tokens"] == sent > 0  # one token per delivered delta, not 0


async def test_an_error_mid_stream_keeps_the_partial_answer(start_upstream, start_gateway, tmp_path):
    log = tmp_path / "requests.jsonl"
    up = await start_upstream()
    up.default = FAIL_MID(500)
    gw = await start_gateway(_gateway_toml(up, log))
    frames = await gw.stream(_msg("x"))
    assert frames[-1][0] == "error"
    [rec] = await wait_records(log, 1)
    assert rec["error"]["type"] == "api_error"
    assert [b.get("text") for b in rec["response"]] == ["partial answer"]
    assert rec["output_tokens"] == 2


async def test_a_cut_tool_call_is_logged_with_its_partial_arguments(start_upstream, start_gateway, tmp_path):
    log = tmp_path / "requests.jsonl"
    up = await start_upstream()
    script = TOOL("write_file", {"path": "a.py", "content": "x" * 3000}, fragment=10)
    script.delay_s = 0.01
    up.default = script
    gw = await start_gateway(_gateway_toml(up, log))
    resp = await gw.post("/v1/messages", _msg("write it", stream=True))
    await resp.content.readany()  # message_start: the call is being generated (~3 s in all)
    await wait_for(lambda: len(up.received) == 1)
    await asyncio.sleep(0.5)  # a good part of the arguments is written; a call goes out only whole
    resp.close()
    await asyncio.sleep(0.1)
    [rec] = await wait_records(log, 1, timeout=10)
    [block] = rec["response"]
    assert block["type"] == "tool_use" and block["name"] == "write_file" and block["incomplete"] is True
    assert block["partial_json"].startswith('{"path": "a.py", "content": "xxx')
    assert read_records(log)[0]["tool_names"] == ["write_file"]
