"""The context budget over real HTTP: a scripted upstream with a 32k window that refuses anything
larger (as vLLM does), driven through a long tool-using session the way Claude Code drives one."""
from __future__ import annotations

import json

import pytest

from gateway.config import ConfigError, parse_config
from gateway.context_budget import CLEAR_STEP, DESCRIPTION_CHARS
from tests.compat_helpers import MODEL, backend_table
from tests.conftest import gateway_config
from tests.logtools import wait_records
from tests.upstream import TEXT, TOOL, Script

WINDOW = 32768
RESULT = "line of a file that the model read, with some code in it: x = compute(a, b)\n" * 160  # ~3k tokens
SYSTEM = "You are a coding agent. Follow the project's conventions. " * 140


def tools() -> list[dict]:
    """Eight tools whose descriptions are Claude Code sized (a summary, then pages of usage notes)."""
    out = []
    for i in range(8):
        notes = "\n".join(f"- Usage note {j} for tool {i}: prefer absolute paths and quote them." for j in range(70))
        out.append({"name": f"Tool{i}" if i else "Read",
                    "description": f"Tool {i} does one job well.\n\nUsage notes:\n{notes}",
                    "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}},
                                     "required": ["file_path"]}})
    return out


class Session:
    """A client keeping the whole history, as Claude Code does, answering each tool call with RESULT."""

    def __init__(self, gw, up):
        self.gw, self.up = gw, up
        self.messages: list[dict] = [{"role": "user", "content": "Read every file of the project."}]
        self.tools = tools()

    async def turn(self, i: int, stream: bool = False) -> tuple[int, dict]:
        self.up.push(TOOL("Read", {"file_path": f"/src/file{i}.py"}))
        body = {"model": MODEL, "max_tokens": 32000, "system": SYSTEM, "tools": self.tools,
                "messages": self.messages, "thinking": {"type": "enabled", "budget_tokens": 2000}}
        if stream:
            frames = await self.gw.stream(body)
            errors = [d for name, d in frames if name == "error"]
            if errors:
                return 500, errors[0]
            starts = [d["content_block"] for name, d in frames if name == "content_block_start"]
            msg = {"content": [dict(s, input=json.loads(self._args(frames, k)) if s["type"] == "tool_use" else None)
                               for k, s in enumerate(starts)]}
            status = 200
        else:
            status, msg = await self.gw.messages(body)
        if status != 200:
            return status, msg
        (use,) = [b for b in msg["content"] if b["type"] == "tool_use"]
        thinking = {"type": "thinking", "thinking": f"Reading file {i} next, because " + "reason " * 250,
                    "signature": f"sig{i}"}
        self.messages += [
            {"role": "assistant", "content": [thinking, {"type": "tool_use", "id": use["id"], "name": "Read",
                                                         "input": use["input"]}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use["id"], "content": RESULT}]}]
        return status, msg

    @staticmethod
    def _args(frames, index: int) -> str:
        return "".join(d["delta"]["partial_json"] for name, d in frames
                       if name == "content_block_delta" and d["index"] == index
                       and d["delta"]["type"] == "input_json_delta")


async def start(start_upstream, start_gateway, tmp_path, flavor: str = "vllm", **backend):
    up = await start_upstream(flavor, context=WINDOW)
    up.enforce_context = True
    log = tmp_path / "requests.jsonl"
    table = backend_table(up, **({"context_window": WINDOW} if flavor != "vllm" else {}), **backend)
    gw = await start_gateway(gateway_config({"up": table}, default="up", log_path=str(log)))
    return up, gw, log


def prefix_breaks(received: list[dict]) -> list[int]:
    """Turns whose prompt does not start with the previous turn's prompt (the prefix cache misses)."""
    breaks = []
    for t in range(1, len(received)):
        before, now = received[t - 1], received[t]
        same = (before["tools"] == now["tools"]
                and now["messages"][:len(before["messages"])] == before["messages"])
        if not same:
            breaks.append(t)
    return breaks


# The window holds about four results beside the rest: keeping 3, the grid narrows to every second
# turn; keeping 1, it has room for its full step (llama.cpp counts its rendered template, which
# grows faster, so the room and the step shrink late in the session).
@pytest.mark.parametrize("flavor, keep, step", [("vllm", 3, 2), ("openai", 1, CLEAR_STEP), ("llamacpp", 1, 3)])
async def test_forty_turns_fit_a_32k_window_with_clear_tool_results(start_upstream, start_gateway, tmp_path, flavor,
                                                                     keep, step):
    up, gw, log = await start(start_upstream, start_gateway, tmp_path, flavor, context_edits=["clear_tool_results"],
                              keep_tool_results=keep)
    session = Session(gw, up)
    for i in range(40):
        status, msg = await session.turn(i, stream=i % 2 == 1)
        assert status == 200, (i, msg)
    records = await wait_records(log, 40)
    assert [r["status"] for r in records] == [200] * 40
    edits = [{e["edit"]: e for e in r.get("context_edits", [])} for r in records]
    # Turns that fit went out untouched: full descriptions, no context_edits field at all.
    first_edit = next(t for t, e in enumerate(edits) if e)
    assert first_edit >= 2 and all("context_edits" not in r for r in records[:first_edit])
    assert all(len(t["description"]) > DESCRIPTION_CHARS for t in
               (x["function"] for x in up.received[first_edit - 1]["tools"]))
    # The edits came in order, mildest first, each reporting what it saved.
    names = [list(e) for e in edits[first_edit:]]
    assert names[0] == ["shorten_tool_descriptions"]
    assert ["shorten_tool_descriptions", "drop_thinking", "clear_tool_results"] in names
    for e in edits:
        for entry in e.values():
            assert entry["tokens_saved"] > 0, entry
    assert edits[-1]["shorten_tool_descriptions"]["tools"] == 8
    assert all(e["clear_tool_results"]["kept"] >= keep for e in edits if "clear_tool_results" in e)
    # Every prompt the upstream got fits its window (it would have answered 400 otherwise).
    assert max(up.prompt_sizes) <= WINDOW
    # The kept prefix is stable: the cache misses once per edit step, and tool results are cleared
    # `step` at a time, not one per turn.
    clearing = sum(1 for e in edits if "clear_tool_results" in e)
    breaks = prefix_breaks(up.received)
    assert clearing >= 20
    assert len(breaks) <= 3 + clearing // step + 1, breaks


async def test_without_opt_in_the_session_ends_in_prompt_too_long(start_upstream, start_gateway, tmp_path):
    """Lossless edits only: they buy some turns, then the 400 that makes Claude Code compact."""
    up, gw, log = await start(start_upstream, start_gateway, tmp_path)
    session = Session(gw, up)
    statuses = []
    for i in range(20):
        status, msg = await session.turn(i)
        statuses.append(status)
        if status != 200:
            assert status == 400 and msg["type"] == "error", msg
            assert msg["error"]["type"] == "invalid_request_error"
            assert msg["error"]["message"].startswith("prompt is too long"), msg
            break
    assert statuses[-1] == 400 and statuses[:-1] == [200] * (len(statuses) - 1)
    records = await wait_records(log, len(statuses))
    kinds = {e["edit"] for r in records for e in r.get("context_edits", [])}
    assert kinds == {"shorten_tool_descriptions", "drop_thinking"}
    # Lossless edits bought turns the bare window would not have held.
    plain = next(t for t, r in enumerate(records) if r.get("context_edits"))
    assert len(statuses) - 1 > plain + 1
    assert len(up.received) == len(statuses) - 1  # the oversized prompt never reached the upstream
    # The upstream never saw a placeholder: tool results are cut only where a backend opts in.
    assert all(m["content"] == RESULT for m in up.received[-1]["messages"] if m["role"] == "tool")


async def test_a_request_that_fits_is_sent_byte_for_byte(start_upstream, start_gateway, tmp_path):
    up, gw, log = await start(start_upstream, start_gateway, tmp_path, context_edits=["clear_tool_results"])
    session = Session(gw, up)
    for i in range(2):
        assert (await session.turn(i))[0] == 200
    sent = up.received[-1]
    assert [t["function"]["description"] for t in sent["tools"]] == [t["description"] for t in session.tools[:]]
    assert sum(1 for m in sent["messages"] if m["role"] == "assistant" and m.get("reasoning_content")) == 1
    records = await wait_records(log, 2)
    assert all("context_edits" not in r for r in records)


async def test_truly_too_long_is_the_400_even_with_every_edit(start_upstream, start_gateway, tmp_path):
    up, gw, log = await start(start_upstream, start_gateway, tmp_path, context_edits=["clear_tool_results"])
    body = {"model": MODEL, "max_tokens": 1000, "messages": [{"role": "user", "content": "word " * 40000}]}
    status, msg = await gw.messages(body)
    assert status == 400 and msg["error"]["message"].startswith("prompt is too long"), msg
    assert up.received == []
    (record,) = await wait_records(log, 1)
    assert record["status"] == 400 and "context_edits" not in record


async def test_fallback_on_overflow_sends_the_prompt_to_the_larger_window(start_upstream, start_gateway, tmp_path):
    small = await start_upstream("vllm", context=8192)
    small.enforce_context = True
    big = await start_upstream("vllm", context=131072)
    big.enforce_context = True
    big.push(TEXT("from the big one"))
    log = tmp_path / "requests.jsonl"
    toml = gateway_config({"small": backend_table(small, fallback_on_overflow="big"),
                           "big": {"type": "vllm", "base_url": big.url, "model": "big-model"}},
                          default="small", log_path=str(log))
    gw = await start_gateway(toml)
    body = {"model": MODEL, "max_tokens": 1000, "tools": tools(),
            "messages": [{"role": "user", "content": "word " * 30000}]}
    status, msg = await gw.messages(body)
    assert status == 200 and msg["content"][0]["text"] == "from the big one", msg
    assert small.received == [] and big.received[0]["model"] == "big-model"
    # Sent unedited: the larger window holds it as it is.
    assert [t["function"]["description"] for t in big.received[0]["tools"]] == [t["description"] for t in tools()]
    small.push(Script(deltas=[{"content": "small answer"}]))
    status, msg = await gw.messages({"model": MODEL, "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and msg["content"][0]["text"] == "small answer"
    first, second = await wait_records(log, 2)
    assert first["backend"] == "big" and first["backend_model"] == "big-model"
    assert first["fallback"] == {"from": "small", "to": "big", "reason": "context_overflow", "context_window": 8192}
    assert second["backend"] == "small" and "fallback" not in second


@pytest.mark.parametrize("table, message", [
    ('context_edits = ["clear_everything"]', "context_edits' entries must be one of clear_tool_results"),
    ('fallback_on_overflow = "nowhere"', "fallback_on_overflow' must name another backend"),
    ('fallback_on_overflow = "a"', "fallback_on_overflow' must name another backend"),
    ("keep_tool_results = -1", "keep_tool_results' must be 0 or more"),
])
def test_budget_config_errors_name_the_key(table, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(f'[backends.a]\ntype = "openai"\nbase_url = "http://127.0.0.1:1"\n{table}\n')
