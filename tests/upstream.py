"""Scripted upstream servers that speak the real wire formats: OpenAI chat completions (streamed
and not), plus vLLM's (/tokenize, max_model_len) and llama.cpp's (/props, /apply-template,
/tokenize) extra endpoints. Each records what it received and whether a stream was cut."""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Script:
    """What the upstream does for one request: content chunks (OpenAI `delta`s), then a finish."""

    deltas: list[dict] = field(default_factory=list)
    finish_reason: str | None = "stop"
    fail_status: int | None = None  # fail before the first byte with this status
    fail_mid_status: int | None = None  # fail (error event) after the deltas
    fail_message: str = "upstream exploded"
    delay_s: float = 0.0  # between chunks
    first_delay_s: float = 0.0  # before the first chunk (prefill)
    headers_delay_s: float = 0.0  # before even sending response headers
    usage: dict | None = None
    retry_after: str | None = None
    stop_reason: str | None = None  # vLLM's choice.stop_reason
    raw_lines: list[str] | None = None  # send these SSE lines verbatim instead
    die_mid: bool = False  # drop the connection after the deltas
    hold: asyncio.Event | None = None  # after the deltas, wait for this before finishing (a stream in flight)
    # Hostile upstreams: the body as raw byte pieces (a 50 MB line, an endless answer), sent as
    # they are whether or not a stream was asked for (an SSE body unless stream_headers say
    # otherwise), produced lazily so the test never holds it whole; an error body sent verbatim; an error
    # message that quotes the Authorization header the request carried.
    body_pieces: Callable[[], Iterable[bytes]] | None = None
    fail_body: bytes | None = None
    fail_quotes_auth: bool = False
    stream_headers: dict[str, str] = field(default_factory=dict)  # extra headers of the SSE response


def TEXT(s: str, pieces: int | None = None) -> Script:
    return Script(deltas=[{"content": p} for p in _split(s, pieces)])


def LEN(s: str) -> Script:
    return Script(deltas=[{"content": p} for p in _split(s)], finish_reason="length")


def STOPSEQ(s: str, seq: str) -> Script:
    return Script(deltas=[{"content": p} for p in _split(s + seq)])


def TOOL(name: str, args: dict, lead: str | None = None, fragment: int = 3, call_id: str = "call_1") -> Script:
    deltas = [{"content": p} for p in _split(lead)] if lead else []
    raw = json.dumps(args)
    deltas.append({"tool_calls": [{"index": 0, "id": call_id, "type": "function",
                                   "function": {"name": name, "arguments": ""}}]})
    for i in range(0, len(raw), fragment):
        deltas.append({"tool_calls": [{"index": 0, "function": {"arguments": raw[i:i + fragment]}}]})
    return Script(deltas=deltas, finish_reason="tool_calls")


def TOOLS2() -> Script:
    deltas = []
    for i, (name, args) in enumerate([("get_weather", {"location": "Paris"}), ("get_time", {"tz": "CET"})]):
        raw = json.dumps(args)
        deltas.append({"tool_calls": [{"index": i, "id": f"call_{i}", "type": "function",
                                       "function": {"name": name, "arguments": ""}}]})
        for j in range(0, len(raw), 4):
            deltas.append({"tool_calls": [{"index": i, "function": {"arguments": raw[j:j + 4]}}]})
    return Script(deltas=deltas, finish_reason="tool_calls")


def THINK(r: str, s: str) -> Script:
    return Script(deltas=[{"reasoning_content": p} for p in _split(r)] + [{"content": p} for p in _split(s)])


def EMPTY() -> Script:
    return Script(deltas=[])


def FAIL(status: int, message: str = "upstream exploded", retry_after: str | None = None) -> Script:
    return Script(fail_status=status, fail_message=message, retry_after=retry_after)


def FAIL_MID(status: int, message: str = "upstream died mid-stream") -> Script:
    return Script(deltas=[{"content": "partial "}, {"content": "answer"}], fail_mid_status=status,
                  fail_message=message)


def _split(s: str | None, pieces: int | None = None) -> list[str]:
    if not s:
        return []
    if pieces is None:
        # word-ish pieces, like a tokenizer would produce
        out, cur = [], ""
        for ch in s:
            cur += ch
            if ch == " " or len(cur) >= 4:
                out.append(cur)
                cur = ""
        if cur:
            out.append(cur)
        return out
    size = max(1, -(-len(s) // pieces))
    return [s[i:i + size] for i in range(0, len(s), size)]


def count_prompt_tokens(messages: list, tools: list | None = None) -> int:
    """The fake tokenizer: one token per 4 characters of the serialized prompt, at least 1."""
    raw = json.dumps(messages, ensure_ascii=False) + (json.dumps(tools, ensure_ascii=False) if tools else "")
    return max(1, len(raw) // 4)


class Upstream:
    """One scripted server. `flavor` is openai, vllm or llamacpp."""

    def __init__(self, flavor: str = "openai", models: list[str] | None = None, context: int = 32768,
                 slots: int = 4, api_key: str | None = None):
        self.flavor = flavor
        self.models = models or ["test-model"]
        self.context = context
        self.slots = slots
        self.api_key = api_key
        self.quote_auth = False  # a hostile 401: its message quotes the Authorization it got
        self.enforce_context = False  # refuse prompts beyond `context`, with vLLM's 400
        self.prompt_sizes: list[int] = []  # each chat request's prompt, by the fake tokenizer
        self.scripts: list[Script] = []
        self.default: Script | Callable[[dict], Script] = TEXT("Hello there!")
        self.received: list[dict] = []
        self.streams: list[bool] = []  # per chat request: was it asked for a stream
        self.whole_answers = 0
        self.headers: list[dict] = []
        self.cancelled = 0
        self.completed = 0
        self.tokenize_calls = 0
        # A chat template that allows a system message only first (vLLM renders it for /tokenize
        # and generation alike, and answers 400 when it raises).
        self.system_first_only = False
        self.started = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None

    def push(self, *scripts: Script) -> None:
        self.scripts.extend(scripts)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.list_models)
        if self.flavor == "vllm":
            app.router.add_post("/tokenize", self.vllm_tokenize)
        if self.flavor == "llamacpp":
            app.router.add_get("/props", self.props)
            app.router.add_post("/apply-template", self.apply_template)
            app.router.add_post("/tokenize", self.llama_tokenize)
        return app

    async def start(self, port: int = 0) -> str:
        self._runner = web.AppRunner(self.app(), handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        real_port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{real_port}"
        return self.url

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    # -- endpoints ----------------------------------------------------------------------------

    def _auth_failed(self, request: web.Request) -> web.Response | None:
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            message = (f"Invalid API key: {request.headers.get('Authorization')!r}" if self.quote_auth
                       else "Invalid API key")
            return web.json_response({"error": {"message": message, "type": "invalid_request_error"}},
                                     status=401)
        return None

    async def list_models(self, request: web.Request) -> web.Response:
        if (resp := self._auth_failed(request)) is not None:
            return resp
        data = []
        for m in self.models:
            item = {"id": m, "object": "model", "created": 1700000000, "owned_by": self.flavor}
            if self.flavor == "vllm":
                item["max_model_len"] = self.context
            data.append(item)
        return web.json_response({"object": "list", "data": data})

    def _template_refuses(self, body: dict) -> web.Response | None:
        """vLLM's answer when the chat template raises (jinja2 TemplateError → 400)."""
        msgs = body.get("messages") or []
        if self.system_first_only and any(m.get("role") == "system" for m in msgs[1:]):
            return web.json_response({"error": {"message": "System message must be at the beginning.",
                                                "type": "BadRequestError", "param": None, "code": 400}},
                                     status=400)
        return None

    async def vllm_tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.tokenize_calls += 1
        if (refused := self._template_refuses(body)) is not None:
            return refused
        n = count_prompt_tokens(body.get("messages", []), body.get("tools"))
        return web.json_response({"count": n, "max_model_len": self.context, "tokens": list(range(n))})

    async def props(self, request: web.Request) -> web.Response:
        return web.json_response({"default_generation_settings": {"n_ctx": self.context},
                                  "total_slots": self.slots, "chat_template": "{{ messages }}"})

    async def apply_template(self, request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"prompt": _llama_render(body)})

    async def llama_tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.tokenize_calls += 1
        n = max(1, len(body.get("content", "")) // 4)
        return web.json_response({"tokens": list(range(n))})

    def prompt_tokens(self, body: dict) -> int:
        """The prompt size of a chat-completions body, as this server's own tokenizer counts it."""
        if self.flavor == "llamacpp":  # llama.cpp counts the rendered template, as /tokenize does
            return max(1, len(_llama_render(body)) // 4)
        return count_prompt_tokens(body.get("messages", []), body.get("tools"))

    async def chat(self, request: web.Request) -> web.StreamResponse:
        if (resp := self._auth_failed(request)) is not None:
            return resp
        body = await request.json()
        self.received.append(body)
        self.streams.append(bool(body.get("stream")))
        self.headers.append(dict(request.headers))
        self.started.set()
        if (refused := self._template_refuses(body)) is not None:
            return refused
        script = self.scripts.pop(0) if self.scripts else self.default
        if callable(script):
            script = script(body)
        if script.headers_delay_s:
            await asyncio.sleep(script.headers_delay_s)
        if script.fail_status:
            headers = {"retry-after": script.retry_after} if script.retry_after else {}
            if script.fail_body is not None:
                return web.Response(body=script.fail_body, status=script.fail_status,
                                    headers={**headers, "Content-Type": "application/json"})
            if script.fail_quotes_auth:
                script.fail_message = f"invalid credentials: {request.headers.get('Authorization')!r}"
            return web.json_response({"error": {"message": script.fail_message, "type": "server_error",
                                                "code": script.fail_status}},
                                     status=script.fail_status, headers=headers)
        prompt_tokens = self.prompt_tokens(body)
        self.prompt_sizes.append(prompt_tokens)
        if self.enforce_context and prompt_tokens + int(body.get("max_tokens") or 0) > self.context:
            message = (f"This model's maximum context length is {self.context} tokens. However, you requested "
                       f"{prompt_tokens + int(body.get('max_tokens') or 0)} tokens ({prompt_tokens} in the messages).")
            return web.json_response({"error": {"message": message, "type": "BadRequestError", "code": 400}},
                                     status=400)
        usage = script.usage or {"prompt_tokens": prompt_tokens,
                                 "completion_tokens": max(1, len(script.deltas)) if script.deltas else 0,
                                 "total_tokens": prompt_tokens + len(script.deltas)}
        if not body.get("stream") and script.body_pieces is None and script.raw_lines is None:
            return await self._answer_whole(request, script, body, usage)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", **script.stream_headers})
        await resp.prepare(request)
        base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": body.get("model")}
        try:
            if script.body_pieces is not None:
                for piece in script.body_pieces():
                    try:
                        await resp.write(piece)
                    except ConnectionResetError:  # the gateway hung up on it, as it should
                        self.cancelled += 1
                        return resp
                    if script.delay_s:  # pieces in separate network reads
                        await asyncio.sleep(script.delay_s)
                await resp.write_eof()
                self.completed += 1
                return resp
            if script.raw_lines is not None:
                for line in script.raw_lines:
                    await resp.write(line.encode() + b"\n\n")
                await resp.write_eof()
                self.completed += 1
                return resp
            await resp.write(_frame({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                          "finish_reason": None}]}))
            if script.first_delay_s:
                await asyncio.sleep(script.first_delay_s)
            for delta in script.deltas:
                await resp.write(_frame({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}))
                if script.delay_s:
                    await asyncio.sleep(script.delay_s)
            if script.hold is not None:
                await script.hold.wait()
            if script.die_mid:
                request.transport.close()
                return resp
            if script.fail_mid_status:
                await resp.write(_frame({"error": {"message": script.fail_message, "type": "server_error",
                                                   "code": script.fail_mid_status}}))
                await resp.write_eof()
                return resp
            choice = {"index": 0, "delta": {}, "finish_reason": script.finish_reason}
            final = {**base, "choices": [choice]}
            if script.stop_reason is not None:
                choice["stop_reason"] = script.stop_reason
                if self.flavor == "llamacpp" and body.get("verbose"):  # where llama.cpp says it
                    final["__verbose"] = {"stop": True, "stop_type": "word", "stopping_word": script.stop_reason}
            await resp.write(_frame(final))
            if (body.get("stream_options") or {}).get("include_usage"):
                await resp.write(_frame({**base, "choices": [], "usage": usage}))
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            self.completed += 1
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled += 1
            raise
        return resp

    async def _answer_whole(self, request: web.Request, script: Script, body: dict, usage: dict) -> web.Response:
        """A non-streamed answer: the script's timing and failures, then the whole ChatCompletion."""
        self.whole_answers += 1
        try:
            await asyncio.sleep(script.first_delay_s + script.delay_s * len(script.deltas))
            if script.hold is not None:
                await script.hold.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if script.die_mid:
            request.transport.close()
            return web.Response()
        if script.fail_mid_status:  # a failure during generation is the answer's status here
            return web.json_response({"error": {"message": script.fail_message, "type": "server_error",
                                                "code": script.fail_mid_status}}, status=script.fail_mid_status)
        self.completed += 1
        return web.json_response(self._whole(script, body, usage))

    def _whole(self, script: Script, body: dict, usage: dict) -> dict:
        """The ChatCompletion of `script` as this flavor's server writes it (fields, nulls and extras)."""
        text = "".join(d.get("content") or "" for d in script.deltas)
        reasoning_key = next((k for d in script.deltas for k in ("reasoning_content", "reasoning") if d.get(k)),
                             "reasoning_content")
        reasoning = "".join(d.get(reasoning_key) or "" for d in script.deltas)
        calls: dict[int, dict] = {}
        for d in script.deltas:
            for tc in d.get("tool_calls") or []:
                c = calls.setdefault(tc["index"], {"id": tc.get("id"), "type": "function",
                                                   "function": {"name": "", "arguments": ""}})
                fn = tc.get("function") or {}
                c["function"]["name"] += fn.get("name") or ""
                c["function"]["arguments"] += fn.get("arguments") or ""
        tool_calls = [calls[i] for i in sorted(calls)]
        message: dict = {"role": "assistant", "content": text or None}
        choice: dict = {"index": 0, "message": message, "finish_reason": script.finish_reason}
        answer: dict = {"id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()),
                        "model": body.get("model"), "choices": [choice], "usage": dict(usage)}
        if self.flavor == "vllm":  # every field, null or empty when unused
            message[reasoning_key] = reasoning or None
            message["tool_calls"] = tool_calls
            choice.update(logprobs=None, stop_reason=script.stop_reason)
            answer["usage"].setdefault("prompt_tokens_details", None)
            answer["prompt_logprobs"] = None
        elif self.flavor == "llamacpp":  # only what is there; the stop string in the `verbose` block
            if reasoning:
                message["reasoning_content"] = reasoning
            if tool_calls:
                message["tool_calls"] = tool_calls
            answer["usage"].setdefault("prompt_tokens_details", {"cached_tokens": 0})
            answer["system_fingerprint"] = "b1-fake"
            answer["timings"] = {"prompt_n": usage.get("prompt_tokens"), "prompt_ms": 1.0,
                                 "predicted_n": usage.get("completion_tokens"), "predicted_ms": 1.0}
            if body.get("verbose"):
                stopped = script.stop_reason is not None
                answer["__verbose"] = {"content": text, "stop": True, "stop_type": "word" if stopped else "eos",
                                       "stopping_word": script.stop_reason or ""}
        else:  # OpenAI
            message.update(refusal=None, annotations=[])
            if reasoning:
                message[reasoning_key] = reasoning
            if tool_calls:
                message["tool_calls"] = tool_calls
            choice["logprobs"] = None
            answer["usage"].setdefault("prompt_tokens_details", {"cached_tokens": 0, "audio_tokens": 0})
            answer.update(service_tier="default", system_fingerprint="fp_fake")
        return answer


def _llama_render(body: dict) -> str:
    """The fake llama.cpp chat template: what /apply-template returns and generation reads."""
    return json.dumps([body.get("messages", []), body.get("tools")], ensure_ascii=False)


def _frame(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


class UpstreamProcess:
    """A scripted upstream in its own process (`python -m tests.upstream`), killable like a real server."""

    def __init__(self, port: int, *args: str):
        self.port = port
        self.args = args
        self.url = f"http://127.0.0.1:{port}"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 20) -> UpstreamProcess:
        import sys
        from pathlib import Path

        root = Path(__file__).resolve().parent.parent
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.upstream", "--port", str(self.port), *self.args, cwd=str(root),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        assert b"listening on" in line, line
        return self

    async def kill(self) -> None:
        """SIGKILL: every connection to it breaks at once, mid-stream ones included."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def main(argv: list[str] | None = None) -> None:
    """`python -m tests.upstream --port P --text T`: one scripted upstream as its own process, so a
    test can kill it (SIGKILL, connections cut as in a crash) and start it again on the same port."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--flavor", default="openai")
    parser.add_argument("--text", default="Hello there!")
    parser.add_argument("--pieces", type=int, default=8)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between chunks")
    parser.add_argument("--first-delay", type=float, default=0.0, help="seconds before the first chunk")
    args = parser.parse_args(argv)

    async def serve() -> None:
        up = Upstream(args.flavor)
        script = TEXT(args.text, args.pieces)
        script.delay_s, script.first_delay_s = args.delay, args.first_delay
        up.default = script
        await up.start(args.port)
        print(f"upstream listening on {up.url}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
