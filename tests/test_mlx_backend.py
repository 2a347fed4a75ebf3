"""The embedded MLX backend, end to end over HTTP with the generated tiny demo model.

The model is generated once per test session (random weights, a tokenizer trained on the spot,
a few seconds of training on demo_model.generate.SCRIPTS), so the requests in SCRIPTS get known
answers: text, a tool call that needs repair, an invalid tool call, thinking. Everything runs
through real mlx-lm code; nothing is downloaded.
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from demo_model.generate import DEMO_SYSTEM, SCRIPTS
from tests.conftest import engine_idle
from tests.logtools import wait_records
from tests.support.net import free_port
from tests.support.sse import read_until_event

ROOT = Path(__file__).resolve().parent.parent


def _text(message: dict) -> str:
    return "".join(b["text"] for b in message["content"] if b["type"] == "text")


async def test_scripted_answer_json_and_sse_agree(mlx_gw):
    gw = await mlx_gw()
    status, msg = await gw.messages(SCRIPTS["hello"].request())
    assert status == 200, msg
    assert _text(msg) == SCRIPTS["hello"].answer
    assert msg["stop_reason"] == "end_turn"
    assert msg["usage"]["output_tokens"] > 5

    frames = await gw.stream(SCRIPTS["hello"].request())
    names = [n for n, _ in frames if n != "ping"]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    streamed = "".join(d["delta"]["text"] for n, d in frames if n == "content_block_delta")
    assert streamed == SCRIPTS["hello"].answer
    delta = next(d for n, d in frames if n == "message_delta")
    assert delta["delta"]["stop_reason"] == "end_turn"


async def test_count_tokens_matches_generation(mlx_gw):
    gw = await mlx_gw()
    body = SCRIPTS["weather"].request()
    resp = await gw.post("/v1/messages/count_tokens", {k: body[k] for k in ("model", "system", "messages", "tools")})
    counted = (await resp.json())["input_tokens"]
    status, msg = await gw.messages(body)
    assert status == 200
    assert counted == msg["usage"]["input_tokens"] + msg["usage"]["cache_read_input_tokens"]
    assert counted > 50  # system prompt + tool definitions + question, really tokenized


async def test_second_turn_of_a_session_reads_the_cache(mlx_gw):
    gw = await mlx_gw()
    headers = {"X-Claude-Code-Session-Id": "session-cache-1"}
    # Claude Code's billing header changes every request: stripped, it must not break the prefix.
    turn1 = SCRIPTS["hello"].request(system=[
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=1.0; cch=aaaa;"},
        {"type": "text", "text": DEMO_SYSTEM}])
    status, first = await gw.messages(turn1, **headers)
    assert status == 200
    prompt1 = first["usage"]["input_tokens"] + first["usage"]["cache_read_input_tokens"]

    turn2 = dict(turn1, system=[{"type": "text", "text": "x-anthropic-billing-header: cc_version=1.0; cch=bbbb;"},
                                {"type": "text", "text": DEMO_SYSTEM}],
                 messages=turn1["messages"] + [
                     {"role": "assistant", "content": first["content"]},
                     {"role": "system", "content": "Reminder: be brief."},  # mid-conversation system message
                     {"role": "user", "content": "And now count to five."}])
    status, second = await gw.messages(turn2, **headers)
    assert status == 200
    cached = second["usage"]["cache_read_input_tokens"]
    # Everything of turn 1 is reused except the few generation-prompt tokens after "assistant\n"
    # (the empty think block), which the template renders differently for a past answer.
    assert cached >= prompt1 - 8, (cached, prompt1)

    records = await wait_records(gw.log_path, 2)
    last = records[-1]
    assert last["cache_read_tokens"] == cached
    assert last["prefill_tps"] > 0 and last["decode_tps"] > 0 and last["peak_memory_mb"] > 0


async def test_side_request_of_the_session_keeps_the_conversation_cached(mlx_gw):
    gw = await mlx_gw()
    headers = {"X-Claude-Code-Session-Id": "session-side"}
    turn1 = SCRIPTS["count"].request()
    status, first = await gw.messages(turn1, **headers)
    prompt1 = first["usage"]["input_tokens"] + first["usage"]["cache_read_input_tokens"]
    # Claude Code's title request: same session, its own system prompt, a JSON schema.
    title = {"model": "claude-haiku-4-5", "max_tokens": 40, "temperature": 0,
             "system": "Generate a short title for this conversation.",
             "messages": [{"role": "user", "content": "Count to five."}],
             "output_config": {"format": {"type": "json_schema", "schema": {
                 "type": "object", "properties": {"title": {"type": "string", "maxLength": 12}},
                 "required": ["title"], "additionalProperties": False}}}}
    status, _ = await gw.messages(title, **headers)
    assert status == 200
    turn2 = dict(turn1, messages=turn1["messages"] + [{"role": "assistant", "content": first["content"]},
                                                      {"role": "user", "content": "Now backwards."}])
    status, second = await gw.messages(turn2, **headers)
    assert status == 200
    assert second["usage"]["cache_read_input_tokens"] >= prompt1 - 8


async def test_shared_system_and_tools_prefix_serves_a_new_session(mlx_gw):
    gw = await mlx_gw()
    status, _ = await gw.messages(SCRIPTS["weather"].request(), **{"X-Claude-Code-Session-Id": "a"})
    assert status == 200
    other = SCRIPTS["weather"].request(messages=[{"role": "user", "content": "Something else entirely."}],
                                       max_tokens=5)
    status, msg = await gw.messages(other, **{"X-Claude-Code-Session-Id": "b"})
    assert status == 200
    assert msg["usage"]["cache_read_input_tokens"] > 50  # the system prompt and the tool definitions


class ManualClock:
    """A clock that moves only when told: the TTL is crossed by the test, not by a sleep."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_prompt_cache_respects_ttl_and_byte_budget(mlx_gw):
    body = SCRIPTS["hello"].request()
    gw = await mlx_gw(cache_ttl_s=30)
    clock = ManualClock()
    gw.gateway.backends["m"].engine.cache.clock = clock
    status, _ = await gw.messages(body)
    clock.now += 29
    status, again = await gw.messages(body)
    assert again["usage"]["cache_read_input_tokens"] > 0  # within the TTL: reused
    clock.now += 31
    status, late = await gw.messages(body)
    assert status == 200 and late["usage"]["cache_read_input_tokens"] == 0  # expired

    small = await mlx_gw(cache_mb=0.001)  # 1 KB: no sequence of this model fits
    await small.messages(body)
    status, msg = await small.messages(body)
    assert status == 200 and msg["usage"]["cache_read_input_tokens"] == 0
    assert "prompt cache: 0 entries" in (await (await small.get("/health")).json())["backends"]["m"]["detail"]


async def test_session_id_from_metadata_user_id(mlx_gw):
    gw = await mlx_gw()
    meta = {"user_id": json.dumps({"device_id": "d", "session_id": "meta-session"})}
    status, first = await gw.messages(SCRIPTS["count"].request(metadata=meta))
    assert status == 200
    body = SCRIPTS["count"].request(metadata=meta, messages=[
        {"role": "user", "content": "Count to five."}, {"role": "assistant", "content": first["content"]},
        {"role": "user", "content": "Again."}])
    status, second = await gw.messages(body)
    assert status == 200
    assert second["usage"]["cache_read_input_tokens"] > first["usage"]["input_tokens"] // 2
    records = await wait_records(gw.log_path, 2)
    assert records[-1]["session_id"] == "meta-session"


async def test_template_that_rejects_late_system_messages(mlx_gw, demo_model, tmp_path):
    strict = tmp_path / "strict-model"
    shutil.copytree(demo_model, strict)
    cfg_path = strict / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = ("{%- for m in messages %}{%- if m.role == 'system' and not loop.first %}"
                            "{{ raise_exception('System messages must come first') }}{%- endif %}{%- endfor %}"
                            + cfg["chat_template"])
    cfg_path.write_text(json.dumps(cfg))
    gw = await mlx_gw(model=str(strict), model_mapping={"claude-*": str(strict)})
    body = SCRIPTS["hello"].request(max_tokens=4, messages=[
        {"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello!"},
        {"role": "system", "content": "Reminder: be brief."}, {"role": "user", "content": "Again."}])
    status, msg = await gw.messages(body)
    assert status == 200, msg  # the late system message was folded into the user turn, in place
    resp = await gw.post("/v1/messages/count_tokens", {k: body[k] for k in ("model", "system", "messages")})
    assert resp.status == 200
    assert (await resp.json())["input_tokens"] == msg["usage"]["input_tokens"] + msg["usage"]["cache_read_input_tokens"]


async def test_stop_sequence_cuts_the_text(mlx_gw):
    gw = await mlx_gw()
    status, msg = await gw.messages(SCRIPTS["count"].request(stop_sequences=["three"]))
    assert status == 200
    assert _text(msg) == "one, two, "
    assert msg["stop_reason"] == "stop_sequence" and msg["stop_sequence"] == "three"


async def test_max_tokens_stops_and_is_clamped_to_the_context(mlx_gw):
    gw = await mlx_gw()
    status, msg = await gw.messages(SCRIPTS["hello"].request(max_tokens=3))
    assert status == 200
    assert msg["stop_reason"] == "max_tokens" and msg["usage"]["output_tokens"] == 3
    # More than the demo model's whole context: clamped to what is left, not refused.
    status, msg = await gw.messages(SCRIPTS["hello"].request(max_tokens=200_000))
    assert status == 200 and _text(msg) == SCRIPTS["hello"].answer


async def test_prompt_longer_than_the_context_is_a_400(mlx_gw):
    gw = await mlx_gw()
    body = SCRIPTS["hello"].request(messages=[{"role": "user", "content": "file " * 70_000}])
    status, msg = await gw.messages(body)
    assert status == 400
    assert msg["error"]["type"] == "invalid_request_error"
    assert "prompt is too long" in msg["error"]["message"]


async def test_images_are_refused_with_the_remedy_for_mlx(mlx_gw):
    # `vision = true` changes nothing for the embedded backend, so the error must not suggest it.
    gw = await mlx_gw()
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}
    body = SCRIPTS["hello"].request(messages=[{"role": "user", "content": [image, {"type": "text", "text": "what?"}]}])
    status, msg = await gw.messages(body)
    assert status == 400 and msg["error"]["type"] == "invalid_request_error"
    assert "the embedded MLX backend does not take images" in msg["error"]["message"]
    assert "vision = true in its" not in msg["error"]["message"]


async def test_tool_call_is_parsed_and_repaired(mlx_gw):
    gw = await mlx_gw()
    status, msg = await gw.messages(SCRIPTS["weather"].request())
    assert status == 200
    assert msg["stop_reason"] == "tool_use"
    [call] = [b for b in msg["content"] if b["type"] == "tool_use"]
    # The model wrote {"city": "Paris", "days": "3",}: trailing comma and a string for an integer.
    assert call["name"] == "get_weather" and call["input"] == {"city": "Paris", "days": 3}
    assert call["id"].startswith("toolu_")


async def test_tool_call_streams_through_the_sdk(mlx_gw):
    gw = await mlx_gw()
    body = SCRIPTS["weather"].request()
    body["extra_body"] = {"temperature": body.pop("temperature")}  # this SDK version has no temperature argument
    async with gw.anthropic() as client, client.messages.stream(**body) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    [call] = [b for b in final.content if b.type == "tool_use"]
    assert call.name == "get_weather" and call.input == {"city": "Paris", "days": 3}


async def test_schema_violating_tool_call_is_never_a_tool_use(mlx_gw):
    gw = await mlx_gw()
    status, msg = await gw.messages(SCRIPTS["invalid"].request())
    assert status == 200
    assert not [b for b in msg["content"] if b["type"] == "tool_use"]
    assert msg["stop_reason"] == "end_turn"
    assert "get_weather" in _text(msg)  # the attempt is shown as text, not silently lost


async def test_thinking_blocks_when_asked(mlx_gw):
    gw = await mlx_gw()
    status, msg = await gw.messages(SCRIPTS["think"].request())
    assert status == 200
    kinds = [b["type"] for b in msg["content"]]
    assert kinds == ["thinking", "text"]
    assert msg["content"][0]["thinking"] == "The user wants thoughts first."
    assert msg["content"][0]["signature"]
    assert msg["content"][1]["text"] == "Here is my answer."
    frames = await gw.stream(SCRIPTS["think"].request())
    thinking = "".join(d["delta"].get("thinking", "") for n, d in frames if n == "content_block_delta")
    assert thinking == "The user wants thoughts first."


async def test_think_tags_removed_when_thinking_not_asked(mlx_gw):
    gw = await mlx_gw()
    # The model writes "<think>…</think>" (the tags split across several tokens) unasked.
    frames = await gw.stream(SCRIPTS["think_hidden"].request())
    starts = [d["content_block"]["type"] for n, d in frames if n == "content_block_start"]
    assert starts == ["text"]
    text = "".join(d["delta"]["text"] for n, d in frames if n == "content_block_delta")
    assert text == "Visible answer."


async def test_json_schema_output_always_matches(mlx_gw):
    gw = await mlx_gw()
    schema = {"type": "object", "properties": {"title": {"type": "string", "maxLength": 24},
                                               "done": {"type": "boolean"}},
              "required": ["title", "done"], "additionalProperties": False}
    for prompt in ("Summarize this session in a title.", "Say hello."):
        body = {"model": "claude-haiku-4-5", "max_tokens": 200, "temperature": 0,
                "messages": [{"role": "user", "content": prompt}],
                "output_config": {"format": {"type": "json_schema", "schema": schema}}}
        status, msg = await gw.messages(body)
        assert status == 200, msg
        assert msg["stop_reason"] == "end_turn"
        jsonschema.validate(json.loads(_text(msg)), schema)


async def test_concurrent_requests_are_served_together(mlx_gw):
    gw = await mlx_gw()
    long_body = SCRIPTS["forever"].request(max_tokens=6000, stream=True)
    resp = await gw.post("/v1/messages", long_body)
    assert resp.status == 200
    await read_until_event(resp.content, "content_block_delta")
    # While the long answer is still being generated, other requests are answered in full.
    health = await gw.get("/health")
    assert health.status == 200 and (await health.json())["backends"]["m"]["ok"]
    results = await asyncio.gather(*(gw.messages(SCRIPTS[name].request()) for name in ("hello", "count", "think")))
    assert [r[0] for r in results] == [200, 200, 200]
    assert _text(results[0][1]) == SCRIPTS["hello"].answer
    assert _text(results[1][1]) == SCRIPTS["count"].answer
    # Served together, not one after another: the long answer is still being generated.
    detail = (await (await gw.get("/health")).json())["backends"]["m"]["detail"]
    assert "active requests: 1" in detail
    for _ in range(3):  # and it keeps streaming
        await read_until_event(resp.content, "content_block_delta")
    resp.close()


async def test_client_disconnect_cancels_generation(mlx_gw):
    gw = await mlx_gw()
    body = SCRIPTS["forever"].request(max_tokens=6000, stream=True)
    resp = await gw.post("/v1/messages", body)
    await read_until_event(resp.content, "content_block_delta")
    resp.close()  # the client goes away mid-answer
    assert "active requests: 0" in await engine_idle(gw)
    status, msg = await gw.messages(SCRIPTS["hello"].request())
    assert status == 200 and _text(msg) == SCRIPTS["hello"].answer


EOS_BIAS = {"start": 24, "factor": 1.25}
# Tokens past `start` by which the EOS token outweighs all others together (factor^n ≥ 2).
EOS_HORIZON = math.ceil(math.log(2) / math.log(EOS_BIAS["factor"]))


async def test_eos_bias_ends_an_answer_that_would_run_to_max_tokens(mlx_gw):
    """`eos_bias`: SCRIPTS["forever"] never ends by itself and runs to max_tokens; with the bias the
    same answer ends (end_turn) soon after `start`, and up to there it is the same text."""
    body = SCRIPTS["forever"].request(max_tokens=300)
    status, unbiased = await (await mlx_gw()).messages(body)
    assert status == 200 and unbiased["stop_reason"] == "max_tokens", unbiased
    assert unbiased["usage"]["output_tokens"] == 300

    gw = await mlx_gw(eos_bias=EOS_BIAS)
    status, msg = await gw.messages(body)
    assert status == 200 and msg["stop_reason"] == "end_turn", msg
    # Greedy: nothing changes before `start`, and EOS is the most likely token by the horizon.
    assert EOS_BIAS["start"] < msg["usage"]["output_tokens"] <= EOS_BIAS["start"] + EOS_HORIZON, msg["usage"]
    assert _text(msg) and _text(unbiased).startswith(_text(msg))

    # Sampled and streamed (what Claude Code sends): the answer ends within a few tokens of the horizon.
    frames = await gw.stream(dict(body, temperature=1.0))
    delta = next(d for n, d in frames if n == "message_delta")
    assert delta["delta"]["stop_reason"] == "end_turn", delta
    assert delta["usage"]["output_tokens"] <= EOS_BIAS["start"] + EOS_HORIZON + 16, delta
    # An answer that ends before `start` is left alone.
    status, hello = await gw.messages(SCRIPTS["hello"].request())
    assert status == 200 and _text(hello) == SCRIPTS["hello"].answer and hello["stop_reason"] == "end_turn"
    records = await wait_records(gw.log_path, 4)  # both gateways write this log
    assert [r["stop_reason"] for r in records] == ["max_tokens", "end_turn", "end_turn", "end_turn"]


async def test_mapped_second_model_loads_on_first_use_and_lru_unloads(mlx_gw, demo_model, tmp_path):
    other = tmp_path / "other-model"
    shutil.copytree(demo_model, other)
    gw = await mlx_gw(model_mapping={"claude-haiku-*": str(other), "claude-*": str(demo_model)},
                      max_resident_models=1)
    status, msg = await gw.messages(SCRIPTS["hello"].request(model="claude-haiku-4-5"))
    assert status == 200 and _text(msg) == SCRIPTS["hello"].answer
    detail = (await (await gw.get("/health")).json())["backends"]["m"]["detail"]
    assert f"resident: {other};" in detail  # the default model was unloaded to make room
    status, msg = await gw.messages(SCRIPTS["count"].request(model="claude-sonnet-4-5"))
    assert status == 200 and _text(msg) == SCRIPTS["count"].answer
    detail = (await (await gw.get("/health")).json())["backends"]["m"]["detail"]
    assert f"resident: {demo_model};" in detail
    models = (await (await gw.get("/v1/models")).json())["data"]
    assert {str(demo_model), str(other)} <= {m["id"] for m in models}


def test_missing_model_offline_exits_with_one_clear_paragraph(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text('[log]\nrequests = ""\n[routing]\ndefault = "local"\n[backends.local]\ntype = "mlx"\n'
                   'model = "no-such-org/no-such-model-4bit"\n')
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg),
                           "--port", str(free_port())], check=False, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.strip().splitlines()[-1]
    assert "no-such-org/no-such-model-4bit" in err
    assert "--demo" in err and "local" in err
    assert "Traceback" not in proc.stderr


def test_serve_demo_answers_over_http(demo_model, tmp_path):
    port = free_port()
    env = dict(os.environ, CLAUDE_GATEWAY_DEMO_DIR=str(demo_model.parent),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # Run from a scratch directory: the demo config logs to ./logs/requests.jsonl.
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--demo", "--port", str(port)],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if "listening on" in line:
                break
        else:
            pytest.fail("serve --demo never started listening")
        import anthropic
        client = anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key="none", max_retries=0)
        body = SCRIPTS["hello"].request()
        body["extra_body"] = {"temperature": body.pop("temperature")}
        msg = client.messages.create(**body)
        assert msg.content[0].text == SCRIPTS["hello"].answer
        models = client.models.list()
        assert models.data
        assert (tmp_path / "logs" / "requests.jsonl").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.parametrize("value, message", [
    ("{ start = 256 }", "'backends.l.eos_bias' needs both 'start' and 'factor'"),
    ("{ start = 256, factor = 1.01, limit = 9 }", "'backends.l.eos_bias' has unknown key(s) limit"),
    ("{ start = -1, factor = 1.01 }", "'backends.l.eos_bias.start' must be a whole number"),
    ("{ start = 2.5, factor = 1.01 }", "'backends.l.eos_bias.start' must be a whole number"),
    ("{ start = 256, factor = 1 }", "'backends.l.eos_bias.factor' must be a number above 1"),
    ("{ start = 256, factor = 0.9 }", "'backends.l.eos_bias.factor' must be a number above 1"),
    ("{ start = 256, factor = inf }", "'backends.l.eos_bias.factor' must be a number above 1"),
    ("{ start = 256, factor = \"fast\" }", "'backends.l.eos_bias.factor' must be a number above 1"),
    ("[256, 1.01]", "'backends.l.eos_bias' must be a table"),
])
def test_invalid_eos_bias_is_rejected_at_load(value, message):
    from gateway.config import ConfigError, parse_config
    with pytest.raises(ConfigError) as err:
        parse_config(f'[backends.l]\ntype = "mlx"\nmodel = "x/y"\neos_bias = {value}\n')
    assert str(err.value).startswith("config:4: " + message), err.value  # the file line, the key, the rule


def test_eos_bias_is_off_unless_configured():
    from gateway.config import parse_config
    cfg = parse_config('[backends.l]\ntype = "mlx"\nmodel = "x/y"\n'
                       '[backends.b]\ntype = "mlx"\nmodel = "x/y"\neos_bias = { start = 0, factor = 2 }\n')
    assert cfg.backends["l"].options.eos_bias is None
    assert (cfg.backends["b"].options.eos_bias.start, cfg.backends["b"].options.eos_bias.factor) == (0, 2.0)


def test_mlx_only_keys_are_rejected_on_remote_backends():
    from gateway.config import ConfigError, parse_config
    with pytest.raises(ConfigError, match="max_batch' only applies to type = \"mlx\""):
        parse_config('[backends.r]\ntype = "openai"\nbase_url = "http://127.0.0.1:1"\nmax_batch = 4\n')
    with pytest.raises(ConfigError, match="eos_bias' only applies to type = \"mlx\""):
        parse_config('[backends.r]\ntype = "openai"\nbase_url = "http://127.0.0.1:1"\n'
                     'eos_bias = { start = 256, factor = 1.01 }\n')
    with pytest.raises(ConfigError, match="tool_parser' must be one of"):
        parse_config('[backends.l]\ntype = "mlx"\nmodel = "x/y"\ntool_parser = "nope"\n')

