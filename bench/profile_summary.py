"""Where the gateway's CPU goes: summarise a py-spy collapsed-stack profile by pipeline stage.

    uv run --with py-spy python bench/run.py --scenario cpu --py-spy /tmp/gw.txt
    uv run python bench/profile_summary.py /tmp/gw.txt [--cpu-ms MS]

Each sample is charged to the innermost frame that names a stage (walking from the leaf to the
root), so e.g. orjson time inside `read_body` counts as body parsing and socket writes under
`_Pinger.write` count as SSE output. `--cpu-ms` turns shares into ms per request using the CPU
per request that bench/run.py measured.
"""
from __future__ import annotations

import argparse
import re
from collections import Counter

# (stage, frame-name pattern); the first stage whose pattern matches, leaf upwards, wins.
STAGES: list[tuple[str, str]] = [
    ("request log (JSONL line + console line)", r"^(RequestLog\.(write|_console)|log_line|LineRenderer|_Enqueue)"),
    ("body read + JSON parse", r"^read_body "),
    ("validation (parse_messages_request)", r"^parse_messages_request "),
    ("normalize (billing header, system hoist)", r"^(normalize|session_id) "),
    ("token estimate + max_tokens fit", r"^(estimate_tokens|fit_request) "),
    ("translation (to_openai + body dumps)", r"^to_openai"),
    ("upstream stream read (httpx2 lines, aiohttp client)", r"^(Response\.aiter_|LineDecoder|ResponseHandler\.data_received"
                                                           r"|StreamReader\.|AiohttpResponseStream|HttpResponseParser)"),
    ("upstream request (openai SDK, httpx2, aiohttp connect/send)", r"^(AsyncAPIClient|BaseClient|AsyncOpenAI|AsyncClient\."
                                                                    r"|AiohttpTransport|ClientSession|async_send|FinalRequestOptions)"),
    ("chunk decode + translate", r"^(ChunkTranslator|ThinkTagParser|StopSequenceMatcher)"),
    ("MessageStream (events → Anthropic events)", r"^MessageStream\."),
    ("SSE encode", r"^(encode|encode_all) .*gateway/sse"),
    ("SSE write to client (aiohttp StreamResponse)", r"^(_Pinger\.write|StreamResponse\.(write|prepare|write_eof)|StreamWriter)"),
    ("backend stream loop (openai.py glue)", r"^OpenAIBackend\.stream "),
    ("SSE response loop (messages.py glue)", r"^(_respond_sse|handle_messages|_prepare|_Pinger) "),
    ("middleware (ids, auth, record)", r"^(gateway_middleware|new_id|RequestRecord|RequestOutcome)"),
    ("aiohttp server (HTTP parse, dispatch)", r"^(RequestHandler|Application\._handle|_fix_request|HttpRequestParser"
                                              r"|BaseRequest|Request\.)"),
    ("asyncio loop + sockets", r"^(BaseEventLoop|_SelectorSocketTransport|EpollSelector|Handle\._run|Task\.|_SelectorTransport)"),
    ("request log file write (writer thread)", r"^RotatingFile\.write"),
    # A thread blocked in a C-level queue get looks busy to py-spy; its leaf is the loop itself.
    ("other threads (idle workers)", r"^(_worker|LineWriter\._run|Thread\.)"),
]
_COMPILED = [(name, re.compile(p)) for name, p in STAGES]


def summarise(path: str) -> tuple[Counter, int]:
    stages: Counter = Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            n = int(count)
            total += n
            frames = stack.split(";")
            for frame in reversed(frames):
                stage = next((name for name, rx in _COMPILED if rx.search(frame)), None)
                if stage:
                    stages[stage] += n
                    break
            else:
                stages["other: " + re.sub(r":\d+\)$", ")", frames[-1])] += n
    return stages, total


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("profile", help="py-spy --format raw output (collapsed stacks)")
    p.add_argument("--cpu-ms", type=float, help="measured gateway CPU ms per request, to convert shares")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    stages, total = summarise(args.profile)
    idle = stages.pop("other threads (idle workers)", 0)
    busy = total - idle
    print(f"{busy} busy samples ({idle} idle worker-thread samples left out)")
    for name, n in stages.most_common(args.top):
        ms = f"  {args.cpu_ms * n / busy:5.2f} ms/req" if args.cpu_ms else ""
        print(f"{100 * n / busy:5.1f}%{ms}  {name}")


if __name__ == "__main__":
    main()
