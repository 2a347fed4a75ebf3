"""anthropic-compat.md section H: streaming tool use."""
from __future__ import annotations

import json

import pytest

from tests.sse_checks import open_stream
from tests.upstream import TOOL, TOOLS2, Script

MODEL = "claude-opus-4-8"
THINKING = {"type": "enabled", "budget_tokens": 1024}
TOOLS = [{"name": "get_weather", "description": "Weather for a city",
          "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}}}]


def body(**kw) -> dict:
    out = {"model": MODEL, "max_tokens": 2000, "messages": [{"role": "user", "content": "weather in Paris?"}],
           "tools": TOOLS}
    out.update(kw)
    return out


def call(index: int, name: str | None = None, args: str = "", call_id: str | None = None) -> dict:
    """One OpenAI tool_calls entry (the first one of a call carries id and name)."""
    fn: dict = {"arguments": args}
    entry: dict = {"index": index, "function": fn}
    if name is not None:
        fn["name"] = name
        entry.update(id=call_id or f"call_{index}", type="function")
    return entry


async def test_h1_tool_use_start_has_empty_input(stack):
    """H1: "content_block_start{content_block:{type:"tool_use", id, name, input:{}}}"."""
    up, gw = stack
    up.push(TOOL("get_weather", {"location": "Paris"}))
    s = await open_stream(gw, body())
    (start,) = [b.start for b in s.blocks]
    assert start["type"] == "tool_use" and start["name"] == "get_weather" and start["input"] == {}
    assert start["id"].startswith("toolu_")


async def test_h2_partial_json_concatenates_to_arguments(stack):
    """H2: "The partial_json of all input_json_deltas at that index, concatenated, parses to exactly the tool arguments"."""
    up, gw = stack
    args = {"location": "Paris", "days": 3, "units": {"temp": "C", "wind": "km/h"}, "tags": ["a", "b"]}
    up.push(TOOL("get_weather", args), TOOL("get_weather", args))
    s = await open_stream(gw, body())
    assert json.loads(s.blocks[0].joined("input_json_delta")) == args
    async with gw.anthropic().messages.stream(**body()) as stream:
        msg = await stream.get_final_message()
    (block,) = msg.content
    assert block.type == "tool_use" and block.name == "get_weather" and block.input == args


async def test_h3_one_byte_fragments_forwarded_exactly(stack):
    """H3: "Arguments that arrive in many tiny backend fragments are forwarded so that the concatenation is still exact"."""
    up, gw = stack
    # Escapes, non-ASCII, nested structure and whitespace: any re-serialisation would change the bytes.
    args = {"path": "C:\\tmp\\\"q\".txt", "text": "25°C ☀️ 晴れ\n\tend", "n": [1, 2.5, -3e-7, True, None],
            "deep": {"a": {"b": {"c": ""}}}}
    raw = json.dumps(args)
    up.push(TOOL("get_weather", args, fragment=1), TOOL("get_weather", args, fragment=1))
    s = await open_stream(gw, body())
    (block,) = s.blocks
    assert block.joined("input_json_delta") == raw
    assert json.loads(block.joined("input_json_delta")) == args
    async with gw.anthropic().messages.stream(**body()) as stream:
        msg = await stream.get_final_message()
    assert msg.content[0].input == args


async def test_h4_tool_use_stop_reason_despite_finish_stop(stack):
    """H4: "message_delta.delta.stop_reason is "tool_use" whenever at least one tool_use block was emitted, even if the backend's finish reason says "stop""."""
    up, gw = stack
    script = TOOL("get_weather", {"location": "Paris"})
    script.finish_reason = "stop"
    up.push(script)
    s = await open_stream(gw, body())
    assert s.stop_reason == "tool_use" and s.stop_sequence is None


H5_CASES = {
    "text_then_tool": (lambda: TOOL("get_weather", {"location": "Paris"}, lead="Let me check."), {},
                       ["text", "tool_use"]),
    "thinking_then_tool": (lambda: Script(deltas=[{"reasoning_content": "Need weather."}] +
                                          TOOL("get_weather", {"location": "Paris"}).deltas,
                                          finish_reason="tool_calls"),
                           {"thinking": THINKING}, ["thinking", "tool_use"]),
    "tools2": (TOOLS2, {}, ["tool_use", "tool_use"]),
}


@pytest.mark.parametrize("case", list(H5_CASES))
async def test_h5_block_order_matches_output(stack, case):
    """H5: "text then tool → [text@0, tool_use@1]; thinking then tool → [thinking@0, tool_use@1]; TOOLS2 → consecutive indices"."""
    up, gw = stack
    make, extra, kinds = H5_CASES[case]
    up.push(make(), make())
    s = await open_stream(gw, body(**extra))
    assert [(b.index, b.type) for b in s.blocks] == list(enumerate(kinds))
    assert s.stop_reason == "tool_use"
    if case == "tools2":
        assert [(b["name"], b["input"]) for b in s.content] == [("get_weather", {"location": "Paris"}),
                                                                 ("get_time", {"tz": "CET"})]
        assert s.blocks[0].start["id"] != s.blocks[1].start["id"]
    async with gw.anthropic().messages.stream(**body(**extra)) as stream:
        msg = await stream.get_final_message()
    assert [b.type for b in msg.content] == kinds


async def test_h6_text_after_tool_call_opens_new_block(stack):
    """H6: "Text that resumes after a tool call → a new text block at the next index, with its first token present"."""
    up, gw = stack
    up.push(Script(deltas=[{"tool_calls": [call(0, "get_weather")]},
                           {"tool_calls": [call(0, args='{"location": "Paris"}')]},
                           {"content": "Checking"}, {"content": " now."}],
                   finish_reason="tool_calls"))
    s = await open_stream(gw, body())
    assert [(b.index, b.type) for b in s.blocks] == [(0, "tool_use"), (1, "text")]
    assert s.content[1] == {"type": "text", "text": "Checking now."}
    assert s.content[0]["input"] == {"location": "Paris"}


async def test_h7_whitespace_in_tool_chunk_keeps_call(stack):
    """H7: "Whitespace-only text in the same backend chunk as a tool call does not swallow the call"."""
    up, gw = stack
    up.push(Script(deltas=[{"content": "\n\n", "tool_calls": [call(0, "get_weather", '{"location": ')]},
                           {"content": " ", "tool_calls": [call(0, args='"Paris"}')]}],
                   finish_reason="tool_calls"))
    s = await open_stream(gw, body())
    tools = [b for b in s.content if b["type"] == "tool_use"]
    assert len(tools) == 1 and tools[0]["input"] == {"location": "Paris"}
    assert s.stop_reason == "tool_use"
    assert all(b["text"].strip() for b in s.content if b["type"] == "text")  # no stray whitespace block


async def test_h8_collapsed_chunk_reasoning_text_tool(stack):
    """H8: "A collapsed backend chunk carrying reasoning, text and a tool call → thinking, text and tool_use blocks, each exactly once"."""
    up, gw = stack
    chunk = {"reasoning_content": "The user wants weather.", "content": "Let me check.",
             "tool_calls": [call(0, "get_weather", '{"location": "Paris"}')]}
    up.push(Script(deltas=[chunk], finish_reason="tool_calls"), Script(deltas=[chunk], finish_reason="tool_calls"))
    s = await open_stream(gw, body(thinking=THINKING))
    assert [b.type for b in s.blocks] == ["thinking", "text", "tool_use"]
    assert s.content[0]["thinking"] == "The user wants weather."
    assert s.content[1] == {"type": "text", "text": "Let me check."}
    assert s.content[2]["input"] == {"location": "Paris"} and s.stop_reason == "tool_use"
    async with gw.anthropic().messages.stream(**body(thinking=THINKING)) as stream:
        msg = await stream.get_final_message()
    assert [b.type for b in msg.content] == ["thinking", "text", "tool_use"]


async def test_h8_collapsed_chunk_two_tool_calls(stack):
    """H8: one chunk carrying two complete tool calls → two tool_use blocks, each exactly once."""
    up, gw = stack
    up.push(Script(deltas=[{"tool_calls": [call(0, "get_weather", '{"location": "Paris"}'),
                                           call(1, "get_weather", '{"location": "Rome"}')]}],
                   finish_reason="tool_calls"))
    s = await open_stream(gw, body())
    assert [(b["type"], b["input"]) for b in s.content] == [("tool_use", {"location": "Paris"}),
                                                            ("tool_use", {"location": "Rome"})]
