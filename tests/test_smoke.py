from tests.upstream import TEXT, TOOL, THINK


async def test_text_roundtrip(stack):
    up, gw = stack
    up.push(TEXT("Hello there!"))
    status, body = await gw.messages({"model": "claude-opus-4-8", "max_tokens": 100,
                                      "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200, body
    assert body["content"] == [{"type": "text", "text": "Hello there!"}]
    assert body["stop_reason"] == "end_turn"
    assert body["model"] == "claude-opus-4-8"


async def test_stream_tool(stack):
    up, gw = stack
    up.push(TOOL("get_weather", {"location": "Paris"}, lead="Let me check."))
    frames = await gw.stream({"model": "claude-opus-4-8", "max_tokens": 100,
                              "messages": [{"role": "user", "content": "hi"}]})
    names = [n for n, _ in frames if n != "ping"]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    starts = [d["content_block"]["type"] for n, d in frames if n == "content_block_start"]
    assert starts == ["text", "tool_use"]


async def test_sdk_thinking(stack):
    up, gw = stack
    up.push(THINK("R", "T"))
    client = gw.anthropic()
    async with client.messages.stream(model="claude-opus-4-8", max_tokens=2000,
                                      thinking={"type": "enabled", "budget_tokens": 1024},
                                      messages=[{"role": "user", "content": "hi"}]) as s:
        msg = await s.get_final_message()
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.content[0].thinking == "R" and msg.content[1].text == "T"
