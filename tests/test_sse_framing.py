"""anthropic-compat.md section F: streaming transport (SSE framing)."""
from __future__ import annotations

from tests.compat_helpers import body, start_stack
from tests.support.sse import parse_frames
from tests.upstream import THINK, TOOL, Script

WEATHER_TOOL = {"name": "get_weather", "input_schema": {"type": "object"}}



async def test_f1_headers_and_incremental_flush(stack):
    """F1: `stream:true` → 200 `text/event-stream`, `Cache-Control: no-cache`; the first event arrives before the
    backend finishes."""
    up, gw = stack
    up.push(Script(deltas=[{"content": f"word{i} "} for i in range(6)], delay_s=0.15))
    resp = await gw.post("/v1/messages", body(stream=True))
    assert resp.status == 200
    assert resp.content_type == "text/event-stream"
    assert "no-cache" in resp.headers["Cache-Control"]
    seen = b""
    while b"content_block_delta" not in seen:
        line = await resp.content.readline()
        assert line, "stream ended before any delta"
        seen += line
    # the first text is here while the backend is still generating the rest
    assert up.completed == 0
    rest = await resp.content.read()
    frames = parse_frames(seen + rest)
    assert frames[-1][0] == "message_stop"
    assert up.completed == 1


async def test_f2_every_frame_has_matching_event_line(stack):
    """F2: every frame is `event: <name>` + `data: <json>` + blank line, and `<name>` equals `data.type`."""
    up, gw = stack
    up.push(THINK("Let me think.", "Sure."), TOOL("get_weather", {"location": "Paris"}, lead="Checking."))
    for payload in (body(stream=True, max_tokens=4096, thinking={"type": "enabled", "budget_tokens": 1024}),
                    body(stream=True, tools=[WEATHER_TOOL])):
        resp = await gw.post("/v1/messages", payload)
        assert resp.status == 200
        frames = parse_frames(await resp.read())
        names = {n for n, _ in frames}
        assert {"message_start", "content_block_start", "content_block_delta", "content_block_stop",
                "message_delta", "message_stop"} <= names


async def test_f3_single_line_utf8_json_no_done(start_upstream, start_gateway):
    """F3: each `data` is a single-line, valid UTF-8 JSON object; no `data: [DONE]` sentinel."""
    up, gw = await start_stack(start_upstream, start_gateway)
    text = "line one\nline two\r\n\ttabbed «ü» 東京 🌤️\n\n"
    up.push(Script(deltas=[{"content": text[:9]}, {"content": text[9:20]}, {"content": text[20:]}]))
    resp = await gw.post("/v1/messages", body(stream=True))
    raw = await resp.read()
    assert b"[DONE]" not in raw
    frames = parse_frames(raw)
    assert "".join(d["delta"]["text"] for n, d in frames if n == "content_block_delta") == text


async def test_f4_pings_only_after_message_start(start_upstream, start_gateway):
    """F4: `ping` frames (`{"type":"ping"}`) come only after `message_start`; dropping them leaves the stream SSE-ok."""
    up, gw = await start_stack(start_upstream, start_gateway, server={"ping_interval_s": 0.1})
    # a long prefill (slow first token) is when pings are recommended
    up.push(Script(deltas=[{"content": "after "}, {"content": "prefill"}], first_delay_s=0.5, delay_s=0.25))
    resp = await gw.post("/v1/messages", body(stream=True))
    frames = parse_frames(await resp.read())
    pings = [i for i, (n, _) in enumerate(frames) if n == "ping"]
    assert pings, "no ping during a 0.5 s prefill with ping_interval_s = 0.1"
    assert frames[0][0] == "message_start"
    assert all(frames[i][1] == {"type": "ping"} for i in pings)
    rest = [(n, d) for n, d in frames if n != "ping"]
    assert [n for n, _ in rest] == ["message_start", "content_block_start", "content_block_delta",
                                    "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert "".join(d["delta"]["text"] for n, d in rest if n == "content_block_delta") == "after prefill"
