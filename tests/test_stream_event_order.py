"""anthropic-compat.md section G: streaming event order and content blocks, plus upstream
faults seen before the first byte (C9, C10, C12) and keep-alive pings during a slow prefill (F4)."""
from __future__ import annotations

import asyncio

import anthropic
import pytest

from tests.conftest import gateway_config
from tests.sse_checks import check_stream, open_stream, read_stream
from tests.support.net import free_port
from tests.support.sse import parse_frames
from tests.upstream import EMPTY, FAIL, LEN, STOPSEQ, TEXT, THINK, TOOL, TOOLS2, Script

MODEL = "claude-opus-4-8"


def body(**kw) -> dict:
    out = {"model": MODEL, "max_tokens": 2000, "messages": [{"role": "user", "content": "hi"}]}
    out.update(kw)
    return out


def MIXED() -> Script:
    """Thinking, text, one tool call, then text again: four blocks of three kinds."""
    return Script(deltas=[{"reasoning_content": "Think "}, {"reasoning_content": "hard."},
                          {"content": "Let me "}, {"content": "look."},
                          {"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                           "function": {"name": "lookup", "arguments": ""}}]},
                          {"tool_calls": [{"index": 0, "function": {"arguments": '{"q": '}}]},
                          {"tool_calls": [{"index": 0, "function": {"arguments": '"x"}'}}]},
                          {"content": "Done."}],
                  finish_reason="tool_calls")


THINKING = {"type": "enabled", "budget_tokens": 1024}


# -- the validator itself must reject what it exists to catch ---------------------------------

def _frames(*events: dict) -> list[tuple[str, dict]]:
    return [(e["type"], e) for e in events]


_START = {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [],
                                               "model": "m", "stop_reason": None, "stop_sequence": None,
                                               "usage": {"input_tokens": 1, "output_tokens": 0}}}
_TEXT0 = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
_D0 = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}}
_STOP0 = {"type": "content_block_stop", "index": 0}
_MD = {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
       "usage": {"output_tokens": 1}}
_END = {"type": "message_stop"}
_PING = {"type": "ping"}


@pytest.mark.parametrize("events,item", [
    ((_PING, _START, _TEXT0, _D0, _STOP0, _MD, _END), "G1"),
    ((_START, _START, _TEXT0, _D0, _STOP0, _MD, _END), "G1"),
    ((_START, _TEXT0, _D0, _STOP0, _MD), "G1"),
    ((_START, _TEXT0, _D0, _STOP0, _MD, _END, _PING), "G1"),
    ((_START, {**_TEXT0, "index": 1}, {**_D0, "index": 1}, {**_STOP0, "index": 1}, _MD, _END), "G4"),
    ((_START, _TEXT0, {**_TEXT0, "index": 1}, _STOP0, {**_STOP0, "index": 1}, _MD, _END), "G5"),
    ((_START, _TEXT0, _STOP0, _D0, _MD, _END), "G6"),
    ((_START, _TEXT0, {**_D0, "delta": {"type": "input_json_delta", "partial_json": "{}"}}, _STOP0, _MD, _END),
     "G7"),
    ((_START, _TEXT0, _D0, _MD, _STOP0, _END), "G8"),
    ((_START, _TEXT0, {**_D0, "delta": {"type": "text_delta", "text": ""}}, _STOP0, _MD, _END), "G9"),
    ((_START, _TEXT0, _D0, _STOP0, _MD, _MD, _END), "G10"),
    ((_START, _TEXT0, _D0, _STOP0, {**_MD, "usage": {"output_tokens": 0}}, _END), "G10"),
])
def test_validator_rejects_broken_streams(events, item):
    """The shared SSE validator fails on each kind of violation it claims to check."""
    check_stream(_frames(_START, _TEXT0, _D0, _STOP0, _MD, _END))  # the well-formed baseline passes
    with pytest.raises(AssertionError, match=item):
        check_stream(_frames(*events))


def test_validator_rejects_bad_framing():
    """F2/F3: frames without an event line, multi-line data and [DONE] are rejected."""
    with pytest.raises(AssertionError, match="F2"):
        parse_frames('data: {"type":"ping"}\n\n')
    with pytest.raises(AssertionError, match="F3"):
        parse_frames("event: x\ndata: [DONE]\n\n")
    with pytest.raises(AssertionError, match="F2"):
        parse_frames('event: ping\ndata: {"type":"message_stop"}\n\n')


# -- G1–G16 ----------------------------------------------------------------------------------

async def test_g1_one_message_start_first_and_terminal_last(stack):
    """G1: "The first event is message_start; there is exactly one. The last event is message_stop"."""
    up, gw = stack
    up.push(TEXT("Hello world"))
    s = await open_stream(gw, body())
    assert s.names[0] == "message_start" and s.names.count("message_start") == 1
    assert s.names[-1] == "message_stop" and s.names.count("message_stop") == 1


async def test_g2_message_start_fields(stack):
    """G2: "message_start.message has id (msg_…), type, role, content:[], model, null stop fields, usage"."""
    up, gw = stack
    up.push(TEXT("Hello world"))
    s = await open_stream(gw, body())
    m = s.message
    assert m["id"].startswith("msg_") and m["type"] == "message" and m["role"] == "assistant"
    assert m["content"] == [] and m["model"] == MODEL
    assert m["stop_reason"] is None and m["stop_sequence"] is None
    assert m["usage"]["input_tokens"] >= 1 and m["usage"]["output_tokens"] >= 0


async def test_g3_text_event_order(stack):
    """G3: "TEXT("Hello world") → message_start, content_block_start, deltas, content_block_stop, message_delta, message_stop"."""
    up, gw = stack
    up.push(TEXT("Hello world"))
    s = await open_stream(gw, body())
    names = s.names
    n_deltas = names.count("content_block_delta")
    assert n_deltas >= 1
    assert names == ["message_start", "content_block_start"] + ["content_block_delta"] * n_deltas + \
        ["content_block_stop", "message_delta", "message_stop"]
    events = [d for n, d in s.frames if n != "ping"]
    assert events[1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert all(e["index"] == 0 and e["delta"]["type"] == "text_delta" for e in events[2:2 + n_deltas])
    assert events[2 + n_deltas] == {"type": "content_block_stop", "index": 0}
    assert s.text == "Hello world"


async def test_g3_sdk_accumulates_text(stack):
    """G3: the official SDK's strict stream accumulator rebuilds the text message."""
    up, gw = stack
    up.push(TEXT("Hello world"))
    async with gw.anthropic().messages.stream(**body()) as stream:
        msg = await stream.get_final_message()
    assert [(b.type, b.text) for b in msg.content] == [("text", "Hello world")]
    assert msg.stop_reason == "end_turn" and msg.model == MODEL


async def test_g4_block_indices_in_order(stack):
    """G4: "content_block_start indices are 0, 1, 2, … in emission order; each index is started once"."""
    up, gw = stack
    up.push(MIXED())
    s = await open_stream(gw, body(thinking=THINKING))
    starts = [(d["index"], d["content_block"]["type"]) for n, d in s.frames if n == "content_block_start"]
    assert starts == [(0, "thinking"), (1, "text"), (2, "tool_use"), (3, "text")]


async def test_g5_no_nested_blocks(stack):
    """G5: "a new content_block_start comes only after the previous block's content_block_stop"."""
    up, gw = stack
    up.push(MIXED())
    s = await open_stream(gw, body(thinking=THINKING))
    lifecycle = [(n, d["index"]) for n, d in s.frames if n in ("content_block_start", "content_block_stop")]
    assert lifecycle == [("content_block_start", 0), ("content_block_stop", 0), ("content_block_start", 1),
                         ("content_block_stop", 1), ("content_block_start", 2), ("content_block_stop", 2),
                         ("content_block_start", 3), ("content_block_stop", 3)]


async def test_g6_deltas_refer_to_open_block(stack):
    """G6: "Every content_block_delta and content_block_stop refers to the currently open index"."""
    up, gw = stack
    up.push(MIXED(), MIXED())
    s = await open_stream(gw, body(thinking=THINKING))
    open_index = None
    for n, d in s.frames:
        if n == "content_block_start":
            open_index = d["index"]
        elif n in ("content_block_delta", "content_block_stop"):
            assert d["index"] == open_index
    async with gw.anthropic().messages.stream(**body(thinking=THINKING)) as stream:
        msg = await stream.get_final_message()  # the SDK raises "Content block not found" otherwise
    assert [b.type for b in msg.content] == ["thinking", "text", "tool_use", "text"]


async def test_g7_delta_type_matches_block_type(stack):
    """G7: "text → text_delta; tool_use → input_json_delta; thinking → thinking_delta or signature_delta"."""
    up, gw = stack
    up.push(MIXED())
    s = await open_stream(gw, body(thinking=THINKING))
    kinds = {b.type: {d["type"] for d in b.deltas} for b in s.blocks}
    assert kinds["thinking"] == {"thinking_delta", "signature_delta"}
    assert kinds["text"] == {"text_delta"}
    assert kinds["tool_use"] == {"input_json_delta"}


async def test_g8_blocks_stopped_before_message_delta(stack):
    """G8: "Every started block is stopped before message_delta"."""
    up, gw = stack
    up.push(MIXED())
    s = await open_stream(gw, body(thinking=THINKING))
    md_at = s.names.index("message_delta")
    stops = [i for i, n in enumerate(s.names) if n == "content_block_stop"]
    assert len(stops) == len(s.blocks) == 4 and max(stops) < md_at


async def test_g9_no_empty_deltas(stack):
    """G9: "No empty text_delta or thinking_delta frames"."""
    up, gw = stack
    # Upstreams send empty content/reasoning in role chunks and keep-alives; none may become a delta.
    up.push(Script(deltas=[{"reasoning_content": ""}, {"reasoning_content": "R"}, {"content": ""},
                           {"reasoning_content": "", "content": ""}, {"content": "T"}, {"content": ""}]))
    s = await open_stream(gw, body(thinking=THINKING))
    for b in s.blocks:
        for d in b.deltas:
            assert d.get("text", "x") and d.get("thinking", "x")
    assert s.content[0]["thinking"] == "R" and s.content[1] == {"type": "text", "text": "T"}


async def test_g10_one_message_delta(stack):
    """G10: "Exactly one message_delta, with delta.stop_reason, delta.stop_sequence present, usage.output_tokens ≥ 1"."""
    up, gw = stack
    up.push(TEXT("Hello world"))
    s = await open_stream(gw, body())
    assert s.names.count("message_delta") == 1
    assert s.stop_reason == "end_turn"
    assert "stop_sequence" in s.message_delta["delta"] and s.stop_sequence is None
    assert isinstance(s.usage["output_tokens"], int) and s.usage["output_tokens"] >= 1


async def test_g11_final_usage_totals(stack):
    """G11: "message_delta.usage also carries input_tokens (≥ 1) … never below the message_start values"."""
    up, gw = stack
    up.push(TEXT("Hello world"))
    s = await open_stream(gw, body(messages=[{"role": "user", "content": "a somewhat longer prompt " * 20}]))
    start, final = s.message["usage"], s.usage
    assert isinstance(final["input_tokens"], int) and final["input_tokens"] >= 1
    for key in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
        if key in final and key in start:
            assert isinstance(final[key], int) and final[key] >= start[key], (key, start, final)


async def test_g11_final_usage_with_cache_hits(stack):
    """G11: with a backend-reported cache split the final totals carry cache_read and never shrink the prompt total."""
    up, gw = stack
    messages = [{"role": "user", "content": "a somewhat longer prompt " * 40}]
    seen: list[int] = []

    def cached(chat_body: dict) -> Script:
        seen.append(total := up.prompt_tokens(chat_body))  # what the server's own tokenizer counts
        return Script(deltas=[{"content": "hi"}],
                      usage={"prompt_tokens": total, "completion_tokens": 1, "total_tokens": total + 1,
                             "prompt_tokens_details": {"cached_tokens": total - 5}})
    up.push(cached)
    s = await open_stream(gw, body(messages=messages))
    total = seen[0]
    start, final = s.message["usage"], s.usage
    assert final["input_tokens"] == 5 and final["cache_read_input_tokens"] == total - 5  # D4: input excludes cache
    # The cache split is only known at the end, so the per-field input_tokens of message_start
    # (which cannot know it) may be larger; the prompt total never shrinks.
    def prompt(u: dict) -> int:
        return u["input_tokens"] + u.get("cache_read_input_tokens", 0) + u.get("cache_creation_input_tokens", 0)

    assert prompt(final) >= prompt(start)
    assert final["output_tokens"] >= start["output_tokens"]


def _strip_ids(content: list[dict]) -> list[dict]:
    return [{k: v for k, v in b.items() if k != "id"} for b in content]


G12_SCRIPTS = {
    "TEXT": (lambda: TEXT("Hello there, world!"), {}),
    "TOOL": (lambda: TOOL("get_weather", {"location": "Paris", "unit": "C"}, lead="Let me check."), {}),
    "TOOLS2": (TOOLS2, {}),
    "THINK": (lambda: THINK("Reasoning about it.", "The answer."), {"thinking": THINKING}),
    "EMPTY": (EMPTY, {}),
    "STOPSEQ": (lambda: STOPSEQ("abc", "END"), {"stop_sequences": ["END"]}),
    "LEN": (lambda: LEN("cut off here"), {}),
}


@pytest.mark.parametrize("script", list(G12_SCRIPTS))
async def test_g12_stream_matches_non_stream(stack, script):
    """G12: "streaming and non-streaming give the same content, stop_reason, model and output_tokens"."""
    up, gw = stack
    make, extra = G12_SCRIPTS[script]
    if script == "STOPSEQ" and up.flavor != "openai":
        # vLLM and llama.cpp match stop strings themselves and say which one matched (a non-streamed
        # answer is then not cut short by the gateway's own matcher, so both count the same tokens).
        make = lambda: Script(deltas=[{"content": "abc"}], stop_reason="END")  # noqa: E731
    up.push(make(), make(), make())
    status, whole = await gw.messages(body(**extra))
    assert status == 200, whole
    s = await open_stream(gw, body(**extra))
    async with gw.anthropic().messages.stream(**body(**extra)) as stream:
        sdk = (await stream.get_final_message()).model_dump(mode="json")
    for streamed in (s.content, sdk["content"]):
        streamed = [{k: v for k, v in b.items() if v is not None or k == "text"} for b in streamed]
        assert _strip_ids(streamed) == _strip_ids(whole["content"]), script
    assert s.stop_reason == sdk["stop_reason"] == whole["stop_reason"]
    assert s.stop_sequence == sdk["stop_sequence"] == whole["stop_sequence"]
    assert s.message["model"] == sdk["model"] == whole["model"] == MODEL
    assert s.usage["output_tokens"] == sdk["usage"]["output_tokens"] == whole["usage"]["output_tokens"]


async def test_g13_empty_stream_has_one_text_block(stack):
    """G13: "EMPTY streamed → message_start, a content_block_start (text, ""), content_block_stop, message_delta (end_turn), message_stop"."""
    up, gw = stack
    up.push(EMPTY())
    s = await open_stream(gw, body())
    assert s.names == ["message_start", "content_block_start", "content_block_stop", "message_delta", "message_stop"]
    assert s.blocks[0].start == {"type": "text", "text": ""}
    assert s.stop_reason == "end_turn"


async def test_g14_stop_sequence_streamed(stack):
    """G14: "STOPSEQ streamed → stop_reason:"stop_sequence" and stop_sequence:"END"; no delta contains END"."""
    up, gw = stack
    # "abcEND" split so the stop sequence straddles two chunks: "ab", "cE", "ND".
    up.push(Script(deltas=[{"content": "ab"}, {"content": "cE"}, {"content": "ND"}]))
    s = await open_stream(gw, body(stop_sequences=["END"]))
    assert s.stop_reason == "stop_sequence" and s.stop_sequence == "END"
    assert s.text == "abc"
    assert not any("END" in d.get("text", "") for b in s.blocks for d in b.deltas)
    assert not any("E" in d.get("text", "") for b in s.blocks for d in b.deltas)


async def test_g15_length_streamed(stack):
    """G15: "LEN(s) streamed → stop_reason:"max_tokens""."""
    up, gw = stack
    up.push(LEN("cut off here"))
    s = await open_stream(gw, body())
    assert s.stop_reason == "max_tokens" and s.text == "cut off here"


async def test_g16_concurrent_streams_do_not_mix(stack):
    """G16: "Two concurrent streams get different message_start.message.ids, and their contents do not mix"."""
    up, gw = stack

    def by_prompt(req: dict) -> Script:
        word = req["messages"][-1]["content"]
        script = TEXT(" ".join([word] * 6))
        script.delay_s = 0.02  # both streams are in flight at once
        return script

    up.default = by_prompt
    a, b = await asyncio.gather(open_stream(gw, body(messages=[{"role": "user", "content": "alpha"}])),
                                open_stream(gw, body(messages=[{"role": "user", "content": "beta"}])))
    assert a.message["id"] != b.message["id"]
    assert a.text == " ".join(["alpha"] * 6) and b.text == " ".join(["beta"] * 6)


# -- keep-alive pings and failures known before the first byte -------------------------------

async def test_f4_pings_during_slow_prefill(stack):
    """F4: "ping frames … come only after message_start … Recommended during long prefill"."""
    up, gw = stack
    up.push(Script(deltas=[{"content": "late"}], first_delay_s=1.2))  # ping_interval_s is 0.5
    s = await open_stream(gw, body())
    names = [n for n, _ in s.frames]
    first_block = names.index("content_block_start")
    assert names[0] == "message_start"
    assert "ping" in names[1:first_block], names
    assert all(d == {"type": "ping"} for n, d in s.frames if n == "ping")
    assert s.text == "late"


@pytest.mark.parametrize("flavor", ["openai", "vllm", "llamacpp"])
async def test_c9_unreachable_upstream_stream_is_json_error(start_gateway, flavor):
    """C9: "Failures known before the first byte on a stream:true request (… backend down) come as a non-200 JSON error"."""
    port = free_port()  # nothing listens there
    gw = await start_gateway(gateway_config({"down": {"type": flavor, "base_url": f"http://127.0.0.1:{port}",
                                                      "model": "test-model"}}, default="down"))
    async with await gw.post("/v1/messages", body(stream=True)) as resp:
        assert resp.status == 500
        assert resp.headers["Content-Type"].startswith("application/json")
        err = await resp.json()
    assert err["type"] == "error" and err["error"]["type"] == "api_error"
    assert "not reachable" in err["error"]["message"]
    with pytest.raises(anthropic.InternalServerError):
        async with gw.anthropic().messages.stream(**body()) as stream:
            await stream.get_final_message()


@pytest.mark.parametrize("stream", [False, True])
async def test_c10_upstream_429_keeps_retry_after(stack, stream):
    """C10/C12: upstream 429 → "E(429, rate_limit_error)" carrying "retry-after" and the backend's message."""
    up, gw = stack
    up.push(FAIL(429, "slow down please", retry_after="7"))
    async with await gw.post("/v1/messages", body(stream=stream)) as resp:
        assert resp.status == 429
        assert resp.headers["Content-Type"].startswith("application/json")
        assert resp.headers["retry-after"] == "7"
        err = await resp.json()
    assert err["error"]["type"] == "rate_limit_error" and "slow down please" in err["error"]["message"]


async def test_c10_sdk_sees_rate_limit_error(stack):
    """C9: the SDK raises its typed RateLimitError for a stream refused with 429."""
    up, gw = stack
    up.push(FAIL(429, "slow down please", retry_after="3"))
    with pytest.raises(anthropic.RateLimitError) as info:
        async with gw.anthropic().messages.stream(**body()) as s:
            await s.get_final_message()
    assert info.value.response.headers["retry-after"] == "3"


@pytest.mark.parametrize("stream", [False, True])
async def test_c10_upstream_503_is_overloaded(stack, stream):
    """C10/C12: a saturated backend (503) → "E(529, overloaded_error)" with retry-after."""
    up, gw = stack
    up.push(FAIL(503, "all slots busy"))
    async with await gw.post("/v1/messages", body(stream=stream)) as resp:
        assert resp.status == 529
        assert resp.headers["Content-Type"].startswith("application/json")
        assert int(resp.headers["retry-after"]) >= 0
        err = await resp.json()
    assert err["error"]["type"] == "overloaded_error" and "all slots busy" in err["error"]["message"]


async def test_c9_upstream_500_before_first_byte_stream(stack):
    """C9/C10: an upstream 500 before the first token on stream:true → JSON "E(500, api_error)", message kept."""
    up, gw = stack
    up.push(FAIL(500, "CUDA out of memory"))
    async with await gw.post("/v1/messages", body(stream=True)) as resp:
        assert resp.status == 500
        assert resp.headers["Content-Type"].startswith("application/json")
        err = await resp.json()
    assert err["error"]["type"] == "api_error" and "CUDA out of memory" in err["error"]["message"]


async def test_g_stream_after_slow_headers_still_valid(stack):
    """F4/G1: an upstream slow to even answer (past the first-event wait) still yields an SSE-ok stream."""
    up, gw = stack
    up.push(Script(deltas=[{"content": "ok"}], headers_delay_s=0.7))
    s = await open_stream(gw, body())
    assert s.text == "ok" and s.stop_reason == "end_turn"


async def test_g_sse_frames_are_single_line_json(stack):
    """F2/F3 for non-ASCII output: every frame is one event line and one single-line JSON data line."""
    up, gw = stack
    up.push(TEXT("25°C ☀️ 晴れ\nline two"))
    async with await gw.post("/v1/messages", body(stream=True)) as resp:
        s = await read_stream(resp)
    assert s.text == "25°C ☀️ 晴れ\nline two"
