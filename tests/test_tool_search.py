"""Deferred tools (tool search) over HTTP: what reaches the backend before and after a
`tool_reference` loads a tool, tool_addition / tool_removal, and the MLX prompt cache around a load."""
from __future__ import annotations

import json

from tests.compat_helpers import MODEL, start_stack
from tests.upstream import TEXT

SCHEMA = {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}


def tool(name: str, deferred: bool = False) -> dict:
    t = {"name": name, "description": f"The {name} tool.", "input_schema": SCHEMA}
    if deferred:
        t["defer_loading"] = True
    return t


# Claude Code's shape: eager tools, ToolSearch, deferred ones in alphabetical order among them.
TOOLS = [tool("Bash"), tool("NotebookEdit", True), tool("Read"), tool("ToolSearch"),
         tool("DeferredToolPlaceholder", True), tool("WebFetch", True)]


def search_turn(call_id: str, *names: str) -> list[dict]:
    """The assistant's ToolSearch call and Claude Code's answer to it (tool_reference blocks)."""
    return [
        {"role": "assistant", "content": [{"type": "tool_use", "id": call_id, "name": "ToolSearch",
                                           "input": {"query": "select:" + ",".join(names), "max_results": 5}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call_id,
             "content": [{"type": "tool_reference", "tool_name": n} for n in names]},
            {"type": "text", "text": "Tool loaded."}]},
    ]


def names_sent(up) -> list[str]:
    return [t["function"]["name"] for t in up.received[-1].get("tools") or []]


def tool_messages(up) -> list[dict]:
    return [m for m in up.received[-1]["messages"] if m["role"] == "tool"]


async def test_deferred_tools_stay_out_until_loaded(start_upstream, start_gateway):
    """Before any load only the eager tools reach the backend (no placeholder, no deferred schema)."""
    up, gw = await start_stack(start_upstream, start_gateway)
    status, msg = await gw.messages({"model": MODEL, "max_tokens": 50, "tools": TOOLS,
                                     "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200, msg
    assert names_sent(up) == ["Bash", "Read", "ToolSearch"]


async def test_tool_reference_loads_the_tool_at_the_end_of_the_list(start_upstream, start_gateway):
    """A tool_reference loads NotebookEdit: its full schema reaches the backend, appended after the
    eager tools (so the prefix before it is unchanged), and the reference becomes one short text."""
    up, gw = await start_stack(start_upstream, start_gateway)
    body = {"model": MODEL, "max_tokens": 50, "tools": TOOLS,
            "messages": [{"role": "user", "content": "Edit the notebook."}, *search_turn("toolu_1", "NotebookEdit")]}
    status, msg = await gw.messages(body)
    assert status == 200, msg
    assert names_sent(up) == ["Bash", "Read", "ToolSearch", "NotebookEdit"]
    loaded = up.received[-1]["tools"][-1]["function"]
    assert loaded["parameters"] == SCHEMA and loaded["description"] == "The NotebookEdit tool."
    [result] = tool_messages(up)
    assert result["tool_call_id"] == "toolu_1"
    assert "NotebookEdit" in result["content"] and "loaded" in result["content"]
    assert len(result["content"]) < 100
    # The next turn keeps the same order; a second load goes after the first.
    body["messages"] += search_turn("toolu_2", "WebFetch")
    status, _ = await gw.messages(body)
    assert status == 200
    assert names_sent(up) == ["Bash", "Read", "ToolSearch", "NotebookEdit", "WebFetch"]


async def test_streamed_and_counted_requests_see_the_loaded_tool(start_upstream, start_gateway):
    """count_tokens and streaming take the same path: the load counts, nothing fails."""
    up, gw = await start_stack(start_upstream, start_gateway, "vllm")
    base = {"model": MODEL, "tools": TOOLS, "messages": [{"role": "user", "content": "x"}]}
    loaded = dict(base, messages=base["messages"] + search_turn("toolu_1", "NotebookEdit"))
    counts = []
    for b in (base, loaded):
        resp = await gw.post("/v1/messages/count_tokens", b)
        assert resp.status == 200, await resp.text()
        counts.append((await resp.json())["input_tokens"])
    assert counts[1] > counts[0]
    frames = await gw.stream(dict(loaded, max_tokens=20))
    assert frames[-1][0] == "message_stop"
    assert names_sent(up)[-1] == "NotebookEdit"


async def test_reference_to_an_undefined_tool_is_text_not_an_error(start_upstream, start_gateway):
    up, gw = await start_stack(start_upstream, start_gateway)
    status, msg = await gw.messages({"model": MODEL, "max_tokens": 20, "tools": TOOLS,
                                     "messages": [{"role": "user", "content": "x"}, *search_turn("t1", "Nope")]})
    assert status == 200, msg
    assert names_sent(up) == ["Bash", "Read", "ToolSearch"]
    assert "Nope" in tool_messages(up)[0]["content"] and "not available" in tool_messages(up)[0]["content"]


async def test_tool_addition_and_removal_change_the_set(start_upstream, start_gateway):
    """System-message tool_addition (by definition or by reference) and tool_removal change what the
    backend sees from there on; the blocks reach it as short text."""
    up, gw = await start_stack(start_upstream, start_gateway)
    fresh = {"name": "Monitor", "description": "Watch a process.", "input_schema": SCHEMA}
    body = {"model": MODEL, "max_tokens": 20, "tools": TOOLS, "messages": [
        {"role": "user", "content": "start"},
        {"role": "assistant", "content": "ok"},
        {"role": "system", "content": [
            {"type": "tool_addition", "tool": {"type": "tool_definition", "definition": fresh}},
            {"type": "tool_addition", "tool": {"type": "tool_reference", "name": "WebFetch"}},
            {"type": "tool_removal", "tool": {"type": "tool_reference", "name": "Bash"}}]},
        {"role": "user", "content": "go on"}]}
    status, msg = await gw.messages(body)
    assert status == 200, msg
    assert names_sent(up) == ["Read", "ToolSearch", "Monitor", "WebFetch"]
    assert up.received[-1]["tools"][2]["function"]["description"] == "Watch a process."
    system_texts = [m["content"] for m in up.received[-1]["messages"] if m["role"] == "system"]
    said = "\n".join(system_texts)
    assert "Monitor" in said and "WebFetch" in said and "Bash" in said


async def test_malformed_tool_change_is_a_400(start_upstream, start_gateway):
    _, gw = await start_stack(start_upstream, start_gateway)
    for block in ({"type": "tool_removal", "tool": {"type": "tool_definition", "definition": tool("X")}},
                  {"type": "tool_addition"},
                  {"type": "tool_reference"}):
        where = "system" if block["type"] != "tool_reference" else "tool"
        content = [block] if where == "system" else [
            {"type": "tool_result", "tool_use_id": "t", "content": [block]}]
        status, data = await gw.messages({"model": MODEL, "max_tokens": 5, "messages": [
            {"role": "user", "content": "x"}, {"role": "system" if where == "system" else "user",
                                               "content": content}]})
        assert status == 400 and data["error"]["type"] == "invalid_request_error", (block, data)


async def test_forced_deferred_tool_is_sent(start_upstream, start_gateway):
    """tool_choice naming a deferred tool: the backend gets that tool, or it could not call it."""
    up, gw = await start_stack(start_upstream, start_gateway)
    up.push(TEXT("ok"))
    status, _ = await gw.messages({"model": MODEL, "max_tokens": 20, "tools": TOOLS,
                                   "tool_choice": {"type": "tool", "name": "WebFetch"},
                                   "messages": [{"role": "user", "content": "x"}]})
    assert status == 200
    assert names_sent(up)[-1] == "WebFetch"
    assert up.received[-1]["tool_choice"]["function"]["name"] == "WebFetch"


async def test_mlx_prefix_cache_survives_a_tool_load(start_gateway, demo_model_dir, tmp_path):
    """Embedded MLX: the loaded tool's definition is written where the reference is (the tool list
    at the top of the prompt stays the same), so the turn after a load reads all of the previous
    turn from the prompt cache; inserting the tool into the list, as a client resending its tools
    would, keeps only the prefix before it."""
    from tests.conftest import gateway_config

    gw = await start_gateway(gateway_config(
        {"m": {"type": "mlx", "model": str(demo_model_dir), "model_mapping": {"claude-*": str(demo_model_dir)}}},
        default="m"))
    headers = {"X-Claude-Code-Session-Id": "tool-load"}
    system = "You are a terse assistant. " * 20
    eager = [t for t in TOOLS if "defer_loading" not in t]
    turn1 = {"model": MODEL, "max_tokens": 4, "temperature": 0, "system": system, "tools": TOOLS,
             "messages": [{"role": "user", "content": "Edit the notebook please."}]}
    status, first = await gw.messages(turn1, **headers)
    assert status == 200, first
    prompt1 = first["usage"]["input_tokens"] + first["usage"]["cache_read_input_tokens"]
    resp = await gw.post("/v1/messages/count_tokens", {**turn1, "tools": eager})
    assert (await resp.json())["input_tokens"] == prompt1  # the deferred tools were not rendered

    turn2 = dict(turn1, messages=turn1["messages"] + search_turn("toolu_1", "NotebookEdit"))
    status, second = await gw.messages(turn2, **headers)
    assert status == 200, second
    prompt2 = second["usage"]["input_tokens"] + second["usage"]["cache_read_input_tokens"]
    cached2 = second["usage"]["cache_read_input_tokens"]
    # NotebookEdit's definition is in the prompt now: more than the short line a reference becomes.
    without_schema = dict(turn2, tools=eager)
    resp = await gw.post("/v1/messages/count_tokens", without_schema)
    assert prompt2 > (await resp.json())["input_tokens"] + 30
    # All of turn 1 but the few generation-prompt tokens comes from the cache.
    assert cached2 >= prompt1 - 8, (cached2, prompt1, prompt2)
    in_place = [dict(t, defer_loading=False) if t["name"] == "NotebookEdit" else t for t in TOOLS]
    status, _ = await gw.messages(turn1, **{"X-Claude-Code-Session-Id": "in-place"})
    status, naive = await gw.messages(dict(turn2, tools=in_place), **{"X-Claude-Code-Session-Id": "in-place"})
    assert status == 200
    assert naive["usage"]["cache_read_input_tokens"] < cached2 - 50, (naive["usage"], cached2)

    turn3 = dict(turn2, messages=turn2["messages"] + [{"role": "assistant", "content": second["content"]},
                                                      {"role": "user", "content": "Thanks."}])
    status, third = await gw.messages(turn3, **headers)
    assert status == 200, third
    assert third["usage"]["cache_read_input_tokens"] >= prompt2 - 8, (third["usage"], prompt2)
    print(json.dumps({"prompt_before_load": prompt1, "prompt_after_load": prompt2, "cache_read_after_load": cached2,
                      "cache_read_after_load_in_place": naive["usage"]["cache_read_input_tokens"],
                      "cache_read_next_turn": third["usage"]["cache_read_input_tokens"]}))

