"""Tool calls from remote servers without a parser (`tool_parser` on openai/vllm/llamacpp backends), and
schema repair of the calls a server did parse: over real HTTP against scripted upstreams."""
from __future__ import annotations

import time

import pytest

from gateway.config import ConfigError, parse_config
from tests.conftest import gateway_config
from tests.upstream import TOOL, Script

MODEL = "claude-sonnet-4-6"
TOOLS = [
    {"name": "get_weather", "description": "Weather for a city",
     "input_schema": {"type": "object", "properties": {"location": {"type": "string"}, "days": {"type": "integer"}},
                      "required": ["location"]}},
    {"name": "Bash", "description": "Run a command",
     "input_schema": {"type": "object", "properties": {"command": {"type": "string"},
                                                       "timeout": {"type": "number"}},
                      "required": ["command"]}},
]


def body(stream: bool = False, **kw) -> dict:
    out = {"model": MODEL, "max_tokens": 500, "stream": stream, "tools": TOOLS,
           "messages": [{"role": "user", "content": "weather in Paris?"}]}
    out.update(kw)
    return out


def pieces(text: str, size: int) -> Script:
    """`text` as plain content, in pieces of `size` characters (1: a marker split across every chunk)."""
    return Script(deltas=[{"content": text[i:i + size]} for i in range(0, len(text), size)])


@pytest.fixture(params=["openai", "vllm", "llamacpp"])
async def make(request, start_upstream, start_gateway):
    """Factory: a gateway in front of a scripted upstream of each type, with the given tool_parser."""
    async def start(tool_parser: str | None = None):
        up = await start_upstream(request.param)
        backend = {"type": request.param, "base_url": up.url, "model": "m", "model_mapping": {"claude-*": "m"}}
        if tool_parser is not None:
            backend["tool_parser"] = tool_parser
        gw = await start_gateway(gateway_config({"up": backend}, default="up"))
        return up, gw
    return start


async def answer(gw, stream: bool, **kw) -> dict:
    """The message as the Anthropic SDK assembles it, streamed or not."""
    client = gw.anthropic()
    if stream:
        async with client.messages.stream(**{k: v for k, v in body(**kw).items() if k != "stream"}) as s:
            return (await s.get_final_message()).model_dump()
    return (await client.messages.create(**body(**kw))).model_dump()


def tool_uses(msg: dict) -> list[dict]:
    return [b for b in msg["content"] if b["type"] == "tool_use"]


def text_of(msg: dict) -> str:
    return "".join(b["text"] for b in msg["content"] if b["type"] == "text")


@pytest.mark.parametrize("stream", [False, True])
async def test_hermes_text_call_with_damaged_json_becomes_tool_use(make, stream):
    up, gw = await make("hermes")
    # Trailing comma, single quotes and a number as a string: repaired against input_schema.
    up.push(pieces("Let me check.\n<tool_call>\n{'name': 'get_weather', 'arguments': "
                   "{'location': 'Paris', 'days': '3',}}\n</tool_call>", 1))
    msg = await answer(gw, stream)
    assert text_of(msg) == "Let me check."
    (call,) = tool_uses(msg)
    assert call["name"] == "get_weather" and call["input"] == {"location": "Paris", "days": 3}
    assert call["id"].startswith("toolu_")
    assert msg["stop_reason"] == "tool_use"


@pytest.mark.parametrize("stream", [False, True])
async def test_auto_parses_qwen3_coder_xml_and_mistral(make, stream):
    up, gw = await make()  # no tool_parser: the remote default, auto
    up.push(pieces("<tool_call>\n<function=Bash>\n<parameter=command>\nls -la | grep '<x>'\n</parameter>\n"
                   "<parameter=timeout>\n30\n</parameter>\n</function>\n</tool_call>", 3),
            pieces('[TOOL_CALLS][{"name": "get_weather", "arguments": {"location": "Oslo"}}]', 2))
    msg = await answer(gw, stream)
    (call,) = tool_uses(msg)
    assert call["name"] == "Bash" and call["input"] == {"command": "ls -la | grep '<x>'", "timeout": 30}
    assert text_of(msg) == ""
    msg = await answer(gw, stream)
    assert [(c["name"], c["input"]) for c in tool_uses(msg)] == [("get_weather", {"location": "Oslo"})]


ORDINARY = ('Here is the JSON you asked for:\n{"name": "get_weather", "arguments": {"location": "Paris"}}\n'
            "and a template line: <function=Bash> is how Qwen writes calls. Done. ")


@pytest.mark.parametrize("stream", [False, True])
async def test_auto_leaves_ordinary_text_alone(make, stream):
    """Bare JSON naming a real tool and a bare <function=…>: auto must not turn them into calls."""
    up, gw = await make()
    up.push(pieces(ORDINARY, 1))
    msg = await answer(gw, stream)
    assert tool_uses(msg) == []
    assert text_of(msg) == ORDINARY  # every character, trailing space included
    assert msg["stop_reason"] == "end_turn"


@pytest.mark.parametrize("stream", [False, True])
async def test_unrepairable_text_call_is_shown_as_text(make, stream):
    up, gw = await make("hermes")
    raw = '<tool_call>\n{"name": "get_weather", "arguments": {"days": 2}}\n</tool_call>'  # location missing
    up.push(pieces("Trying: " + raw, 4))
    msg = await answer(gw, stream)
    assert tool_uses(msg) == []
    assert text_of(msg) == "Trying: " + raw
    assert msg["stop_reason"] == "end_turn"


async def test_unknown_tool_in_text_stays_text(make):
    up, gw = await make()
    raw = '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>'
    up.push(pieces(raw, 5))
    msg = await answer(gw, False)
    assert tool_uses(msg) == [] and text_of(msg) == raw


async def test_tool_parser_none_keeps_text(make):
    up, gw = await make("none")
    raw = '<tool_call>{"name": "get_weather", "arguments": {"location": "Paris"}}</tool_call>'
    up.push(pieces(raw, 5))
    msg = await answer(gw, True)
    assert tool_uses(msg) == [] and text_of(msg) == raw


@pytest.mark.parametrize("stream", [False, True])
async def test_server_parsed_call_is_repaired_against_schema(make, stream):
    up, gw = await make("none")  # repair applies whatever the text parser
    up.push(Script(deltas=[{"tool_calls": [{"index": 0, "id": "call_9", "type": "function",
                                            "function": {"name": "get_weather", "arguments": ""}}]},
                           {"tool_calls": [{"index": 0, "function": {"arguments": '{"location": "Rome", '}}]},
                           {"tool_calls": [{"index": 0, "function": {"arguments": '"days": "5",}'}}]}],
                   finish_reason="tool_calls"))
    msg = await answer(gw, stream)
    (call,) = tool_uses(msg)
    assert call["input"] == {"location": "Rome", "days": 5}
    assert msg["stop_reason"] == "tool_use"


@pytest.mark.parametrize("stream", [False, True])
async def test_server_parsed_invalid_call_becomes_text(make, stream):
    up, gw = await make()
    up.push(TOOL("get_weather", {"days": "many"}))  # required location missing, days not a number
    msg = await answer(gw, stream)
    assert tool_uses(msg) == []
    assert msg["stop_reason"] == "end_turn"
    shown = text_of(msg)
    assert "get_weather" in shown and '"days": "many"' in shown


async def test_valid_server_call_streams_unchanged(make):
    up, gw = await make()
    args = {"location": "Paris", "days": 2}
    up.push(TOOL("get_weather", args, lead="Checking. "))
    msg = await answer(gw, True)
    assert text_of(msg) == "Checking. "
    assert [c["input"] for c in tool_uses(msg)] == [args]
    sent = up.received[-1]
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather", "Bash"]


async def test_text_call_without_tools_in_request_is_text(make):
    up, gw = await make("hermes")
    raw = '<tool_call>{"name": "get_weather", "arguments": {"location": "Paris"}}</tool_call>'
    up.push(pieces(raw, 7))
    msg = await answer(gw, False, tools=[])
    assert tool_uses(msg) == [] and text_of(msg) == raw


def test_tool_parser_config_on_every_type():
    for kind in ("openai", "vllm", "llamacpp"):
        cfg = parse_config(f'[backends.b]\ntype = "{kind}"\nbase_url = "http://127.0.0.1:1"\ntool_parser = "auto"\n')
        assert cfg.backends["b"].tool_parser == "auto"
    with pytest.raises(ConfigError, match=r"config:4: 'backends.b.tool_parser' must be one of .*auto"):
        parse_config('[backends.b]\ntype = "openai"\nbase_url = "http://127.0.0.1:1"\ntool_parser = "xml"\n')



@pytest.mark.parametrize("stream", [False, True])
async def test_call_after_inline_thinking(make, stream):
    """`<think>` is split off first: a call inside reasoning is not a call, the one after it is."""
    up, gw = await make()
    up.push(pieces('<think>maybe <tool_call>{"name": "Bash", "arguments": {"command": "no"}}</tool_call>'
                   '</think>Sure.<tool_call>{"name": "Bash", "arguments": {"command": "ls"}}</tool_call>', 6))
    msg = await answer(gw, stream, max_tokens=2000, thinking={"type": "enabled", "budget_tokens": 1024})
    assert [b["type"] for b in msg["content"]] == ["thinking", "text", "tool_use"]
    assert '"command": "no"' in msg["content"][0]["thinking"]
    assert msg["content"][2]["input"] == {"command": "ls"}


async def test_llama3_json_parser_takes_bare_json(make):
    up, gw = await make("llama3_json")
    up.push(pieces('{"name": "get_weather", "parameters": {"location": "Lima", "days": "2"}}', 4))
    msg = await answer(gw, True)
    assert [(c["name"], c["input"]) for c in tool_uses(msg)] == [("get_weather", {"location": "Lima", "days": 2})]


async def test_cut_call_at_max_tokens_is_text(make):
    """Generation stopped mid-call: the call may be truncated, so it is not completed into a tool_use."""
    up, gw = await make()
    raw = '<tool_call>{"name": "get_weather", "arguments": {"location": "Par'
    up.push(Script(deltas=[{"content": raw}], finish_reason="length"))
    msg = await answer(gw, False)
    assert tool_uses(msg) == [] and text_of(msg) == raw and msg["stop_reason"] == "max_tokens"


async def test_mlx_accepts_auto(mlx_gw):
    """On the embedded backend `auto` means what an absent tool_parser means: from the chat template."""
    gw = await mlx_gw(tool_parser="auto")
    status, msg = await gw.messages({"model": MODEL, "max_tokens": 8, "tools": TOOLS,
                                     "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and msg["type"] == "message", msg


async def test_long_whitespace_run_with_tools_is_linear(start_upstream, start_gateway):
    """3 MB of whitespace after a partial marker, in 1 KB chunks, with tools offered: the parser holds
    the run as pieces instead of rescanning it per chunk."""
    up = await start_upstream("openai")
    gw = await start_gateway(gateway_config({"up": {"type": "openai", "base_url": up.url, "model": "m",
                                                    "model_mapping": {"claude-*": "m"}}}, default="up"))
    up.push(Script(deltas=[{"content": "hello <tool"}] + [{"content": " " * 1000}] * 3000 + [{"content": "x"}]))
    started = time.monotonic()
    msg = await answer(gw, False)
    assert time.monotonic() - started < 9  # about 4 s here; the quadratic scan took 16
    assert text_of(msg) == "hello <tool" + " " * 3_000_000 + "x"
