"""anthropic-compat.md section B: request acceptance (all expect 200 and an assistant message)."""
from __future__ import annotations

import json

import pytest

from tests.compat_helpers import MODEL, assert_error, body, sent, sent_messages, start_stack, text_of
from tests.upstream import LEN, TEXT, THINK, Script, count_prompt_tokens

PNG_1PX = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
JPEG_STUB = "/9j/4AAQSkZJRgABAQEASABIAAD/2wBDAP//////////////////////////////////////////////////////2Q=="


async def _ok(gw, payload: dict) -> dict:
    status, data = await gw.messages(payload)
    assert status == 200, data
    assert data["type"] == "message" and data["role"] == "assistant", data
    return data


async def test_b1_minimal_body(stack):
    """B1: the minimal body `{model, max_tokens, messages:[{role:user, content:"hi"}]}` → 200. [all]"""
    up, gw = stack
    data = await _ok(gw, {"model": MODEL, "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]})
    assert data["content"] == [{"type": "text", "text": "Hello there!"}]
    assert text_of(sent_messages(up)[-1]["content"]) == "hi"


async def test_b2_text_block_list_in_order(start_upstream, start_gateway):
    """B2: `content` as a list of text blocks reaches the backend with every block's text, in order."""
    up, gw = await start_stack(start_upstream, start_gateway)
    parts = ["first part", "second part", "third part"]
    await _ok(gw, body(messages=[{"role": "user", "content": [{"type": "text", "text": t} for t in parts]}]))
    text = text_of(sent_messages(up)[-1]["content"])
    positions = [text.index(t) for t in parts]
    assert positions == sorted(positions)


@pytest.mark.parametrize("form", ["string", "blocks"])
async def test_b3_system_string_or_blocks(start_upstream, start_gateway, form):
    """B3: `system` as a string or a list of text blocks (with cache_control); the texts reach the backend in order."""
    up, gw = await start_stack(start_upstream, start_gateway)
    if form == "string":
        system, texts = "You are a careful assistant.", ["You are a careful assistant."]
    else:
        texts = ["You are Claude Code.", "Follow the repository conventions.", "Be brief."]
        system = [{"type": "text", "text": t} for t in texts]
        system[-1]["cache_control"] = {"type": "ephemeral"}
        system[0]["cache_control"] = {"type": "ephemeral", "ttl": "1h"}
    await _ok(gw, body(system=system))
    first = sent_messages(up)[0]
    assert first["role"] == "system"
    positions = [first["content"].index(t) for t in texts]
    assert positions == sorted(positions)


async def test_b4_inline_system_messages(start_upstream, start_gateway):
    """B4: `role:"system"` entries inside `messages` are accepted and reach the backend as system guidance, in order;
    role "tool" → E(400)."""
    up, gw = await start_stack(start_upstream, start_gateway)
    await _ok(gw, body(system="top-level system", messages=[
        {"role": "system", "content": "leading system note"},
        {"role": "user", "content": "question one"},
        {"role": "assistant", "content": "answer one"},
        {"role": "system", "content": [{"type": "text", "text": "mid-conversation reminder"}]},
        {"role": "user", "content": "question two"},
    ]))
    msgs = sent_messages(up)
    system_texts = [m["content"] for m in msgs if m["role"] == "system"]
    joined = "\n".join(system_texts)
    order = [joined.index(t) for t in ("top-level system", "leading system note", "mid-conversation reminder")]
    assert order == sorted(order)
    # the mid-conversation note stays where it was said, between the turns around it
    flat = [(m["role"], text_of(m["content"])) for m in msgs]
    mid = next(i for i, (r, t) in enumerate(flat) if r == "system" and "mid-conversation reminder" in t)
    assert flat[mid - 1] == ("assistant", "answer one")
    assert flat[mid + 1] == ("user", "question two")
    resp = await gw.post("/v1/messages", body(messages=[{"role": "tool", "content": "x"}]))
    await assert_error(resp, 400, "invalid_request_error")


async def test_b5_multi_turn(start_upstream, start_gateway):
    """B5: multi-turn user / assistant (string content) / user → 200."""
    up, gw = await start_stack(start_upstream, start_gateway)
    await _ok(gw, body(messages=[{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"},
                                 {"role": "user", "content": "three"}]))
    assert [(m["role"], text_of(m["content"])) for m in sent_messages(up)] == [
        ("user", "one"), ("assistant", "two"), ("user", "three")]


async def test_b6_cache_control_everywhere_ignored(start_upstream, start_gateway):
    """B6: `cache_control` on system blocks, message text, tool_result blocks and tool definitions is ignored."""
    up, gw = await start_stack(start_upstream, start_gateway)
    cc = {"type": "ephemeral"}
    await _ok(gw, body(
        system=[{"type": "text", "text": "sys", "cache_control": cc}],
        tools=[{"name": "Read", "description": "read a file", "cache_control": cc,
                "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "read it", "cache_control": cc}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Read",
                                               "input": {"path": "a"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "data",
                                          "cache_control": cc},
                                         {"type": "text", "text": "go on", "cache_control": cc}]},
        ]))
    assert "cache_control" not in json.dumps(sent(up))


async def test_b7_unknown_top_level_fields_ignored(start_upstream, start_gateway):
    """B7: unknown top-level fields (`context_management`, `output_config.effort`, `metadata.user_id`, ...) are ignored."""
    _, gw = await start_stack(start_upstream, start_gateway)
    await _ok(gw, body(
        context_management={"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        output_config={"effort": "high"},
        metadata={"user_id": json.dumps({"device_id": "d", "account_uuid": "", "session_id": "s-1"})},
        service_tier="auto", container="container_123", mcp_servers=[], some_future_field={"x": [1, 2]},
        diagnostics={"enabled": True}))


@pytest.mark.parametrize("flavor", ["openai", "vllm", "llamacpp"])
async def test_b8_max_tokens_clamped_to_context(start_upstream, start_gateway, flavor):
    """B8: `max_tokens: 64000` against a backend with a smaller limit → clamped and served (200, not 400)."""
    context = 4096
    extra = {"context_window": context} if flavor == "openai" else {}  # plain OpenAI servers do not say
    up, gw = await start_stack(start_upstream, start_gateway, flavor, upstream={"context": context}, **extra)
    await _ok(gw, body(max_tokens=64000, system="You are helpful."))
    max_tokens = sent(up)["max_tokens"]
    assert context // 2 < max_tokens < context
    if flavor == "vllm":  # exact tokenizer: the whole window is used, no more
        assert max_tokens + count_prompt_tokens(sent_messages(up)) == context
    # streaming is clamped the same way
    frames = await gw.stream(body(max_tokens=64000))
    assert frames[-1][0] == "message_stop"
    assert sent(up)["max_tokens"] < context


async def test_b9_max_tokens_1_probe(stack):
    """B9: the `max_tokens: 1` probe → 200 `type:"message"` with max_tokens (or end_turn); streamed, a full sequence."""
    up, gw = stack
    up.push(LEN("H"), LEN("H"))
    data = await _ok(gw, body(max_tokens=1))
    assert data["stop_reason"] in ("max_tokens", "end_turn")
    assert sent(up)["max_tokens"] == 1
    frames = await gw.stream(body(max_tokens=1))
    names = [n for n, _ in frames if n != "ping"]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert "message_delta" in names
    delta = next(d for n, d in frames if n == "message_delta")
    assert delta["delta"]["stop_reason"] in ("max_tokens", "end_turn")


async def test_b10_sampling_params_reach_backend(stack):
    """B10: `temperature`, `top_p`, `top_k` and `stop_sequences` are accepted and reach the backend with the same values."""
    up, gw = stack
    await _ok(gw, body(temperature=0.3, top_p=0.85, top_k=40, stop_sequences=["</answer>", "\n\nHuman:"]))
    got = sent(up)
    assert got["temperature"] == 0.3
    assert got["top_p"] == 0.85
    if up.flavor == "openai":
        # Documented choice: a generic server stops before a stop string without saying which one
        # matched, so the gateway matches them itself (test_stop_sequences_matched_by_the_gateway).
        assert "stop" not in got
    else:
        assert got["stop"] == ["</answer>", "\n\nHuman:"]
    if up.flavor == "openai":
        # Documented choice: OpenAI proper rejects `top_k`, so the generic openai type does not forward it.
        assert "top_k" not in got
    else:
        assert got["top_k"] == 40


async def test_b11_thinking_and_effort_variants(start_upstream, start_gateway):
    """B11: `thinking` adaptive (with display), enabled+budget_tokens or disabled, with any `output_config.effort`."""
    _, gw = await start_stack(start_upstream, start_gateway)
    thinkings = [{"type": "adaptive"}, {"type": "adaptive", "display": "summarized"},
                 {"type": "enabled", "budget_tokens": 2048}, {"type": "disabled"}]
    for thinking in thinkings:
        for effort in ("low", "medium", "high", "xhigh", "max"):
            payload = body(max_tokens=4096, thinking=thinking, output_config={"effort": effort})
            status, data = await gw.messages(payload)
            assert status == 200, (thinking, effort, data)


async def test_b12_thinking_history_hidden_from_backend(start_upstream, start_gateway):
    """B12: assistant history with `thinking{thinking, signature}` (gateway-issued or arbitrary) and
    `redacted_thinking` → 200; the backend is not shown them as visible text."""
    up, gw = await start_stack(start_upstream, start_gateway)
    up.push(THINK("secret plan alpha", "Visible answer."))
    first = await _ok(gw, body(max_tokens=4096, thinking={"type": "enabled", "budget_tokens": 1024}))
    issued = first["content"][0]
    assert issued["type"] == "thinking"
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": first["content"]},
        {"role": "user", "content": "and now?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "secret plan beta", "signature": "EqQBCkYIBxgCKkDarbitrary=="},
            {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr"},
            {"type": "text", "text": "Second visible answer."}]},
        {"role": "user", "content": "thanks"},
    ]
    await _ok(gw, body(max_tokens=4096, thinking={"type": "enabled", "budget_tokens": 1024}, messages=history))
    visible = [text_of(m.get("content")) for m in sent_messages(up)]
    joined = "\n".join(visible)
    assert "Visible answer." in joined and "Second visible answer." in joined
    for hidden in ("secret plan alpha", "secret plan beta", "EmwKAhgBEgy3va3pzix", "EqQBCkYIBxgC",
                   issued["signature"]):
        assert hidden not in joined


async def test_b12_tool_loop_thinking_as_reasoning_field(stack):
    """B12: thinking of the current tool loop is never visible text; template-rendering servers (vLLM, llama.cpp)
    get it as the assistant's `reasoning_content`, older turns' thinking is not sent."""
    up, gw = stack
    history = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "old turn reasoning", "signature": "s1"},
                                          {"type": "text", "text": "first answer"}]},
        {"role": "user", "content": "list the files"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "I should call ls", "signature": "s2"},
                                          {"type": "tool_use", "id": "toolu_1", "name": "Bash",
                                           "input": {"command": "ls"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "a.py"}]},
    ]
    await _ok(gw, body(max_tokens=4096, thinking={"type": "enabled", "budget_tokens": 1024}, messages=history))
    msgs = sent_messages(up)
    assert "old turn reasoning" not in json.dumps(msgs)
    assert all("I should call ls" not in text_of(m.get("content")) for m in msgs)
    loop_turn = next(m for m in msgs if m.get("tool_calls"))
    if up.flavor == "openai":
        assert "reasoning_content" not in loop_turn  # OpenAI proper rejects unknown message fields
    else:
        assert loop_turn["reasoning_content"] == "I should call ls"


async def test_b13_tool_use_then_tool_result(start_upstream, start_gateway):
    """B13: assistant `tool_use{id, name, input}` then user `tool_result{tool_use_id}` → 200; the backend gets both,
    linked by id."""
    up, gw = await start_stack(start_upstream, start_gateway)
    await _ok(gw, body(messages=[
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01ABC", "name": "get_weather",
                                           "input": {"location": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01ABC", "content": "18°C sunny"}]},
    ], tools=[{"name": "get_weather", "input_schema": {"type": "object"}}]))
    msgs = sent_messages(up)
    call = msgs[1]["tool_calls"][0]
    assert call["id"] == "toolu_01ABC" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"location": "Paris"}
    assert msgs[2] == {"role": "tool", "tool_call_id": "toolu_01ABC", "content": "18°C sunny"}


@pytest.mark.parametrize("result", [
    {"content": [{"type": "text", "text": "line 1"}, {"type": "text", "text": "line 2"}]},
    {"content": "command failed", "is_error": True},
    {"content": "cached output", "cache_control": {"type": "ephemeral"}},
    {},
    {"content": []},
], ids=["text-blocks", "is_error", "cache_control", "no-content", "empty-list"])
async def test_b14_tool_result_content_shapes(start_upstream, start_gateway, result):
    """B14: `tool_result` content as text blocks, with `is_error`, with `cache_control`, or with no content → 200."""
    up, gw = await start_stack(start_upstream, start_gateway)
    await _ok(gw, body(messages=[
        {"role": "user", "content": "run it"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Bash",
                                           "input": {"command": "ls"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", **result}]},
    ]))
    tool_msg = next(m for m in sent_messages(up) if m["role"] == "tool")
    assert tool_msg["tool_call_id"] == "toolu_1"
    if result.get("content") and isinstance(result["content"], list):
        assert "line 1" in tool_msg["content"] and "line 2" in tool_msg["content"]
    elif result.get("content"):
        assert result["content"] in tool_msg["content"]


async def test_b15_tool_results_before_user_text(start_upstream, start_gateway):
    """B15: one user message with tool_result(s) and a text block → 200; the backend sees the results first, then the text."""
    up, gw = await start_stack(start_upstream, start_gateway)
    await _ok(gw, body(messages=[
        {"role": "user", "content": "do both"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_a", "name": "Read", "input": {"path": "a"}},
            {"type": "tool_use", "id": "toolu_b", "name": "Read", "input": {"path": "b"}}]},
        {"role": "user", "content": [
            {"type": "text", "text": "<system-reminder>keep going</system-reminder>"},
            {"type": "tool_result", "tool_use_id": "toolu_a", "content": "A"},
            {"type": "tool_result", "tool_use_id": "toolu_b", "content": "B"}]},
    ]))
    tail = [(m["role"], m.get("tool_call_id"), text_of(m["content"])) for m in sent_messages(up)[2:]]
    assert tail == [("tool", "toolu_a", "A"), ("tool", "toolu_b", "B"),
                    ("user", None, "<system-reminder>keep going</system-reminder>")]


async def test_b16_parallel_tool_uses_each_id_once(start_upstream, start_gateway):
    """B16: several `tool_use` blocks in one assistant turn with matching `tool_result`s → 200; each id delivered once."""
    up, gw = await start_stack(start_upstream, start_gateway)
    ids = ["toolu_1", "toolu_2", "toolu_3"]
    await _ok(gw, body(messages=[
        {"role": "user", "content": "three things"},
        {"role": "assistant", "content": [{"type": "text", "text": "Doing three things."}] + [
            {"type": "tool_use", "id": i, "name": "Glob", "input": {"pattern": f"*.{n}"}} for n, i in enumerate(ids)]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": i, "content": f"r{n}"}
                                     for n, i in enumerate(ids)]},
    ]))
    msgs = sent_messages(up)
    call_ids = [c["id"] for m in msgs for c in m.get("tool_calls") or []]
    result_ids = [m["tool_call_id"] for m in msgs if m["role"] == "tool"]
    assert call_ids == ids
    assert result_ids == ids


def _claude_code_tool(i: int) -> dict:
    return {"name": f"Tool{i}", "description": f"Tool number {i}. " + "Use it carefully. " * 20,
            "input_schema": {
                "$schema": "http://json-schema.org/draft-07/schema#", "type": "object", "additionalProperties": False,
                "required": ["path"],
                "properties": {
                    "path": {"type": "string", "description": "absolute path"},
                    "options": {"type": "object", "additionalProperties": False,
                                "properties": {"limit": {"type": "number"},
                                               "flags": {"type": "array", "items": {"type": "string",
                                                                                    "enum": ["a", "b"]}}}},
                    "edits": {"type": "array", "items": {"type": "object", "required": ["old", "new"],
                                                         "properties": {"old": {"type": "string"},
                                                                        "new": {"type": "string"}}}}}}}


async def test_b17_twenty_five_claude_code_tools(start_upstream, start_gateway):
    """B17: a `tools` array of 25 Claude-Code-style definitions (`$schema`, `additionalProperties`, nesting) → 200."""
    up, gw = await start_stack(start_upstream, start_gateway)
    tools = [_claude_code_tool(i) for i in range(25)]
    await _ok(gw, body(tools=tools))
    got = sent(up)["tools"]
    assert [t["function"]["name"] for t in got] == [t["name"] for t in tools]
    assert got[7]["function"]["parameters"] == tools[7]["input_schema"]


@pytest.mark.parametrize("choice", [{"type": "auto"}, {"type": "any"}, {"type": "none"},
                                    {"type": "tool", "name": "get_weather"},
                                    {"type": "auto", "disable_parallel_tool_use": True}],
                         ids=["auto", "any", "none", "tool", "auto-no-parallel"])
async def test_b18_tool_choice_variants(start_upstream, start_gateway, choice):
    """B18: `tool_choice` as `{type:auto}`, `{type:any}`, `{type:none}` or `{type:tool, name}` → accepted, not a 400."""
    up, gw = await start_stack(start_upstream, start_gateway)
    await _ok(gw, body(tool_choice=choice, tools=[{"name": "get_weather", "input_schema": {"type": "object"}}]))
    expected = {"auto": "auto", "any": "required", "none": "none"}.get(choice["type"]) or \
        {"type": "function", "function": {"name": "get_weather"}}
    assert sent(up)["tool_choice"] == expected


def _image_blocks() -> list[dict]:
    return [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_1PX}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": JPEG_STUB}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
    ]


def _image_history() -> list[dict]:
    return [
        {"role": "user", "content": _image_blocks() + [{"type": "text", "text": "what is this?"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_s", "name": "Screenshot", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_s", "content": [
            {"type": "text", "text": "screenshot taken"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_1PX}}]}]},
    ]


async def test_b19_images_with_vision_backend(start_upstream, start_gateway):
    """B19: image blocks (base64 png/jpeg, url), also inside tool_result, are accepted when the backend has vision."""
    up, gw = await start_stack(start_upstream, start_gateway, vision=True)
    await _ok(gw, body(messages=_image_history()))
    urls = [p["image_url"]["url"] for m in sent_messages(up) if isinstance(m.get("content"), list)
            for p in m["content"] if p.get("type") == "image_url"]
    assert f"data:image/png;base64,{PNG_1PX}" in urls
    assert f"data:image/jpeg;base64,{JPEG_STUB}" in urls
    assert "https://example.com/cat.png" in urls
    assert len(urls) == 4  # the tool_result's image reaches the model too


@pytest.mark.parametrize("where", ["message", "tool_result"])
async def test_b19_images_without_vision_are_400(start_upstream, start_gateway, where):
    """B19: without vision, images → E(400, invalid_request_error) with a clear message; not a 500."""
    up, gw = await start_stack(start_upstream, start_gateway, vision=False)
    messages = _image_history()[:1] if where == "message" else [{"role": "user", "content": "hi"}] + _image_history()[1:]
    for stream in (False, True):
        resp = await gw.post("/v1/messages", body(messages=messages, stream=stream))
        data = await assert_error(resp, 400, "invalid_request_error")
        assert "image" in data["error"]["message"].lower()
        assert "set vision = true" in data["error"]["message"]  # the remedy for a remote backend
    assert up.received == []


async def test_b20_json_schema_output(stack):
    """B20: `output_config.format {type:"json_schema", schema}` → the returned text parses as JSON matching the schema."""
    up, gw = stack
    schema = {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"],
              "additionalProperties": False}

    def backend(req: dict) -> Script:
        # Like a real server: constrained decoding only when the request asks for it.
        fmt = req.get("response_format") or {}
        if fmt.get("type") == "json_schema" and fmt["json_schema"]["schema"] == schema:
            return TEXT('{"title": "Fix login redirect"}')
        return TEXT("Here is a title: Fix login redirect")

    up.default = backend
    data = await _ok(gw, body(system="Generate a title", output_config={"format": {"type": "json_schema",
                                                                                    "schema": schema}}))
    parsed = json.loads("".join(b["text"] for b in data["content"] if b["type"] == "text"))
    assert isinstance(parsed, dict) and isinstance(parsed["title"], str) and set(parsed) == {"title"}


async def test_b21_empty_text_blocks_tolerated(start_upstream, start_gateway):
    """B21: empty or whitespace-only text blocks in history → no 4xx or 5xx."""
    _, gw = await start_stack(start_upstream, start_gateway)
    await _ok(gw, body(system=[{"type": "text", "text": ""}, {"type": "text", "text": "  "}], messages=[
        {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "hello"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "   \n"}]},
        {"role": "user", "content": ""},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": [{"type": "text", "text": " "}]},
    ]))


NON_ASCII = "It is 25°C in Zürich 🌤️ — 東京は晴れ, naïve café ✓"


async def test_b22_non_ascii_round_trip(stack):
    """B22: non-ASCII text round-trips byte-exactly: request → backend prompt, backend output → response (JSON and SSE)."""
    up, gw = stack
    up.push(TEXT(NON_ASCII), TEXT(NON_ASCII, pieces=len(NON_ASCII)))
    data = await _ok(gw, body(system="Système: ünïcödé", messages=[{"role": "user", "content": NON_ASCII}]))
    assert data["content"] == [{"type": "text", "text": NON_ASCII}]
    assert sent_messages(up)[-1]["content"] == NON_ASCII
    assert sent_messages(up)[0]["content"] == "Système: ünïcödé"
    frames = await gw.stream(body(messages=[{"role": "user", "content": NON_ASCII}]))
    assert "".join(d["delta"]["text"] for n, d in frames if n == "content_block_delta") == NON_ASCII
    assert sent_messages(up)[-1]["content"] == NON_ASCII


async def test_b23_large_body_accepted(start_upstream, start_gateway):
    """B23: a request body of several MB (8 MB of tool_result text) is accepted (limit ≥ 32 MB)."""
    up, gw = await start_stack(start_upstream, start_gateway)
    assert gw.gateway.config.server.max_body_mb >= 32
    big = "x" * (8 * 1024 * 1024)
    await _ok(gw, body(messages=[
        {"role": "user", "content": "read the log"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Read",
                                           "input": {"path": "log"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": big}]},
    ]))
    assert next(m for m in sent_messages(up) if m["role"] == "tool")["content"] == big


async def test_b23_body_over_limit_is_413(start_upstream, start_gateway):
    """B23: above the configured body limit → E(413, request_too_large)."""
    up, gw = await start_stack(start_upstream, start_gateway, server={"max_body_mb": 1})
    resp = await gw.post("/v1/messages", body(messages=[{"role": "user", "content": "y" * (2 * 1024 * 1024)}]))
    await assert_error(resp, 413, "request_too_large")
    resp = await gw.post("/v1/messages/count_tokens", {"model": MODEL, "messages": [
        {"role": "user", "content": "y" * (2 * 1024 * 1024)}]})
    await assert_error(resp, 413, "request_too_large")
    assert up.received == []
    await _ok(gw, body())  # the gateway keeps serving
