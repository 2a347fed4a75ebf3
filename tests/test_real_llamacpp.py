"""The real-server tier: a real llama.cpp `llama-server` behind the gateway.

llama-server is built once per machine from the llama.cpp source vendored in the llama-cpp-python
sdist (tests/real_servers/llamacpp_build.py; minutes, cached by version), and serves the generated
demo model written as GGUF on the spot (tests/real_servers/gguf_export.py). These tests skip,
saying why, where no C++ compiler or cmake is present. Every item of the real-server findings runs
here against the real server; tests/test_backend_quirks.py has the vLLM-wire-format ones.
"""
from __future__ import annotations

import asyncio
import json
import zlib
from pathlib import Path

import pytest

from demo_model.generate import (
    DEMO_SYSTEM,
    SCRIPTS,
    WEATHER_TOOL,
)
from tests import test_e2e_claude_code as e2e
from tests.conftest import gateway_config
from tests.real_servers.gguf_export import EXPORT_VERSION, export_gguf
from tests.real_servers.llamacpp import LlamaServer, start_llama_server
from tests.real_servers.llamacpp_build import (
    BuildUnavailable,
    LlamaCpp,
    cache_root,
    ensure_llama_server,
)
from tests.logtools import wait_records
from tests.sse_checks import open_stream
from tests.test_e2e_claude_code import _claude_env, _log_lines, _run_claude

CTX, SLOTS = 8192, 2  # per slot: 4096
claude_bin = e2e.claude_bin  # the pinned Claude Code CLIs, installed as the end-to-end tests install them
SLOT_CTX = CTX // SLOTS
LATE_SYSTEM = [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello!"},
               {"role": "system", "content": "Reminder: be brief."}, {"role": "user", "content": "Count to five."}]
BILLING = "x-anthropic-billing-header: cc_version=2.1.197.d71; cc_entrypoint=sdk-cli; cch={};"


@pytest.fixture(scope="session")
def llama_cpp() -> LlamaCpp:
    """The cached llama-server build (built here on first use)."""
    try:
        return ensure_llama_server()
    except BuildUnavailable as exc:
        pytest.skip(f"real llama-server tier: {exc}")


@pytest.fixture(scope="session")
def demo_gguf(llama_cpp, demo_model_dir) -> Path:
    model = demo_model_dir
    out = cache_root() / "models"
    out.mkdir(parents=True, exist_ok=True)
    return export_gguf(model, out / f"{model.name}.v{EXPORT_VERSION}.gguf", llama_cpp.source)


def _server(llama_cpp, demo_gguf, tmp_path_factory, name: str, **kw) -> LlamaServer:
    log = tmp_path_factory.mktemp(name) / "llama-server.log"
    return start_llama_server(llama_cpp.server, demo_gguf, log, extra=("--alias", "demo", *kw.pop("extra", ())),
                              **kw)


@pytest.fixture(scope="module")
def llama(llama_cpp, demo_gguf, tmp_path_factory):
    """llama-server with the demo model's own template (it renders a late system message), 2 slots."""
    server = _server(llama_cpp, demo_gguf, tmp_path_factory, "llama", ctx=CTX, parallel=SLOTS)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def strict_llama(llama_cpp, demo_gguf, tmp_path_factory):
    """llama-server with llama.cpp's shipped Qwen3.5-4B template, which allows a system message only first."""
    template = llama_cpp.source / "models" / "templates" / "Qwen3.5-4B.jinja"
    server = _server(llama_cpp, demo_gguf, tmp_path_factory, "strict", ctx=CTX, parallel=1,
                     extra=("--chat-template-file", str(template)))
    yield server
    server.stop()


async def _gateway(start_gateway, server: LlamaServer, log: Path | None = None, extra_body: str = "", **backend):
    """A gateway in front of `server`; `extra_body` is a TOML inline table."""
    table = {"type": "llamacpp", "base_url": server.url, "model": "demo", "model_mapping": {"claude-*": "demo"},
             **backend}
    toml = gateway_config({"llama": table}, default="llama", log_path=str(log or ""))
    if extra_body:
        toml = toml.replace("[backends.llama]\n", f"[backends.llama]\nextra_body = {extra_body}\n")
    return await start_gateway(toml)


def _text(msg: dict) -> str:
    """The answer's text; llama-server starts it with the "\n\n" that follows the template's empty
    think block (it ends the prompt at `</think>`), which the gateway passes on as it came."""
    return "".join(b.get("text", "") for b in msg["content"] if b["type"] == "text").lstrip("\n")


# -- 1. a tool call cut by max_tokens --------------------------------------------------------------

async def test_tool_call_cut_by_max_tokens_is_max_tokens_and_not_a_call(llama, start_gateway):
    gw = await _gateway(start_gateway, llama)
    whole = SCRIPTS["weather"].request()
    status, done = await gw.messages(whole)
    assert status == 200 and done["stop_reason"] == "tool_use", done  # uncut, it is a call
    # The scripted call comes first (under llama.cpp the demo model may add a noise call after it).
    call = next(b for b in done["content"] if b["type"] == "tool_use")
    assert call["name"] == "get_weather" and call["input"]["city"] == "Paris"
    # Cut a few tokens into the arguments: llama-server says finish_reason "length" with partial arguments.
    cut = SCRIPTS["weather"].request(max_tokens=12)
    status, msg = await gw.messages(cut)
    assert status == 200 and msg["stop_reason"] == "max_tokens", msg
    assert not any(b["type"] == "tool_use" for b in msg["content"]), msg
    s = await open_stream(gw, cut)
    assert s.stop_reason == "max_tokens" and all(b["type"] != "tool_use" for b in s.content)
    # llama-server's own Anthropic endpoint agrees on the stop reason.
    status, own = llama.post("/v1/messages", {**cut, "model": "demo"})
    assert status == 200 and own["stop_reason"] == "max_tokens"


# -- 2. stop sequences -----------------------------------------------------------------------------

async def test_stop_sequence_is_reported(llama, start_gateway):
    gw = await _gateway(start_gateway, llama)
    body = SCRIPTS["count"].request(stop_sequences=["three"])
    status, msg = await gw.messages(body)
    assert status == 200
    assert (_text(msg), msg["stop_reason"], msg["stop_sequence"]) == ("one, two, ", "stop_sequence", "three")
    s = await open_stream(gw, body)
    assert (s.text.lstrip("\n"), s.stop_reason, s.stop_sequence) == ("one, two, ", "stop_sequence", "three")
    status, msg = await gw.messages(SCRIPTS["count"].request(stop_sequences=["seven"]))
    assert (msg["stop_reason"], msg["stop_sequence"]) == ("end_turn", None)
    assert _text(msg) == SCRIPTS["count"].answer


# -- 2b. non-streaming requests: llama-server answers with stream=false --------------------------

WHOLE_CASES = {
    "text": SCRIPTS["hello"].request(),
    "repaired_tool_call": SCRIPTS["weather"].request(),
    "invalid_tool_call": SCRIPTS["invalid"].request(),
    "thinking": SCRIPTS["think"].request(),
    "hidden_thinking": SCRIPTS["think_hidden"].request(),
    "max_tokens": SCRIPTS["forever"].request(max_tokens=20),
    "tool_call_cut": SCRIPTS["weather"].request(max_tokens=12),
    "stop_sequence": SCRIPTS["count"].request(stop_sequences=["three"]),
}


@pytest.mark.parametrize("case", WHOLE_CASES)
async def test_non_streaming_answer_equals_the_streamed_one(llama, start_gateway, tmp_path, case):
    log = tmp_path / "requests.jsonl"
    gw = await _gateway(start_gateway, llama, log)
    body = WHOLE_CASES[case]
    status, msg = await gw.messages(body)
    assert status == 200, msg
    s = await open_stream(gw, body)

    def comparable(content: list[dict]) -> list[dict]:
        return [{k: v for k, v in b.items() if k not in ("id", "signature")} for b in content]

    assert comparable(msg["content"]) == comparable(s.content)
    assert (msg["stop_reason"], msg["stop_sequence"]) == (s.stop_reason, s.stop_sequence)
    # The second request reads the first one's prompt from the slot's cache: the prompt is the same.
    def prompt(usage: dict) -> int:
        return usage["input_tokens"] + usage["cache_read_input_tokens"]

    assert (prompt(msg["usage"]), msg["usage"]["output_tokens"]) == (prompt(s.usage), s.usage["output_tokens"])
    whole_rec, stream_rec = await wait_records(log, 2)
    # The answer came in one piece (stream=false upstream): no time to first token.
    assert whole_rec["ttft_ms"] is None and (stream_rec["ttft_ms"] is not None or case == "tool_call_cut")
    assert (whole_rec["output_tokens"], whole_rec["stop_reason"]) == (stream_rec["output_tokens"],
                                                                     stream_rec["stop_reason"])


# -- 3. late system messages -----------------------------------------------------------------------

async def test_system_first_template_late_system_message(strict_llama, start_gateway):
    body = {"model": "claude-sonnet-4-6", "max_tokens": 8, "system": DEMO_SYSTEM, "messages": LATE_SYSTEM}
    # The server itself refuses the conversation (a 500 that any client would retry).
    status, err = strict_llama.post("/v1/chat/completions", {
        "model": "demo", "max_tokens": 4, "messages": [{"role": "system", "content": DEMO_SYSTEM},
                                                       *LATE_SYSTEM]})
    assert status == 500 and "System message must be at the beginning" in err["error"]["message"]
    auto = await _gateway(start_gateway, strict_llama)
    status, msg = await auto.messages(body)
    assert status == 200, msg
    resp = await auto.post("/v1/messages/count_tokens", {k: body[k] for k in ("model", "system", "messages")})
    assert resp.status == 200
    keep = await _gateway(start_gateway, strict_llama, system_messages="keep")
    resp = await keep.post("/v1/messages", body)
    assert resp.status == 400, await resp.text()
    err = await resp.json()
    assert err["error"]["type"] == "invalid_request_error"
    assert "System message must be at the beginning" in err["error"]["message"]


async def test_template_that_renders_late_system_keeps_it_in_place(llama, start_gateway):
    gw = await _gateway(start_gateway, llama)
    body = {"model": "claude-sonnet-4-6", "max_tokens": 4, "system": DEMO_SYSTEM, "messages": LATE_SYSTEM}
    resp = await gw.post("/v1/messages/count_tokens", {k: body[k] for k in ("model", "system", "messages")})
    counted = (await resp.json())["input_tokens"]
    _, rendered = llama.post("/apply-template", {"messages": [{"role": "system", "content": DEMO_SYSTEM}, *LATE_SYSTEM],
                                                 "chat_template_kwargs": {"enable_thinking": False}})
    assert "<|im_start|>system\nReminder: be brief.<|im_end|>" in rendered["prompt"]
    _, tokens = llama.post("/tokenize", {"content": rendered["prompt"], "add_special": True})
    assert counted == len(tokens["tokens"])  # rendered as sent: the system message stayed a system message


# -- 4. billing header inside a role:system message ------------------------------------------------

async def test_billing_header_in_a_system_message_does_not_reach_the_prompt(llama, start_gateway):
    gw = await _gateway(start_gateway, llama)

    def body(suffix: str) -> dict:
        return {"model": "claude-sonnet-4-6", "max_tokens": 4, "temperature": 0, "system": DEMO_SYSTEM,
                "messages": [{"role": "user", "content": "Say hello."},
                             {"role": "system", "content": BILLING.format(suffix)},
                             {"role": "user", "content": "Again, please."}]}

    plain = dict(body("x"), messages=[m for m in body("x")["messages"] if m["role"] != "system"])
    counts = []
    for b in (body("1a2b3"), body("9f8e7"), plain):
        resp = await gw.post("/v1/messages/count_tokens", {k: b[k] for k in ("model", "system", "messages")})
        counts.append((await resp.json())["input_tokens"])
    assert counts[0] == counts[1] == counts[2], counts
    session = {"X-Claude-Code-Session-Id": "billing-session"}
    await gw.messages(body("1a2b3"), **session)
    status, second = await gw.messages(body("9f8e7"), **session)
    assert status == 200
    total = second["usage"]["input_tokens"] + second["usage"]["cache_read_input_tokens"]
    assert second["usage"]["cache_read_input_tokens"] >= total - 2, second["usage"]  # the whole prompt was cached


# -- 5. message_start usage ------------------------------------------------------------------------

async def test_message_start_input_tokens_is_the_exact_count(llama, start_gateway):
    gw = await _gateway(start_gateway, llama)
    body = SCRIPTS["hello"].request()
    s = await open_stream(gw, body)
    start, final = s.message["usage"], s.usage
    assert start["input_tokens"] == final["input_tokens"] + final["cache_read_input_tokens"], (start, final)
    resp = await gw.post("/v1/messages/count_tokens", {k: body[k] for k in ("model", "system", "messages")})
    assert (await resp.json())["input_tokens"] == start["input_tokens"]


# -- 6 and 7. the context window: per slot, reported, clamped --------------------------------------

async def test_health_and_models_report_the_per_slot_context(llama, start_gateway):
    gw = await _gateway(start_gateway, llama)
    props = llama.get("/props")
    assert props["default_generation_settings"]["n_ctx"] == SLOT_CTX and props["total_slots"] == SLOTS
    resp = await gw.get("/health")
    health = await resp.json()
    assert health["backends"]["llama"]["context_window"] == SLOT_CTX, health
    resp = await gw.get("/v1/models")
    models = (await resp.json())["data"]
    assert models and all(m.get("context_window", SLOT_CTX) == SLOT_CTX for m in models), models


async def test_answer_clamped_to_the_slot_fills_it_and_says_so(llama, start_gateway):
    """6000 tokens would fit the 8192-token cache but not a 4096-token slot: the gateway clamps to
    the slot, and an answer that fills it ends with model_context_window_exceeded."""
    gw = await _gateway(start_gateway, llama)
    s = await open_stream(gw, SCRIPTS["forever"].request(max_tokens=6000))
    usage = s.usage
    prompt = usage["input_tokens"] + usage["cache_read_input_tokens"]
    assert s.stop_reason == "model_context_window_exceeded", (s.stop_reason, usage)
    assert prompt + usage["output_tokens"] == SLOT_CTX
    # A backend output limit is an output limit: max_tokens.
    capped = await _gateway(start_gateway, llama, max_output_tokens=16)
    _, msg = await capped.messages(SCRIPTS["forever"].request(max_tokens=6000))
    assert (msg["stop_reason"], msg["usage"]["output_tokens"]) == ("max_tokens", 16)


# -- 8. validation ---------------------------------------------------------------------------------

async def test_validation_rejects_what_the_api_rejects(llama, start_gateway):
    gw = await _gateway(start_gateway, llama)
    bad = [
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather"},
        {"type": "thinking", "signature": "sig"},
        {"type": "redacted_thinking"},
    ]
    for block in bad:
        body = SCRIPTS["hello"].request(messages=[{"role": "user", "content": "Say hello."},
                                                  {"role": "assistant", "content": [block]},
                                                  {"role": "user", "content": "Say hello."}])
        resp = await gw.post("/v1/messages", body)
        assert resp.status == 400, (block, await resp.text())
        assert (await resp.json())["error"]["type"] == "invalid_request_error"
    resp = await gw.post("/v1/messages", SCRIPTS["hello"].request(thinking={"type": "adaptive", "display": ["x"]}))
    assert resp.status == 400
    status, _ = await gw.messages(SCRIPTS["hello"].request(max_tokens=4, thinking={"type": "adaptive",
                                                                                   "display": "omitted"}))
    assert status == 200


# -- slots, prompt cache, counts -------------------------------------------------------------------

def _sessions_on_both_slots() -> tuple[str, str]:
    """Session a maps to slot 1, b to slot 0: the reverse of the order idle slots are taken in."""
    def on(slot: int, name: str) -> str:
        return next(f"{name}{i}" for i in range(100) if zlib.crc32(f"{name}{i}".encode()) % SLOTS == slot)
    return on(1, "session-a"), on(0, "session-b")


async def test_sessions_keep_their_slot_and_reuse_its_prompt_cache(llama, start_gateway):
    gw = await _gateway(start_gateway, llama)
    a, b = _sessions_on_both_slots()

    def turn(who: str, n: int) -> dict:
        # Prompts of different lengths, so /slots shows which slot took which session.
        words = " and the weather in London" * (4 if who == a else 1)
        msgs = [{"role": "user", "content": f"{who} wants the weather in Paris for 3 days{words}."}]
        for i in range(n):
            msgs += [{"role": "assistant", "content": f"Reply {i} for {who}."}, {"role": "user", "content": "More."}]
        # Thinking on: the template then adds no empty think block that history would not repeat.
        return {"model": "claude-sonnet-4-6", "max_tokens": 1030, "temperature": 0, "system": DEMO_SYSTEM,
                "messages": msgs, "thinking": {"type": "enabled", "budget_tokens": 1024}}

    firsts = {}
    for who in (a, b):
        status, firsts[who] = await gw.messages(turn(who, 0), **{"X-Claude-Code-Session-Id": who})
        assert status == 200
    # Each slot holds the session that maps to it (a's prompt is the longer one).
    held = {s["id"]: s.get("n_prompt_tokens", 0) for s in llama.get("/slots")}
    assert held[1] > held[0], held
    for who in (a, b):
        status, second = await gw.messages(turn(who, 1), **{"X-Claude-Code-Session-Id": who})
        first_prompt = firsts[who]["usage"]["input_tokens"] + firsts[who]["usage"]["cache_read_input_tokens"]
        # Everything of the first turn but its answer is still in the slot's KV cache.
        assert second["usage"]["cache_read_input_tokens"] >= first_prompt - 1, (who, firsts[who], second)


async def test_count_tokens_equals_llama_servers_own_count(llama, start_gateway):
    gw = await _gateway(start_gateway, llama)
    # Thinking on: llama-server's Anthropic endpoint does not switch the template's thinking off.
    body = {"model": "claude-sonnet-4-6", "max_tokens": 2048, "temperature": 0, "system": DEMO_SYSTEM,
            "messages": [{"role": "user", "content": "What is the weather in Paris for 3 days?"}],
            "tools": [WEATHER_TOOL], "thinking": {"type": "enabled", "budget_tokens": 1024}}
    resp = await gw.post("/v1/messages/count_tokens", {k: body[k] for k in ("model", "system", "messages", "tools",
                                                                               "thinking")})
    ours = (await resp.json())["input_tokens"]
    status, theirs = llama.post("/v1/messages/count_tokens", {**body, "model": "demo"})
    assert status == 200 and ours == theirs["input_tokens"]
    status, msg = await gw.messages({**body, "max_tokens": 1100})
    assert msg["usage"]["input_tokens"] + msg["usage"]["cache_read_input_tokens"] == ours  # what it prefilled


# -- the real Claude Code CLI ----------------------------------------------------------------------

async def test_claude_code_through_the_gateway_to_a_system_first_llama_server(claude_bin, strict_llama,
                                                                              start_gateway, tmp_path):
    """`claude -p` → gateway → llama-server with the system-first template: every request the CLI
    sends is answered 200, and the session succeeds or (2.1.328), when the noise never reached an
    end of turn, ends with the CLI's own verdict on answers that keep stopping at max_tokens."""
    work, home = e2e._dirs(tmp_path)
    log = tmp_path / "requests.jsonl"
    # Under this template the demo model's noise seldom ends; 2.1.328 continues an answer cut by
    # max_tokens up to three times, which stays inside the window at 256 tokens each.
    gw = await _gateway(start_gateway, strict_llama, log, max_output_tokens=256)
    # A short system prompt and no tools: Claude Code's whole prompt would take minutes to prefill on CI's CPU.
    s = await _run_claude([*claude_bin, *e2e.BRIEF_NO_TOOLS], "Say hello.", work, home, gw.url)
    lines = await _log_lines(log, at_least=1)
    api = [ln for ln in lines if ln["path"].endswith("/messages")]
    assert api and all(ln["status"] == 200 and ln["error"] is None for ln in api), api
    if not e2e.gave_up_on_length(s, api):
        assert s.returncode == 0, (s.result, s.stderr[-2000:])
        assert s.result.get("is_error") is False and s.result.get("subtype") == "success", s.result
    # The billing block Claude Code puts first in `system` never reached the template.
    bodies = [ln["body"] for ln in api if isinstance(ln.get("body"), dict)]
    assert bodies and any("x-anthropic-billing-header" in json.dumps(b.get("system")) for b in bodies)


async def test_claude_code_sees_a_full_context_window_as_one(claude_bin, llama_cpp, demo_gguf, start_gateway,
                                                            tmp_path):
    """An answer that fills what the window had left (the model never stops: ignore_eos) ends with
    model_context_window_exceeded, as the Anthropic API ends one: not "max_tokens", which the CLI
    reports as an answer that "exceeded the 64000 output token maximum"."""
    work, home = e2e._dirs(tmp_path)
    server = start_llama_server(llama_cpp.server, demo_gguf, tmp_path / "small.log", ctx=1024,
                                extra=("--alias", "demo"))
    try:
        log = tmp_path / "requests.jsonl"
        gw = await _gateway(start_gateway, server, log, extra_body="{ ignore_eos = true }")
        proc = await asyncio.create_subprocess_exec(
            *claude_bin, "-p", "Say hello.", "--output-format", "stream-json", "--verbose", *e2e.BRIEF_NO_TOOLS,
            cwd=str(work), env=_claude_env(home, gw.url),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        lines = await _log_lines(log, at_least=2)
    finally:
        server.stop()
    text = out.decode("utf-8", "replace")
    api = [ln for ln in lines if ln["path"].endswith("/messages")]
    first = api[0]
    assert first["status"] == 200 and first["stop_reason"] == "model_context_window_exceeded", api
    assert first["input_tokens"] + first["cache_read_tokens"] + first["output_tokens"] == 1024
    # The CLI continues the cut answer until the continuation no longer fits (the sampled noise
    # re-tokenises to fewer tokens than it was generated as, so one continuation may still fit and fill
    # the window again); then it compacts (the demo model's noise cannot be summarised, so that ends
    # the session) instead of retrying.
    assert '"status":"compacting"' in text, text[-3000:]
    result = json.loads(text.strip().splitlines()[-1])
    assert result["terminal_reason"] == "prompt_too_long", result
    refused = next(i for i, ln in enumerate(api) if ln["status"] != 200)
    assert all(ln["stop_reason"] == "model_context_window_exceeded" for ln in api[:refused]), api
    assert api[refused]["status"] == 400 and "prompt is too long" in api[refused]["error"]["message"], api
