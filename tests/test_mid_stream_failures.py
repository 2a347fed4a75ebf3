"""anthropic-compat.md section J: mid-stream failures and cancellation, plus upstream streams that
die, end early or carry malformed JSON after the gateway already answered 200."""
from __future__ import annotations

import asyncio

import anthropic
import pytest

from tests.sse_checks import open_stream
from tests.support.poll import wait_for
from tests.upstream import FAIL_MID, TEXT, Script

MODEL = "claude-opus-4-8"


def body(**kw) -> dict:
    out = {"model": MODEL, "max_tokens": 2000, "messages": [{"role": "user", "content": "hi"}]}
    out.update(kw)
    return out


async def test_j1_fail_mid_stream_ends_with_error_event(stack):
    """J1: "FAIL_MID(500) → after the already-sent events: exactly one event: error … no message_stop, and the connection closes cleanly"."""
    up, gw = stack
    up.push(FAIL_MID(500, "GPU fell off the bus"))
    # open_stream reads to the end: a reset instead of a clean close raises ClientPayloadError.
    s = await open_stream(gw, body(), ok=False)
    assert s.text == "partial answer"  # the already-sent events are kept
    assert s.names.count("error") == 1 and s.names[-1] == "error" and "message_stop" not in s.names
    assert s.error["type"] == "api_error" and "GPU fell off the bus" in s.error["message"]
    assert s.frames[-1][1] == {"type": "error", "error": s.error}


async def test_j1_sdk_raises_on_mid_stream_error(stack):
    """J1: the SDK's stream consumer raises the mid-stream error instead of returning a truncated message."""
    up, gw = stack
    up.push(FAIL_MID(500, "GPU fell off the bus"))
    with pytest.raises(anthropic.APIStatusError) as info:
        async with gw.anthropic().messages.stream(**body()) as stream:
            await stream.get_final_message()
    assert "GPU fell off the bus" in str(info.value)


@pytest.mark.parametrize("status,kind", [(429, "rate_limit_error"), (503, "overloaded_error"),
                                         (529, "overloaded_error"), (500, "api_error"), (502, "api_error")])
async def test_j2_mid_stream_error_type_follows_status(stack, status, kind):
    """J2: "429 → rate_limit_error, 503/529 → overloaded_error, anything else → api_error"."""
    up, gw = stack
    up.push(FAIL_MID(status, f"upstream said {status}"))
    s = await open_stream(gw, body(), ok=False)
    assert s.error["type"] == kind and f"upstream said {status}" in s.error["message"]


async def test_j2_mid_stream_context_overflow_message(stack):
    """J2: "A mid-stream context overflow uses the C11 message text"."""
    up, gw = stack
    up.push(FAIL_MID(400, "This model's maximum context length is 4096 tokens. However, you requested 5000 "
                          "tokens (4000 in the messages, 1000 in the completion)."))
    s = await open_stream(gw, body(), ok=False)
    assert s.error["type"] == "invalid_request_error"
    assert "prompt is too long" in s.error["message"]


async def test_j1_upstream_dies_mid_stream(stack):
    """J1: an upstream whose connection drops mid-stream → one api_error event, no message_stop, clean close."""
    up, gw = stack
    # delay_s: the death comes after the text went out (aiohttp's client drops bytes still buffered
    # when it sees the connection lost in the same read, so an instant death can lose them).
    up.push(Script(deltas=[{"content": "partial "}, {"content": "answer"}], die_mid=True, delay_s=0.05))
    s = await open_stream(gw, body(), ok=False)
    assert s.text == "partial answer"
    assert s.error["type"] == "api_error" and s.error["message"]


async def test_j1_upstream_ends_without_finish(stack):
    """J1: an upstream stream that ends cleanly but without a finish reason or [DONE] is a failure, not a success."""
    up, gw = stack
    up.push(Script(raw_lines=['data: {"choices":[{"index":0,"delta":{"content":"half"},"finish_reason":null}]}']))
    s = await open_stream(gw, body(), ok=False)
    assert s.text == "half" and s.error["type"] == "api_error"


@pytest.mark.parametrize("bad", ["data: {not json", 'data: {"choices": [{"index": 0, "delta": {"content": "x"}',
                                 "data: [1, 2, 3]"], ids=["garbage", "truncated", "not_object"])
async def test_j1_malformed_upstream_chunk(stack, bad):
    """J1: malformed JSON in the upstream SSE → one api_error event naming the problem; earlier text kept."""
    up, gw = stack
    up.push(Script(raw_lines=['data: {"choices":[{"index":0,"delta":{"content":"fine so far"},"finish_reason":null}]}',
                              bad,
                              'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
                              "data: [DONE]"]))
    s = await open_stream(gw, body(), ok=False)
    assert s.text == "fine so far"
    assert s.error["type"] == "api_error"
    assert "malformed" in s.error["message"] or "non-object" in s.error["message"], s.error


async def test_j1_upstream_error_object_without_code(stack):
    """J2: an upstream error chunk without a status code → api_error carrying the backend's message."""
    up, gw = stack
    up.push(Script(raw_lines=['data: {"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}',
                              'data: {"error": {"message": "sampler crashed"}}']))
    s = await open_stream(gw, body(), ok=False)
    assert s.error["type"] == "api_error" and "sampler crashed" in s.error["message"]


async def test_j2_failure_after_commit_is_error_event(stack):
    """C9/J2: a backend that fails only after the gateway committed to 200 (slow to answer) → an error event, status kept as type."""
    up, gw = stack
    # Longer than the first-event wait (ping_interval_s = 0.5), so the 200 and message_start went out.
    up.push(Script(fail_status=503, fail_message="queue full", headers_delay_s=0.7))
    s = await open_stream(gw, body(), ok=False)
    assert s.names == ["message_start", "error"]
    assert s.error["type"] == "overloaded_error" and "queue full" in s.error["message"]




def _long_script(**kw) -> Script:
    return Script(deltas=[{"content": f"word{i} "} for i in range(500)], delay_s=0.01, **kw)


@pytest.mark.parametrize("moment", ["mid_text", "during_prefill"])
async def test_j3_client_disconnect_cancels_upstream(stack, moment):
    """J3: "A client disconnect mid-stream stops the backend generation promptly … and the gateway keeps serving later requests"."""
    up, gw = stack
    up.push(_long_script(first_delay_s=5.0 if moment == "during_prefill" else 0.0))
    resp = await gw.post("/v1/messages", body(stream=True))
    assert resp.status == 200
    marker = b"content_block_delta" if moment == "mid_text" else b"message_start"
    await resp.content.readuntil(marker)
    resp.close()  # drops the connection, like Esc in Claude Code
    assert await wait_for(lambda: up.cancelled == 1, timeout=1.5), "upstream never saw the cancellation"
    assert up.completed == 0
    up.push(TEXT("still here"))
    s = await open_stream(gw, body())
    assert s.text == "still here"
    up.push(TEXT("and here"))
    status, msg = await gw.messages(body())
    assert status == 200 and msg["content"] == [{"type": "text", "text": "and here"}]


async def test_j3_sdk_abort_cancels_upstream(stack):
    """J3: leaving the SDK's stream context early (an abort) cancels the upstream generation."""
    up, gw = stack
    up.push(_long_script())
    async with gw.anthropic().messages.stream(**body()) as stream:
        async for _ in stream.text_stream:
            break
    assert await wait_for(lambda: up.cancelled == 1, timeout=1.5), "upstream never saw the cancellation"
    up.push(TEXT("next"))
    async with gw.anthropic().messages.stream(**body()) as stream:
        msg = await stream.get_final_message()
    assert msg.content[0].text == "next"


async def test_j3_non_streaming_client_gone_cancels_upstream(stack):
    """J3: a non-streaming caller that gives up also stops the backend generation."""
    up, gw = stack
    up.push(_long_script())
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(gw.messages(body()), timeout=0.3)
    assert await wait_for(lambda: up.cancelled == 1, timeout=1.5), "upstream never saw the cancellation"
    up.push(TEXT("back"))
    status, msg = await gw.messages(body())
    assert status == 200 and msg["content"][0]["text"] == "back"
