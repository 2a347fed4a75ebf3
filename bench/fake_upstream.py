"""A fast fake OpenAI-compatible server for the benchmark: streams N tokens per request.

Run as its own process (`python bench/fake_upstream.py --port P`) so its CPU is not charged to
the gateway or the load generator. Each /v1/chat/completions request is parsed (like a real
server would) and answered as `chat.completion.chunk` SSE: a role chunk at once, then one token
per `--interval-ms` (deadline-scheduled, so sleeps do not drift), a finish chunk, the usage chunk
when `stream_options.include_usage` is set, and `data: [DONE]`. Asked with `stream: false`, it
answers the same tokens as one `chat.completion` object once the last one is due.
"""
from __future__ import annotations

import argparse
import asyncio
import time

import orjson
from aiohttp import web

MODEL = "bench-model"
# Short, realistic BPE-ish pieces; the stream cycles through them.
WORDS = [" The", " function", " reads", " the", " config", " file", ",", " then", " calls", " `parse",
         "_config", "`", " and", " returns", " a", " dict", ".", "\n\n", "Next", " step", ":", " run",
         " the", " tests", " with", " pytest", " -q", " to", " confirm", " nothing", " broke", "."]
_TOKENS = [orjson.dumps(w) for w in WORDS]


def fewest_deltas(tokens: int) -> int:
    """The fewest text deltas a relay may turn `tokens` into: a whitespace-only token may be held
    and sent with the next one (the gateway's tool-call parser does, in case a marker follows)."""
    return tokens - sum(1 for i in range(tokens) if not WORDS[i % len(WORDS)].strip() and i + 1 < tokens)


class FakeUpstream:
    """Per-process settings plus a request counter (GET /stats) for sanity checks."""

    def __init__(self, tokens: int, interval_s: float, prefill_s: float):
        self.tokens = tokens
        self.interval_s = interval_s
        self.prefill_s = prefill_s
        self.requests = 0

    async def models(self, request: web.Request) -> web.Response:
        body = {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 1700000000,
                                             "owned_by": "bench", "max_model_len": 262144}]}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def stats(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps({"requests": self.requests}), content_type="application/json")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        t0 = time.monotonic()
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return web.Response(status=400, body=b'{"error":{"message":"bad json"}}', content_type="application/json")
        self.requests += 1
        model = body.get("model") or MODEL
        tokens = self.tokens
        if isinstance(body.get("max_tokens"), int):
            tokens = min(tokens, body["max_tokens"])
        if not body.get("stream"):
            return await self._whole(raw, model, tokens, t0)
        usage_wanted = bool((body.get("stream_options") or {}).get("include_usage"))
        head = (b'data: {"id":"chatcmpl-bench%d","object":"chat.completion.chunk","created":%d,"model":%s,'
                % (self.requests, int(time.time()), orjson.dumps(model)))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        await resp.write(head + b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
                                b'"finish_reason":null}]}\n\n')
        loop = asyncio.get_running_loop()
        start = t0 + self.prefill_s
        for i in range(tokens):
            if self.interval_s or self.prefill_s:
                delay = start + i * self.interval_s - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            await resp.write(head + b'"choices":[{"index":0,"delta":{"content":' + _TOKENS[i % len(_TOKENS)]
                             + b'},"finish_reason":null}]}\n\n')
        tail = head + b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
        if usage_wanted:
            prompt = max(1, len(raw) // 4)  # a stand-in count; the gateway only passes it on
            tail += head + b'"choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}\n\n' % (
                prompt, tokens, prompt + tokens)
        await resp.write(tail + b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


    async def _whole(self, raw: bytes, model: str, tokens: int, t0: float) -> web.Response:
        if self.interval_s or self.prefill_s:
            delay = t0 + self.prefill_s + max(0, tokens - 1) * self.interval_s - asyncio.get_running_loop().time()
            if delay > 0:
                await asyncio.sleep(delay)
        prompt = max(1, len(raw) // 4)
        answer = {"id": f"chatcmpl-bench{self.requests}", "object": "chat.completion", "created": int(time.time()),
                  "model": model,
                  "choices": [{"index": 0, "finish_reason": "stop", "message": {
                      "role": "assistant", "content": "".join(WORDS[i % len(WORDS)] for i in range(tokens))}}],
                  "usage": {"prompt_tokens": prompt, "completion_tokens": tokens, "total_tokens": prompt + tokens}}
        return web.Response(body=orjson.dumps(answer), content_type="application/json")


def create_app(tokens: int = 64, interval_ms: float = 5.0, prefill_ms: float = 0.0) -> web.Application:
    """The fake upstream's aiohttp app."""
    fake = FakeUpstream(tokens, interval_ms / 1000, prefill_ms / 1000)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/v1/models", fake.models)
    app.router.add_post("/v1/chat/completions", fake.chat)
    app.router.add_get("/stats", fake.stats)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=64, help="tokens per answer (default 64)")
    parser.add_argument("--interval-ms", type=float, default=5.0,
                        help="time between tokens, like a GPU server's decode step (default 5; 0 = as fast as possible)")
    parser.add_argument("--prefill-ms", type=float, default=0.0, help="delay before the first token (default 0)")
    args = parser.parse_args()
    web.run_app(create_app(args.tokens, args.interval_ms, args.prefill_ms), host=args.host, port=args.port,
                access_log=None, print=None, handle_signals=True)


if __name__ == "__main__":
    main()
