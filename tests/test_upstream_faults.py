"""Upstream faults not covered by test_stream_event_order.py / test_mid_stream_failures.py: an
upstream that hangs (before the response headers, or after them before the first token, or in the
middle of a stream) past the backend's timeout_s, one that accepts the connection and hangs up
without a word, and one that answers 200 with something that is not an SSE stream at all."""
from __future__ import annotations

import asyncio

import pytest

from tests.compat_helpers import assert_error, body, start_stack
from tests.conftest import gateway_config
from tests.sse_checks import open_stream
from tests.support.poll import wait_for
from tests.upstream import TEXT, Script

TIMEOUT_S = 1.5  # backend timeout_s; the gateway pings every 0.5 s (conftest), so pings fit before it


async def test_hang_before_headers_pings_then_timeout_error(start_upstream, start_gateway):
    """A backend that sends nothing at all: message_start and pings keep the client's connection
    alive, then the configured timeout_s ends the stream with one Anthropic error event."""
    up, gw = await start_stack(start_upstream, start_gateway, timeout_s=TIMEOUT_S)
    up.push(Script(deltas=[{"content": "too late"}], headers_delay_s=5.0))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    s = await open_stream(gw, body(), ok=False)
    elapsed = loop.time() - t0
    names = [n for n, _ in s.frames]
    assert names[0] == "message_start" and names[-1] == "error"
    assert names.count("ping") >= 1, names
    assert "content_block_start" not in names and "message_stop" not in names
    assert s.error["type"] == "api_error"
    assert "did not answer within 1.5 s" in s.error["message"], s.error
    assert elapsed < 4.0  # the timeout ended it, not the upstream finishing at 5 s
    up.push(TEXT("recovered"))
    assert (await open_stream(gw, body())).text == "recovered"  # the gateway keeps serving


async def test_hang_before_first_token_pings_then_timeout_error(start_upstream, start_gateway):
    """Headers and the role chunk arrive, then silence (a prefill that never ends): pings, then an
    error event saying how long the backend was silent; no half-made content block."""
    up, gw = await start_stack(start_upstream, start_gateway, timeout_s=TIMEOUT_S)
    up.push(Script(deltas=[{"content": "too late"}], first_delay_s=5.0))
    s = await open_stream(gw, body(), ok=False)
    names = [n for n, _ in s.frames]
    assert names[0] == "message_start" and names[-1] == "error" and names.count("ping") >= 1, names
    assert "content_block_start" not in names
    assert s.error["type"] == "api_error" and "stopped sending for 1.5 s" in s.error["message"], s.error
    assert await wait_for(lambda: up.cancelled == 1), "the gateway kept the silent upstream request open"


async def test_stall_mid_stream_keeps_text_then_timeout_error(start_upstream, start_gateway):
    """A stream that stops half-way: the text already sent stays, and one error event follows
    (no message_delta, no message_stop); the upstream request is dropped."""
    up, gw = await start_stack(start_upstream, start_gateway, timeout_s=TIMEOUT_S)
    # The upstream sleeps delay_s after each delta: "half way" goes out, then 5 s of silence.
    up.push(Script(deltas=[{"content": "half way"}, {"content": " never"}], delay_s=5.0))
    s = await open_stream(gw, body(), ok=False)
    assert s.text == "half way"
    assert s.names[-1] == "error" and "message_stop" not in s.names and "message_delta" not in s.names
    assert s.error["type"] == "api_error" and "stopped sending for 1.5 s" in s.error["message"], s.error
    assert await wait_for(lambda: up.cancelled == 1), "the gateway kept the stalled upstream request open"


async def test_non_streaming_hang_is_json_error(start_upstream, start_gateway):
    """stream:false against a hanging backend → a JSON 500 api_error after timeout_s (no hang, no 5xx HTML)."""
    up, gw = await start_stack(start_upstream, start_gateway, timeout_s=TIMEOUT_S)
    up.push(Script(deltas=[{"content": "too late"}], headers_delay_s=5.0))
    resp = await asyncio.wait_for(gw.post("/v1/messages", body()), timeout=4.0)
    err = await assert_error(resp, 500, "api_error")
    assert "did not answer within 1.5 s" in err["error"]["message"]


async def _hang_up_server() -> tuple[str, asyncio.AbstractServer]:
    """A TCP server that accepts, reads the request and closes without answering."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}", server


@pytest.mark.parametrize("stream", [True, False])
async def test_connection_closed_without_answer(start_gateway, stream):
    """An upstream that hangs up on the request (crashed worker, proxy reset) → a JSON api_error
    naming the backend, before any byte of a stream went out."""
    url, server = await _hang_up_server()
    try:
        gw = await start_gateway(gateway_config({"flaky": {"type": "openai", "base_url": url, "model": "m",
                                                           "timeout_s": 5.0}}, default="flaky"))
        resp = await gw.post("/v1/messages", body(stream=stream))
        err = await assert_error(resp, 500, "api_error")
        assert "flaky" in err["error"]["message"]
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("lines", [
    ["<html><body><h1>502 Bad Gateway</h1></body></html>"],
    ['{"id": "chatcmpl-1", "choices": [{"message": {"role": "assistant", "content": "whole"}}]}'],
    ["event: message", "id: 7", ": just a comment", "retry: 100"],
], ids=["html_page", "json_not_sse", "sse_without_data"])
async def test_200_that_is_not_an_sse_stream(start_upstream, start_gateway, lines):
    """A 200 whose body is not an OpenAI SSE stream (an HTML error page, a non-streamed JSON answer,
    SSE fields with no data) → one api_error event saying the stream ended unfinished; never a
    message_stop that pretends the answer was complete."""
    up, gw = await start_stack(start_upstream, start_gateway)
    up.push(Script(raw_lines=lines))
    s = await open_stream(gw, body(), ok=False)
    assert s.names[-1] == "error" and "message_stop" not in s.names
    assert s.error["type"] == "api_error" and "before finishing" in s.error["message"], s.error
    up.push(TEXT("fine again"))
    assert (await open_stream(gw, body())).text == "fine again"



