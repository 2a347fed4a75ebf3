"""A broken or malicious upstream must not stall the gateway: each attack runs against a real
`serve` process in front of a scripted upstream on 127.0.0.1, while a probe measures how long
`GET /` takes on the same gateway (its event loop's responsiveness), and the answer must be a
clear Anthropic api_error, quickly, with the process's memory bounded."""
from __future__ import annotations

import asyncio
import json
import time
import zlib
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest

from backends.openai import (
    MAX_ANSWER_CHARS,
    MAX_CALLS_PER_CHUNK,
    MAX_COMPLETION_BYTES,
    MAX_JSON_BYTES,
    MAX_LINE_BYTES,
)
from tests.compat_helpers import (
    assert_error,
    backend_table,
    body,
    start_stack,
    with_server,
)
from tests.conftest import gateway_config
from tests.gateway_process import (
    GatewayProcess,
    env_without_token,
    start_serve,
)
from tests.sse_checks import open_stream
from tests.support.net import free_port
from tests.support.sse import parse_frames
from tests.upstream import Script

if TYPE_CHECKING:
    from typing import Self  # Python 3.11+; annotations are not evaluated here

# A loop blocked by one request shows as one slow GET /. Before the fixes these attacks held GET /
# for 2.6 s to over 5 s (timeouts); unloaded it stays under ~15 ms, and the bound leaves room for
# a shared, busy test machine.
LATENCY_BOUND_S = 0.5
BASE = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "test-model"}
FINISH = (b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
          b'data: [DONE]\n\n')


def _frame(delta: dict) -> bytes:
    return b"data: " + json.dumps({**BASE, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
                                  separators=(",", ":")).encode() + b"\n\n"


def one_line(total: int):
    """One SSE line of `total` bytes of text, sent in 64 KB writes, then a proper finish."""
    def pieces():
        yield b'data: {"choices":[{"index":0,"delta":{"content":"'
        piece = b"x" * 65536
        for _ in range(total // len(piece)):
            yield piece
        yield b'"},"finish_reason":null}]}\n\n' + FINISH
    return pieces


def many_frames(frame: bytes, total: int, head: bytes = b"", tail: bytes = b""):
    """`frame` repeated until `total` bytes went out (64 frames per write), then a proper finish."""
    def pieces():
        if head:
            yield head
        batch = frame * 64
        for _ in range(total // len(batch)):
            yield batch
        yield tail + FINISH
    return pieces


class LoopProbe:
    """GET / every 10 ms while it runs; `worst` is the slowest answer (a timeout counts as 5 s)."""

    def __init__(self, url: str):
        self.url = url
        self.latencies: list[float] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.ensure_future(self._run())
        await asyncio.sleep(0.1)
        return self

    async def __aexit__(self, *exc) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as session:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    async with session.get(self.url + "/", timeout=aiohttp.ClientTimeout(total=5)) as resp:
                        await resp.read()
                        assert resp.status == 200
                    self.latencies.append(time.perf_counter() - t0)
                except asyncio.TimeoutError:
                    self.latencies.append(5.0)
                await asyncio.sleep(0.01)

    @property
    def worst(self) -> float:
        return max(self.latencies)

    def check(self) -> None:
        assert len(self.latencies) >= 3, self.latencies
        assert self.worst < LATENCY_BOUND_S, (f"GET / took {self.worst * 1000:.0f} ms while the attack ran "
                                              f"(sample {self.latencies.index(self.worst)} of {len(self.latencies)})")


@asynccontextmanager
async def served(tmp_path: Path, up, **backend):
    """A `serve` process (no token) whose default backend is `up`."""
    toml = gateway_config({"up": backend_table(up, **backend)}, token=None, default="up")
    path = tmp_path / "config.toml"
    path.write_text(with_server(toml, port=free_port()))
    gp = await start_serve(path, env=env_without_token())
    try:
        yield gp
    finally:
        await gp.stop()


def peak_rss_mb(gp: GatewayProcess) -> float:
    for line in Path(f"/proc/{gp.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc")


async def post(gp: GatewayProcess, payload: dict) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    async with aiohttp.ClientSession() as session, session.post(
            gp.url + "/v1/messages", json=payload, headers={"anthropic-version": "2023-06-01"},
            timeout=aiohttp.ClientTimeout(total=60)) as resp:
        text = await resp.text()
        return resp.status, text, time.perf_counter() - t0


def stream_error(text: str) -> dict:
    frames = parse_frames(text)
    assert frames[-1][0] == "error", [n for n, _ in frames]
    return frames[-1][1]["error"]


# -- one endless line ----------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
async def test_50_mb_line_is_cut_at_the_line_cap(start_upstream, tmp_path, stream):
    """One 50 MB SSE line (no line break): the gateway stops reading at its line cap and answers an
    api_error at once, instead of re-copying the growing line per network read for minutes."""
    up = await start_upstream("openai")
    up.push(Script(body_pieces=one_line(50 * 1024 * 1024)))
    async with served(tmp_path, up) as gp:
        async with LoopProbe(gp.url) as probe:
            status, text, elapsed = await post(gp, body(stream=stream))
        rss = peak_rss_mb(gp)
    if stream:
        assert status == 200
        err = stream_error(text)
    else:
        assert status == 500, text
        err = json.loads(text)["error"]
    assert err["type"] == "api_error"
    assert f"stream line longer than {MAX_LINE_BYTES} bytes" in err["message"], err
    assert elapsed < 5, elapsed
    probe.check()
    assert rss < 250, rss


async def test_gzip_bomb_is_cut_at_the_line_cap(start_upstream, tmp_path):
    """1 MB of gzip that inflates to 1 GB of one line: decoded a read at a time and cut at the line
    cap, so memory stays flat."""
    up = await start_upstream("openai")
    gz = zlib.compressobj(9, zlib.DEFLATED, 31)
    data = gz.compress(b'data: {"choices":[{"index":0,"delta":{"content":"')
    data += b"".join(gz.compress(b"x" * (1 << 20)) for _ in range(1024)) + gz.flush()
    assert len(data) < 2 * 1024 * 1024
    up.push(Script(body_pieces=lambda: [data[i:i + 16384] for i in range(0, len(data), 16384)],
                   stream_headers={"Content-Encoding": "gzip"}))
    async with served(tmp_path, up) as gp, LoopProbe(gp.url) as probe:
        status, text, elapsed = await post(gp, body(stream=True))
        rss = peak_rss_mb(gp)
    assert status == 200 and elapsed < 5, elapsed
    err = stream_error(text)
    assert f"stream line longer than {MAX_LINE_BYTES} bytes" in err["message"], err
    probe.check()
    assert rss < 250, rss


async def test_line_just_under_the_cap_is_an_answer(start_upstream, tmp_path):
    """A big chunk that is still legitimate (a whole tool call in one line, as servers that do not
    stream arguments send it) goes through whole, without holding the loop."""
    up = await start_upstream("openai")
    content = "y" * (MAX_LINE_BYTES - 1000)
    args = json.dumps({"content": content})
    line = _frame({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                   "function": {"name": "Write", "arguments": args}}]})
    assert len(line) < MAX_LINE_BYTES
    up.push(Script(body_pieces=lambda: [line[i:i + 65536] for i in range(0, len(line), 65536)] + [FINISH]))
    async with served(tmp_path, up) as gp, LoopProbe(gp.url) as probe:
        status, text, _ = await post(gp, body())
    assert status == 200, text[:300]
    block = json.loads(text)["content"][0]
    assert block["type"] == "tool_use" and block["input"] == {"content": content}
    probe.check()


async def test_line_breaks_split_across_reads(start_upstream, start_gateway):
    """The linear reader still cuts lines exactly where SSE does when a CRLF, a CR, or a line is
    split between network reads (each piece below is written, then the upstream pauses)."""
    up, gw = await start_stack(start_upstream, start_gateway)
    one, two = _frame({"content": "one "})[:-2], _frame({"content": "two \u2028"})[:-2]
    three = _frame({"content": "three"})[:-2]
    text = one + b"\r\n\r\n" + two + b"\r\r" + three + b"\n\n" + FINISH
    cuts = [len(one) + 1, len(one) + 3, len(one) + 10, len(one) + 4 + len(two) + 1, len(text) - 20]
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    assert b"".join(pieces) == text and pieces[0].endswith(b"\r") and pieces[1].startswith(b"\n")
    up.push(Script(body_pieces=lambda: pieces, delay_s=0.02))
    s = await open_stream(gw, body())
    assert s.text == "one two \u2028three" and s.error is None


async def test_tool_call_flood_in_one_chunk_is_refused(start_upstream, tmp_path):
    """One chunk (under the line cap) naming 10000 tool calls would cost the loop a pause per call
    (a third of a second per line): refused before it is translated."""
    up = await start_upstream("openai")
    calls = [{"index": i, "id": "c", "type": "function", "function": {"name": "w", "arguments": "{}"}}
             for i in range(10000)]
    line = _frame({"tool_calls": calls})
    assert len(line) < MAX_LINE_BYTES
    up.push(Script(body_pieces=lambda: [line] * 20 + [FINISH]))
    async with served(tmp_path, up) as gp, LoopProbe(gp.url) as probe:
        status, text, elapsed = await post(gp, body(stream=True))
    assert status == 200 and elapsed < 5, elapsed
    err = stream_error(text)
    assert err["type"] == "api_error" and f"more than {MAX_CALLS_PER_CHUNK}" in err["message"], err
    assert "content_block_start" not in text
    probe.check()


@pytest.mark.parametrize("chunk", ['{"choices":["x"]}', '{"choices":[{"delta":[1]}]}',
                                   '{"choices":[{"delta":{"content":5}}]}',
                                   '{"choices":[{"delta":{"tool_calls":["x"]}}]}', '{"choices":{"0":1}}'],
                         ids=["choice-str", "delta-list", "content-int", "call-str", "choices-object"])
async def test_malformed_chunk_shapes_are_a_clear_error(start_upstream, start_gateway, chunk):
    """Valid JSON in the wrong shape ends the stream with an api_error naming the chunk (not an
    internal error from deep inside the translator), after the text that came before it."""
    up, gw = await start_stack(start_upstream, start_gateway)
    up.push(Script(raw_lines=[_frame({"content": "before "})[:-2].decode(), "data: " + chunk]))
    s = await open_stream(gw, body(), ok=False)
    assert s.text == "before "
    assert s.error["type"] == "api_error" and "malformed stream chunk" in s.error["message"], s.error


# -- answers that never end ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["text", "tool_arguments", "thinking"])
async def test_endless_answer_is_cut_at_the_answer_cap(start_upstream, tmp_path, kind):
    """200 MB of answer in 1 KB chunks for a non-streaming request (which the gateway must fold
    into one message): an api_error once the answer passes the cap, memory bounded, loop free."""
    up = await start_upstream("openai")
    piece = "y" * 1000
    head = b""
    if kind == "text":
        frame = _frame({"content": piece})
    elif kind == "thinking":
        frame = _frame({"reasoning_content": piece})
    else:
        head = _frame({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                       "function": {"name": "Write", "arguments": '{"content": "'}}]})
        frame = _frame({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
    up.push(Script(body_pieces=many_frames(frame, 200 * 1024 * 1024, head=head)))
    async with served(tmp_path, up) as gp:
        async with LoopProbe(gp.url) as probe:
            status, text, elapsed = await post(gp, body(thinking={"type": "enabled", "budget_tokens": 1024},
                                                        max_tokens=2048))
        rss = peak_rss_mb(gp)
    assert status == 500, text[:300]
    err = json.loads(text)["error"]
    assert err["type"] == "api_error"
    assert f"answer longer than {MAX_ANSWER_CHARS} characters" in err["message"], err
    assert elapsed < 10, elapsed
    probe.check()
    assert rss < 250, rss  # the whole answer held (and serialized) was ~4x its size


async def test_large_tool_arguments_in_small_fragments_are_linear(start_upstream, tmp_path):
    """2 MB of tool arguments in 8-byte fragments (256k chunks, below the answer cap) arrive whole,
    streamed, in a time linear in their size, the loop free meanwhile."""
    up = await start_upstream("openai")
    head = _frame({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                   "function": {"name": "Write", "arguments": '{"content": "'}}]})
    frame = _frame({"tool_calls": [{"index": 0, "function": {"arguments": "abcdefgh"}}]})
    n = 64 * 4096
    tail = _frame({"tool_calls": [{"index": 0, "function": {"arguments": '"}'}}]})
    up.push(Script(body_pieces=many_frames(frame, n * len(frame), head=head, tail=tail)))
    async with served(tmp_path, up) as gp, LoopProbe(gp.url) as probe:
        status, text, elapsed = await post(gp, body(stream=True))
    assert status == 200
    frames = parse_frames(text)
    assert frames[-1][0] == "message_stop", frames[-1]
    args = "".join(d["delta"]["partial_json"] for name, d in frames
                   if name == "content_block_delta" and d["delta"]["type"] == "input_json_delta")
    assert json.loads(args) == {"content": "abcdefgh" * n}
    assert elapsed < 20, elapsed
    probe.check()


@pytest.mark.parametrize("lead", ["", "<think>"], ids=["text", "thinking"])
async def test_whitespace_only_answer_is_linear(start_upstream, tmp_path, lead):
    """3 MB of nothing but whitespace, which the gateway holds back (before a text block, before a
    closing </think>): held as pieces, not re-copied per chunk (that took 6-19 s per 4 MB)."""
    up = await start_upstream("openai")
    head = _frame({"content": lead}) if lead else b""
    frame = _frame({"content": " " * 1000})
    frames = 47 * 64  # whole writes of many_frames
    up.push(Script(body_pieces=many_frames(frame, frames * len(frame), head=head, tail=_frame({"content": "end"}))))
    async with served(tmp_path, up) as gp, LoopProbe(gp.url) as probe:
        status, text, elapsed = await post(gp, body(thinking={"type": "enabled", "budget_tokens": 1024},
                                                    max_tokens=2048))
    assert status == 200, text[:300]
    content = json.loads(text)["content"]
    kinds = [b["type"] for b in content]
    if lead:
        assert kinds == ["thinking"] and content[0]["thinking"].strip() == "end", kinds
    else:
        assert kinds == ["text"] and content[0]["text"] == " " * 1000 * frames + "end"
    assert elapsed < 10, elapsed
    probe.check()


# -- non-streamed answers (a non-streaming request asks the server with stream=false) ---------------

JSON_BODY = {"Content-Type": "application/json"}


def _completion(message: dict) -> bytes:
    return json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "test-model",
                       "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}).encode()


async def test_huge_whole_answer_is_refused_at_its_cap(start_upstream, tmp_path):
    """A 200 MB non-streamed answer: reading stops at the cap, memory stays bounded, the loop free."""
    up = await start_upstream("openai")
    head = b'{"choices":[{"index":0,"message":{"role":"assistant","content":"'
    up.push(Script(body_pieces=lambda: [head, *(b"y" * 65536 for _ in range(3200))], stream_headers=JSON_BODY))
    async with served(tmp_path, up) as gp:
        async with LoopProbe(gp.url) as probe:
            status, text, elapsed = await post(gp, body())
        rss = peak_rss_mb(gp)
    assert status == 500, text[:300]
    err = json.loads(text)["error"]
    assert err["type"] == "api_error" and f"more than {MAX_COMPLETION_BYTES} bytes" in err["message"], err
    assert up.streams == [False] and elapsed < 5, elapsed
    probe.check()
    assert rss < 250, rss


@pytest.mark.parametrize("kind", ["text", "thinking", "tool_arguments"])
async def test_whole_answer_past_the_answer_cap_is_refused(start_upstream, start_gateway, kind):
    up, gw = await start_stack(start_upstream, start_gateway)
    big = "y" * (MAX_ANSWER_CHARS + 1)
    message = {"text": {"content": big}, "thinking": {"reasoning_content": big},
               "tool_arguments": {"tool_calls": [{"id": "c", "type": "function",
                                                  "function": {"name": "Write", "arguments": big}}]}}[kind]
    up.push(Script(body_pieces=lambda: [_completion(message)], stream_headers=JSON_BODY))
    resp = await gw.post("/v1/messages", body(thinking={"type": "enabled", "budget_tokens": 1024}, max_tokens=2048))
    err = (await assert_error(resp, 500, "api_error"))["error"]
    assert f"answer longer than {MAX_ANSWER_CHARS} characters" in err["message"], err


async def test_tool_call_flood_in_a_whole_answer_is_refused(start_upstream, start_gateway):
    up, gw = await start_stack(start_upstream, start_gateway)
    calls = [{"id": "c", "type": "function", "function": {"name": "w", "arguments": "{}"}} for _ in range(10000)]
    up.push(Script(body_pieces=lambda: [_completion({"tool_calls": calls})], stream_headers=JSON_BODY))
    resp = await gw.post("/v1/messages", body())
    err = (await assert_error(resp, 500, "api_error"))["error"]
    assert f"more than {MAX_CALLS_PER_CHUNK}" in err["message"], err


@pytest.mark.parametrize("answer", ['{"choices":["x"]}', '{"choices":[{"message":[1]}]}',
                                    '{"choices":[{"message":{"content":5}}]}',
                                    '{"choices":[{"message":{"tool_calls":["x"]}}]}', '{"choices":{"0":1}}',
                                    "[1]", "not json", ""],
                         ids=["choice-str", "message-list", "content-int", "call-str", "choices-object", "array",
                              "text", "empty"])
async def test_malformed_whole_answers_are_a_clear_error(start_upstream, start_gateway, answer):
    up, gw = await start_stack(start_upstream, start_gateway)
    up.push(Script(body_pieces=lambda: [answer.encode()], stream_headers=JSON_BODY))
    resp = await gw.post("/v1/messages", body())
    err = (await assert_error(resp, 500, "api_error"))["error"]
    assert "malformed answer" in err["message"], err


async def test_a_stream_sent_instead_of_a_whole_answer_is_read_as_a_stream(start_upstream, start_gateway):
    """A server (or proxy) that streams although asked not to: its Content-Type says so."""
    up, gw = await start_stack(start_upstream, start_gateway)
    up.push(Script(body_pieces=lambda: [_frame({"content": "streamed "}), _frame({"content": "anyway"}), FINISH]))
    status, msg = await gw.messages(body())
    assert status == 200 and msg["content"] == [{"type": "text", "text": "streamed anyway"}], msg
    assert up.streams == [False]


# -- error bodies ----------------------------------------------------------------------------------

async def test_context_error_text_is_read_without_backtracking(start_upstream, tmp_path):
    """A 112 KB context-length 400 shaped to make a backtracking regex quadratic: answered at once
    as `prompt is too long`, the upstream text shortened, the loop free."""
    up = await start_upstream("openai")
    up.push(Script(fail_status=400, fail_message="This model's maximum context length is 5 " + "1" * (112 * 1024)))
    async with served(tmp_path, up) as gp, LoopProbe(gp.url) as probe:
        status, text, elapsed = await post(gp, body())
    assert status == 400, text[:300]
    err = json.loads(text)["error"]
    assert err["type"] == "invalid_request_error" and err["message"].startswith("prompt is too long")
    assert len(err["message"]) < 3000, len(err["message"])
    assert elapsed < 2, elapsed
    probe.check()


async def test_context_error_numbers_still_read(start_upstream, start_gateway):
    """The linear reader finds the figures the old pattern found."""
    up, gw = await start_stack(start_upstream, start_gateway)
    for message, expected in [
        (("This model's maximum context length is 4096 tokens. However, you requested 5000 tokens "
          "(4000 in the messages, 1000 in the completion)."), "4000 tokens > 4096 maximum"),
        ("maximum context length is 8192 tokens, but the prompt contains at least 9001 tokens", "9001 tokens > 8192"),
        ("maximum context length is 8192 tokens; 9100 tokens in the messages", "9100 tokens > 8192"),
    ]:
        up.push(Script(fail_status=400, fail_message=message))
        data = await assert_error(await gw.post("/v1/messages", body()), 400, "invalid_request_error")
        assert expected in data["error"]["message"], data


async def test_huge_error_body_is_read_only_in_part(start_upstream, tmp_path):
    """A 400 whose body is 100 MB: the gateway reads a bounded start of it, answers at once, and
    its memory does not grow with the body."""
    up = await start_upstream("openai")
    up.push(Script(fail_status=500, fail_body=b'{"error": {"message": "' + b"z" * (100 * 1024 * 1024) + b'"}}'))
    async with served(tmp_path, up) as gp:
        async with LoopProbe(gp.url) as probe:
            status, text, elapsed = await post(gp, body())
        rss = peak_rss_mb(gp)
    assert status == 500, text[:300]
    err = json.loads(text)["error"]
    assert err["type"] == "api_error" and "answered 500" in err["message"]
    assert len(err["message"]) < 3000
    assert elapsed < 5, elapsed
    probe.check()
    assert rss < 200, rss


async def test_redirect_is_an_error_not_followed(start_upstream, start_gateway):
    """A 3xx from the chat endpoint is reported (base_url is wrong), not followed (whose body the
    client library would read whole)."""
    up, gw = await start_stack(start_upstream, start_gateway)
    up.push(Script(fail_status=307, fail_message="moved"))
    data = await assert_error(await gw.post("/v1/messages", body()), 500, "api_error")
    assert "answered 307" in data["error"]["message"] and "redirect" in data["error"]["message"], data


async def test_oversized_model_list_is_not_read_whole(start_upstream, start_gateway):
    """A /v1/models answer past the side-answer cap: /health says so instead of holding it all."""
    models = ["test-model"] + [f"m{i:06d}-" + "q" * 100 for i in range(MAX_JSON_BYTES // 100)]
    _, gw = await start_stack(start_upstream, start_gateway, upstream={"models": models})
    resp = await gw.session.get(gw.url + "/health")
    data = await resp.json()
    detail = data["backends"]["up"]["detail"]
    assert not data["backends"]["up"]["ok"] and f"more than {MAX_JSON_BYTES} bytes" in detail, detail
