"""context_management edits over HTTP: what the backend sees after clear_thinking /
clear_tool_uses, and the applied_edits the client gets back (JSON and SSE)."""
from __future__ import annotations

import json

from tests.compat_helpers import MODEL, start_stack
from tests.upstream import TEXT

SCHEMA = {"type": "object", "properties": {"cmd": {"type": "string"}}}
TOOLS = [{"name": "Bash", "description": "Run", "input_schema": SCHEMA},
         {"name": "Read", "description": "Read", "input_schema": SCHEMA}]


def loop(n: int, names: tuple[str, ...] = ("Bash",), thinking: bool = False) -> list[dict]:
    """A user turn and n tool round trips (tool i called with cmd-i, answered with result-i)."""
    msgs: list[dict] = [{"role": "user", "content": "work"}]
    for i in range(n):
        content: list[dict] = []
        if thinking:
            content.append({"type": "thinking", "thinking": f"reasoning-{i} " * 20, "signature": f"sig{i}"})
        content.append({"type": "tool_use", "id": f"toolu_{i}", "name": names[i % len(names)],
                        "input": {"cmd": f"cmd-{i}"}})
        msgs.append({"role": "assistant", "content": content})
        msgs.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{i}",
                                                  "content": f"result-{i} " * 50}]})
    return msgs


def tool_texts(up) -> list[str]:
    return [m["content"] for m in up.received[-1]["messages"] if m["role"] == "tool"]


def call_args(up) -> list[dict]:
    return [json.loads(c["function"]["arguments"]) for m in up.received[-1]["messages"]
            if m["role"] == "assistant" for c in m.get("tool_calls") or []]


async def test_clear_thinking_keeps_the_last_turns(start_upstream, start_gateway):
    """keep: {thinking_turns: 1} → only the last assistant turn's thinking reaches the backend, and
    the response reports one cleared turn (JSON at top level, SSE in message_delta)."""
    up, gw = await start_stack(start_upstream, start_gateway, "vllm")  # vLLM gets the loop's reasoning back
    body = {"model": MODEL, "max_tokens": 50, "tools": TOOLS, "messages": loop(3, thinking=True),
            "thinking": {"type": "adaptive"},
            "context_management": {"edits": [{"type": "clear_thinking_20251015",
                                               "keep": {"type": "thinking_turns", "value": 1}}]}}
    status, msg = await gw.messages(body)
    assert status == 200, msg
    reasoning = [m.get("reasoning_content") for m in up.received[-1]["messages"] if m["role"] == "assistant"]
    assert reasoning[:2] == [None, None] and "reasoning-2" in reasoning[2]
    [edit] = msg["context_management"]["applied_edits"]
    assert edit["type"] == "clear_thinking_20251015" and edit["cleared_thinking_turns"] == 2
    assert edit["cleared_input_tokens"] > 20
    frames = await gw.stream(body)
    [delta] = [d for name, d in frames if name == "message_delta"]
    assert delta["context_management"] == msg["context_management"]


async def test_clear_thinking_keep_all_clears_nothing(start_upstream, start_gateway):
    """Claude Code's own edit (keep: all): every thinking block stays; applied_edits is empty."""
    up, gw = await start_stack(start_upstream, start_gateway, "vllm")
    status, msg = await gw.messages({"model": MODEL, "max_tokens": 50, "tools": TOOLS, "messages": loop(2, thinking=True),
                                     "thinking": {"type": "adaptive"},
                                     "context_management": {"edits": [{"type": "clear_thinking_20251015",
                                                                       "keep": "all"}]}})
    assert status == 200, msg
    assert msg["context_management"] == {"applied_edits": []}
    reasoning = [m.get("reasoning_content") for m in up.received[-1]["messages"] if m["role"] == "assistant"]
    assert all(r and "reasoning" in r for r in reasoning)


async def test_no_context_management_no_field(start_upstream, start_gateway):
    _, gw = await start_stack(start_upstream, start_gateway)
    status, msg = await gw.messages({"model": MODEL, "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and "context_management" not in msg
    frames = await gw.stream({"model": MODEL, "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]})
    assert all("context_management" not in d for name, d in frames if name == "message_delta")


async def test_clear_tool_uses_past_the_trigger(start_upstream, start_gateway):
    """trigger 2 tool uses, keep 1: the two oldest results become the placeholder, the newest stays."""
    up, gw = await start_stack(start_upstream, start_gateway)
    edit = {"type": "clear_tool_uses_20250919", "trigger": {"type": "tool_uses", "value": 2},
            "keep": {"type": "tool_uses", "value": 1}}
    status, msg = await gw.messages({"model": MODEL, "max_tokens": 20, "tools": TOOLS, "messages": loop(3),
                                     "context_management": {"edits": [edit]}})
    assert status == 200, msg
    texts = tool_texts(up)
    assert "result-0" not in texts[0] and "result-1" not in texts[1] and "result-2" in texts[2]
    assert texts[0] == texts[1] and "cleared" in texts[0]
    assert [a["cmd"] for a in call_args(up)] == ["cmd-0", "cmd-1", "cmd-2"]  # inputs stay by default
    [applied] = msg["context_management"]["applied_edits"]
    assert applied["type"] == "clear_tool_uses_20250919" and applied["cleared_tool_uses"] == 2
    assert applied["cleared_input_tokens"] > 100


async def test_clear_tool_uses_below_the_trigger_does_nothing(start_upstream, start_gateway):
    """The default trigger (100k input tokens) is far away: nothing changes, nothing is reported."""
    up, gw = await start_stack(start_upstream, start_gateway)
    status, msg = await gw.messages({"model": MODEL, "max_tokens": 20, "tools": TOOLS, "messages": loop(3),
                                     "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]}})
    assert status == 200
    assert all("result-" in t for t in tool_texts(up))
    assert msg["context_management"] == {"applied_edits": []}


async def test_clear_tool_uses_excludes_clears_inputs_and_respects_clear_at_least(start_upstream, start_gateway):
    up, gw = await start_stack(start_upstream, start_gateway)
    edit = {"type": "clear_tool_uses_20250919", "trigger": {"type": "input_tokens", "value": 10},
            "keep": {"type": "tool_uses", "value": 0}, "exclude_tools": ["Read"], "clear_tool_inputs": True}
    status, msg = await gw.messages({"model": MODEL, "max_tokens": 20, "tools": TOOLS,
                                     "messages": loop(4, names=("Bash", "Read")),
                                     "context_management": {"edits": [edit]}})
    assert status == 200, msg
    texts = tool_texts(up)
    assert "result-1" in texts[1] and "result-3" in texts[3]  # Read results are excluded
    assert "result-0" not in texts[0] and "result-2" not in texts[2]
    assert [a.get("cmd") for a in call_args(up)] == [None, "cmd-1", None, "cmd-3"]
    assert msg["context_management"]["applied_edits"][0]["cleared_tool_uses"] == 2
    # Asking to clear more than there is: the edit is not applied at all.
    edit["clear_at_least"] = {"type": "input_tokens", "value": 1_000_000}
    status, msg = await gw.messages({"model": MODEL, "max_tokens": 20, "tools": TOOLS,
                                     "messages": loop(4, names=("Bash", "Read")),
                                     "context_management": {"edits": [edit]}})
    assert status == 200
    assert all("result-" in t for t in tool_texts(up))
    assert msg["context_management"] == {"applied_edits": []}


async def test_bad_edits_are_400_unknown_edit_types_pass(start_upstream, start_gateway):
    up, gw = await start_stack(start_upstream, start_gateway)
    for bad in ({"type": "clear_tool_uses_20250919", "trigger": {"type": "minutes", "value": 1}},
                {"type": "clear_tool_uses_20250919", "keep": {"type": "tool_uses", "value": -1}},
                {"type": "clear_thinking_20251015", "keep": "some"},
                {"type": "clear_tool_uses_20250919", "exclude_tools": "Read"}):
        status, data = await gw.messages({"model": MODEL, "max_tokens": 5, "messages": loop(1),
                                          "context_management": {"edits": [bad]}})
        assert status == 400 and data["error"]["type"] == "invalid_request_error", (bad, data)
        assert "context_management.edits.0" in data["error"]["message"]
    up.push(TEXT("fine"))
    status, msg = await gw.messages({"model": MODEL, "max_tokens": 5, "messages": loop(1),
                                     "context_management": {"edits": [{"type": "compact_20260101"}]}})
    assert status == 200 and msg["content"][0]["text"] == "fine"
