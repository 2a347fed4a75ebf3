"""Bad input: property-based fuzzing of /v1/messages and count_tokens bodies (hypothesis), plus the
deterministic cases the fuzzer should never be the only guard for (413, invalid UTF-8, deep nesting,
wrong types → a 400 that names the field).

The fuzzer talks plain HTTP (http.client) to a real gateway in front of the scripted upstream; both
run on an event loop in a background thread, so hypothesis can drive ordinary synchronous tests.
Every answer must be below 500, Anthropic-shaped when it is an error, free of tracebacks, and the
gateway must keep serving (a well-formed request after each example still gets 200) and log a line
for every request.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import parse_config
from gateway.server import create_app
from gateway.app_state import Gateway
from tests.conftest import TOKEN, gateway_config
from tests.upstream import TEXT, Upstream

MODEL = "claude-opus-4-8"
MAX_BODY_MB = 1
EXAMPLES = 150  # per fuzz test; the three together stay well under 30 s on 2 cores


def good_body(**kw: Any) -> dict:
    return {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}], **kw}


# -- a gateway on a background event loop ----------------------------------------------------

@dataclass
class LiveGateway:
    port: int
    log_path: Path
    upstream: Upstream
    requests_sent: int = 0

    def call(self, path: str, raw: bytes, *, token: str | None = TOKEN, timeout: float = 10.0) -> tuple[int, bytes]:
        """POST raw bytes; the whole response body (SSE included) is read."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        headers = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
        if token:
            headers["x-api-key"] = token
        try:
            conn.request("POST", path, body=raw, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()
            self.requests_sent += 1

    def log_lines(self) -> list[dict]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> LiveGateway:
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict = {}
    log_path = tmp_path_factory.mktemp("badinput") / "requests.jsonl"

    async def start() -> None:
        up = Upstream("openai")
        up.default = TEXT("fuzzed fine")
        await up.start()
        toml = gateway_config({"up": {"type": "openai", "base_url": up.url, "model": "test-model",
                                      "model_mapping": {"claude-*": "test-model"}}},
                              default="up", log_path=str(log_path))
        toml = toml.replace("ping_interval_s = 0.5", f"ping_interval_s = 0.5\nmax_body_mb = {MAX_BODY_MB}")
        runner = web.AppRunner(create_app(Gateway(parse_config(toml))), handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        state.update(up=up, runner=runner, port=site._server.sockets[0].getsockname()[1])

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="fuzz-gateway", daemon=True)
    thread.start()
    assert ready.wait(20), "the gateway did not start"
    yield LiveGateway(state["port"], log_path, state["up"])

    async def stop() -> None:
        await state["runner"].cleanup()
        await state["up"].stop()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(20)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(20)
    loop.close()


def check_answer(status: int, raw: bytes, what: str) -> None:
    """What every answer must satisfy, however broken the request was."""
    text = raw.decode("utf-8")  # the gateway always answers valid UTF-8
    assert status < 500, f"{what} → {status}: {text[:500]}"
    assert "Traceback" not in text and 'File "' not in text, f"{what} → traceback in the response: {text[:500]}"
    if status != 200:
        err = json.loads(text)
        assert err["type"] == "error" and isinstance(err["error"]["type"], str), err
        assert isinstance(err["error"]["message"], str) and err["error"]["message"], err
    elif text.startswith("event:"):
        assert "event: message_start" in text and ("event: message_stop" in text or "event: error" in text), text[-300:]
    else:
        assert isinstance(json.loads(text), dict)


def still_serving(live: LiveGateway) -> None:
    status, raw = live.call("/v1/messages", json.dumps(good_body()).encode())
    assert status == 200, raw[:300]
    assert json.loads(raw)["content"][0]["text"] == "fuzzed fine"


# -- strategies --------------------------------------------------------------------------------

# Text with everything in it: controls, astral planes, and lone surrogates (which only survive as
# \ud800-style JSON escapes or as invalid UTF-8 bytes).
ANY_CHAR = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())
WORDS = st.one_of(st.text(max_size=30), st.sampled_from(["hi", "25°C ☀️ 晴れ", "a\x00b", "🙂" * 3, "END"]))
TEXTS = st.one_of(WORDS, st.text(ANY_CHAR, max_size=20), st.sampled_from(["", "\ud800", "x\udfff"]))
NUMBERS = st.one_of(st.integers(-3, 3), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
                    st.floats(allow_nan=False, allow_infinity=False),
                    st.sampled_from([0, -1, 1e308, -1e308, 5e-324, 2 ** 63, 2 ** 64, -(2 ** 63) - 1, 1.5, 10 ** 30]))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXTS)
JSON = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(TEXTS, inner, max_size=4)), max_leaves=12)

# Valid-shaped bodies (what a real client could send), with odd but legal content.
SCHEMA = st.fixed_dictionaries({"type": st.just("object")}, optional={
    "properties": st.dictionaries(WORDS, st.fixed_dictionaries(
        {"type": st.sampled_from(["string", "integer", "object", "array"])},
        optional={"description": WORDS}), max_size=3),
    "required": st.lists(WORDS, max_size=2), "additionalProperties": st.booleans()})
CACHE = st.just({"type": "ephemeral"})
TEXT_BLOCK = st.fixed_dictionaries({"type": st.just("text"), "text": WORDS}, optional={"cache_control": CACHE})
TOOL_USE = st.fixed_dictionaries({"type": st.just("tool_use"), "id": st.just("toolu_1"),
                                  "name": st.sampled_from(["Bash", "Read"]),
                                  "input": st.dictionaries(WORDS, JSON.filter(lambda v: v is not None), max_size=3)})
TOOL_RESULT = st.fixed_dictionaries({"type": st.just("tool_result"), "tool_use_id": st.just("toolu_1"),
                                     "content": st.one_of(WORDS, st.lists(TEXT_BLOCK, max_size=2))},
                                    optional={"is_error": st.booleans(), "cache_control": CACHE})
THINKING_BLOCK = st.fixed_dictionaries({"type": st.just("thinking"), "thinking": WORDS, "signature": WORDS})
USER_TURN = st.fixed_dictionaries({"role": st.just("user"), "content": st.one_of(
    WORDS, st.lists(st.one_of(TEXT_BLOCK, TOOL_RESULT), min_size=1, max_size=3))})
ASSISTANT_TURN = st.fixed_dictionaries({"role": st.just("assistant"), "content": st.one_of(
    WORDS, st.lists(st.one_of(TEXT_BLOCK, TOOL_USE, THINKING_BLOCK), min_size=1, max_size=3))})
SYSTEM_TURN = st.fixed_dictionaries({"role": st.just("system"), "content": WORDS})
MESSAGES = st.lists(st.one_of(USER_TURN, ASSISTANT_TURN, SYSTEM_TURN), max_size=4).map(
    lambda rest: [{"role": "user", "content": "start"}] + rest)
TOOL = st.fixed_dictionaries({"name": st.sampled_from(["Bash", "Write", "Read", "mcp__x__y"]),
                              "input_schema": SCHEMA}, optional={"description": WORDS})


def nest(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = {"a": [value]}
    return value


def dumps_deep(value: Any, ensure_ascii: bool = True) -> str:
    """json.dumps without Python's recursion limit (iterative, for the deep-nesting cases)."""
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Raw):
            out.append(item.text)
        elif isinstance(item, dict):
            out.append("{")
            parts: list[Any] = []
            for i, (k, v) in enumerate(item.items()):
                parts += [_Raw(("," if i else "") + json.dumps(k, ensure_ascii=ensure_ascii) + ":"), v]
            stack.append(_Raw("}"))
            stack.extend(reversed(parts))
        elif isinstance(item, list):
            out.append("[")
            parts = []
            for i, v in enumerate(item):
                parts += ([_Raw(",")] if i else []) + [v]
            stack.append(_Raw("]"))
            stack.extend(reversed(parts))
        else:
            out.append(json.dumps(item, ensure_ascii=ensure_ascii))
    return "".join(out)


@dataclass
class _Raw:
    text: str


@st.composite
def valid_body(draw) -> dict:
    """A body the gateway must answer with 200 (given a working upstream)."""
    max_tokens = draw(st.integers(1, 70000))
    body: dict = {"model": draw(st.sampled_from([MODEL, "claude-haiku-4-5", "claude-sonnet-4-5[1m]"])),
                  "max_tokens": max_tokens, "messages": draw(MESSAGES)}
    optional = {
        "system": st.one_of(WORDS, st.lists(TEXT_BLOCK, max_size=3)),
        "tools": st.lists(TOOL, max_size=3, unique_by=lambda t: t["name"]),
        "tool_choice": st.sampled_from([{"type": "auto"}, {"type": "any"}, {"type": "none"},
                                        {"type": "tool", "name": "Bash"}]),
        "thinking": st.one_of(st.just({"type": "disabled"}), st.just({"type": "adaptive"}),
                              st.integers(1024, max(1024, max_tokens - 1)).map(
                                  lambda b: {"type": "enabled", "budget_tokens": b})),
        "stop_sequences": st.lists(WORDS, max_size=3),
        "temperature": st.floats(0, 2), "top_p": st.floats(0, 1), "top_k": st.integers(0, 100),
        "stream": st.booleans(),
        "metadata": st.fixed_dictionaries({"user_id": WORDS}),
        "output_config": st.fixed_dictionaries({}, optional={
            "effort": st.sampled_from(["low", "high"]),
            "format": st.fixed_dictionaries({"type": st.just("json_schema"), "schema": SCHEMA})}),
        "context_management": JSON,
    }
    for key in draw(st.lists(st.sampled_from(sorted(optional)), unique=True, max_size=6)):
        body[key] = draw(optional[key])
    body["stream"] = draw(st.booleans())  # half the valid ones read a whole SSE stream
    if body.get("thinking", {}).get("type") == "enabled" and max_tokens <= 1024:
        del body["thinking"]
    return body


def _paths(value: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, path + (i,))
    return out


@st.composite
def mutated_body(draw) -> dict:
    """A valid body with one value replaced by any JSON value (a wrong type, mostly) or deleted."""
    body = draw(valid_body())
    path = draw(st.sampled_from(_paths(body)[1:]))
    parent = body
    for part in path[:-1]:
        parent = parent[part]
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(JSON)
    return body


@st.composite
def encoded(draw) -> bytes:
    """A body (valid, mutated, or any JSON), sometimes deeply nested, then encoded one of several ways."""
    kind = draw(st.sampled_from(["valid", "valid", "mutated", "mutated", "mutated", "json"]))
    body = draw({"valid": valid_body(), "mutated": mutated_body(), "json": JSON}[kind])
    if isinstance(body, dict) and draw(st.integers(0, 9)) == 0:
        key = draw(st.sampled_from(["context_management", "metadata", "messages", "tools", "system"]))
        body[key] = nest(body.get(key), draw(st.sampled_from([30, 62, 64, 130, 600])))
    how = draw(st.sampled_from(["utf8"] * 6 + ["ascii", "surrogatepass", "truncate"]))
    if how == "ascii":  # lone surrogates become \udXXX escapes
        return dumps_deep(body).encode()
    text = dumps_deep(body, ensure_ascii=False)
    if how == "surrogatepass":  # lone surrogates become invalid UTF-8 bytes
        return text.encode("utf-8", "surrogatepass")
    raw = text.encode("utf-8", "replace")
    if how == "truncate":
        return raw[:draw(st.integers(0, max(0, len(raw) - 1)))]
    return raw


FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large, HealthCheck.large_base_example])


@FUZZ
@given(raw=encoded())
def test_fuzz_messages_bodies(live, raw):
    """Any body to /v1/messages (streamed or not): an answer below 500, error-shaped when not 200."""
    status, answer = live.call("/v1/messages", raw)
    check_answer(status, answer, f"/v1/messages {raw[:300]!r}")


@FUZZ
@given(raw=encoded())
def test_fuzz_count_tokens_bodies(live, raw):
    """Any body to count_tokens: a count or an Anthropic error, never a 5xx."""
    status, answer = live.call("/v1/messages/count_tokens", raw)
    check_answer(status, answer, f"count_tokens {raw[:300]!r}")
    if status == 200:
        assert json.loads(answer)["input_tokens"] >= 1


@FUZZ
@given(raw=st.one_of(st.binary(max_size=200), st.text(ANY_CHAR, max_size=100).map(
    lambda t: t.encode("utf-8", "surrogatepass"))))
def test_fuzz_raw_bytes(live, raw):
    """Bytes that are not JSON at all (or barely) → 400, never a 5xx."""
    status, answer = live.call("/v1/messages", raw)
    check_answer(status, answer, f"raw {raw[:200]!r}")


def test_gateway_survived_and_logged_every_request(live):
    """After the fuzzing the gateway still answers, and each request got its log line."""
    still_serving(live)
    expected = live.requests_sent
    lines: list[dict] = []
    for _ in range(100):  # the log is written by a background thread
        lines = live.log_lines()
        if len(lines) >= expected:
            break
        threading.Event().wait(0.05)
    assert len(lines) == expected
    failed = [ln for ln in lines if ln["status"] >= 400]
    assert all(ln["error"] and ln["error"]["type"] and ln["error"]["message"] for ln in failed)
    assert not [ln for ln in lines if ln["status"] >= 500], "a 5xx was logged"
    # The fuzzer must reach the backend often, streamed and not, or it only tests the parser.
    ok = [ln for ln in lines if ln["status"] == 200]
    assert len(ok) >= expected // 10 and sum(1 for ln in ok if ln["stream"]) >= 10


# -- deterministic bad input ---------------------------------------------------------------------

def test_body_over_limit_is_413(live):
    """A body over server.max_body_mb → 413 request_too_large, for both endpoints; the gateway keeps serving."""
    big = json.dumps(good_body(messages=[{"role": "user", "content": "y" * (MAX_BODY_MB * 1024 * 1024 + 10)}]))
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        status, raw = live.call(path, big.encode())
        assert status == 413, raw[:300]
        err = json.loads(raw)["error"]
        assert err["type"] == "request_too_large" and "max_body_mb" in err["message"]
    still_serving(live)


def _error(status: int, raw: bytes) -> dict:
    assert status == 400, raw[:300]
    data = json.loads(raw)
    assert data["type"] == "error" and data["error"]["type"] == "invalid_request_error", data
    return data["error"]


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
@pytest.mark.parametrize("field,raw_value", [
    ("model", b'"claude-\xff\xfe"'),
    ("messages.0.content", b'"caf\xc3"'),
    ("messages.0.content.0.text", b'[{"type": "text", "text": "\xed\xa0\x80 lone surrogate"}]'),
    ("system", b'"\x80\x81"'),
])
def test_invalid_utf8_names_the_field(live, path, field, raw_value):
    """Invalid UTF-8 inside a string → 400 invalid_request_error whose message names that field."""
    body = good_body(system="s")
    raw = json.dumps(body).encode()
    top = field.split(".")[0]
    if top == "messages":
        # splice the bad bytes in as the first message's content
        raw = raw.replace(b'"content": "hi"', b'"content": ' + raw_value)
    else:
        raw = raw.replace(json.dumps({top: body[top]})[1:-1].encode(), f'"{top}": '.encode() + raw_value)
    assert raw_value in raw
    err = _error(*live.call(path, raw))
    assert err["message"].startswith(field + ":"), err
    assert "UTF-8" in err["message"], err


@pytest.mark.parametrize("escape,field", [(r'"\ud800"', "messages.0.content"), (r'"ok \udfff"', "system")])
def test_lone_surrogate_escape_names_the_field(live, escape, field):
    r"""A JSON escape for half a surrogate pair (\ud800) is not text → 400 naming the field."""
    raw = json.dumps(good_body(system="s")).encode()
    if field == "system":
        raw = raw.replace(b'"system": "s"', b'"system": ' + escape.encode())
    else:
        raw = raw.replace(b'"content": "hi"', b'"content": ' + escape.encode())
    err = _error(*live.call("/v1/messages", raw))
    assert err["message"].startswith(field + ":"), err


@pytest.mark.parametrize("depth", [300, 1000, 5000])
@pytest.mark.parametrize("field", ["tools.0.input_schema", "messages.0.content.0.input", "metadata"])
def test_deep_nesting_names_the_field(live, field, depth):
    """Nesting deeper than the gateway handles → 400 naming the field, never a 5xx or a recursion crash."""
    deep = nest({}, depth)
    if field.startswith("tools"):
        body = good_body(tools=[{"name": "t", "input_schema": {"type": "object", "properties": deep}}])
    elif field.startswith("messages"):
        body = good_body(messages=[{"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1",
                                                                       "name": "t", "input": deep}]},
                                   {"role": "user", "content": "go on"}])
    else:
        body = good_body(metadata={"user_id": "u", "extra": deep})
    raw = dumps_deep(body).encode()
    err = _error(*live.call("/v1/messages", raw))
    assert err["message"].startswith(field), err
    assert "nest" in err["message"], err
    still_serving(live)


@pytest.mark.parametrize("mutate,field", [
    ({"model": 5}, "model"),
    ({"model": None}, "model"),
    ({"max_tokens": "100"}, "max_tokens"),
    ({"max_tokens": 10 ** 30}, "max_tokens"),
    ({"max_tokens": 1e308}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"messages": {"role": "user"}}, "messages"),
    ({"messages": [{"role": 7, "content": "hi"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": ["x"]}]}]}, "messages.0.content.0.text"),
    ({"messages": [{"role": "user", "content": [7]}]}, "messages.0.content.0"),
    ({"system": 5}, "system"),
    ({"system": [{"type": "text", "text": None}]}, "system.0.text"),
    ({"tools": {"name": "x"}}, "tools"),
    ({"tools": [{"name": 1, "input_schema": {}}]}, "tools.0.name"),
    ({"tools": [{"name": "x", "input_schema": "object"}]}, "tools.0.input_schema"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"thinking": "on"}, "thinking"),
    ({"thinking": {"type": "enabled", "budget_tokens": "lots"}}, "thinking.budget_tokens"),
    ({"stop_sequences": "END"}, "stop_sequences"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": 1e308}, "temperature"),
    ({"top_p": [1]}, "top_p"),
    ({"top_k": -(2 ** 70)}, "top_k"),
    ({"stream": "yes"}, "stream"),
    ({"output_config": 3}, "output_config"),
    ({"output_config": {"format": {"type": "json_schema", "schema": "x"}}}, "output_config.format.schema"),
])
def test_wrong_types_name_the_field(live, mutate, field):
    """A wrong type (or absurd number) at a field → 400 invalid_request_error whose message starts with the field."""
    err = _error(*live.call("/v1/messages", json.dumps(good_body(**mutate)).encode()))
    assert err["message"].startswith(field + ":"), err
