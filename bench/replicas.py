"""Replica-pool bench: `uv run python bench/replicas.py [--seconds 20] [--workers 32] [--quick]`.

Starts three scripted upstream replicas (tests/upstream.py, each its own process) and `claude-gateway
serve` with all three in one backend's `base_url`, then keeps `--workers` streaming requests in flight,
each for a session drawn from `--sessions`. Halfway through, one replica is killed with SIGKILL (its
open streams break as in a crash). Reports the session-affinity hit rate (requests served by the
replica their session first went to; 100% expected for sessions whose replica survives), errors
before and after the kill (streams cut mid-answer by the kill are counted apart from requests that
failed before any content, which failover should leave at 0), and p95 TTFT before and after. A
request belongs to the phase it started in: those retried on another replica at the kill count
in "before".
Writes bench/results/replicas.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from run import TOKEN, Proc, _pct, gateway_argv, run_main
from tests.support.net import free_port, wait_http
from tests.support.sse import FramingError, iter_frames

BODY = {"model": "claude-sonnet-4-6", "max_tokens": 64, "stream": True,
        "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Phase:
    ttft_ms: list[float] = field(default_factory=list)
    ok: int = 0
    cut_mid_stream: int = 0  # content had reached the client when the stream broke
    failed_before_content: int = 0
    examples: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {"requests": self.ok + self.cut_mid_stream + self.failed_before_content, "ok": self.ok,
                "cut_mid_stream": self.cut_mid_stream, "failed_before_content": self.failed_before_content,
                "p50_ttft_ms": _round(_pct(self.ttft_ms, 50)), "p95_ttft_ms": _round(_pct(self.ttft_ms, 95)),
                "examples": self.examples[:3]}


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


async def one(session: aiohttp.ClientSession, url: str, sid: str, phase: Phase) -> str | None:
    """One streaming request; returns the replica that wrote the answer (None when it failed)."""
    headers = {"x-api-key": TOKEN, "anthropic-version": "2023-06-01", "content-type": "application/json",
               "X-Claude-Code-Session-Id": sid}
    t0 = time.perf_counter()
    ttft = None
    text = ""
    try:
        async with session.post(url, json=BODY, headers=headers) as resp:
            if resp.status != 200:
                phase.failed_before_content += 1
                phase.examples.append(f"HTTP {resp.status}: {(await resp.read())[:200]!r}")
                return None
            ended = False
            async for name, data in iter_frames(resp.content):
                if name == "content_block_delta":
                    if ttft is None:
                        ttft = time.perf_counter()
                    text += data["delta"].get("text", "")
                elif name == "message_stop":
                    ended = True
                elif name == "error":
                    break
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, FramingError) as exc:
        ended = False
        phase.examples.append(f"{type(exc).__name__}: {exc}")
    if not ended:
        if text:
            phase.cut_mid_stream += 1
        else:
            phase.failed_before_content += 1
        return None
    phase.ok += 1
    phase.ttft_ms.append(((ttft or time.perf_counter()) - t0) * 1000)
    return text.split(" ", 1)[0]


async def amain(args) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    ports = [free_port() for _ in range(3)]
    ups = []
    for i, port in enumerate(ports):
        proc = Proc(f"replica-{i}", [sys.executable, "-m", "tests.upstream", "--port", str(port), "--flavor", "vllm", "--text",
                                     f"replica-{i} answers in several pieces", "--pieces", "8",
                                     "--delay", str(args.chunk_delay)], tmp / f"replica-{i}.log")
        ups.append(proc)
    gw_port = free_port()
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    (tmp / "config.toml").write_text(f"""
[server]
host = "127.0.0.1"
port = {gw_port}
auth_token = "{TOKEN}"
[log]
requests = "{tmp / 'requests.jsonl'}"
bodies = false
level = "warning"
[routing]
default = "pool"
[backends.pool]
type = "vllm"
base_url = {json.dumps(urls)}
model = "test-model"
""")
    for proc, url in zip(ups, urls):
        await wait_http(url + "/v1/models", proc.p, log=proc.tail)
    gw = Proc("gateway", gateway_argv() + ["serve", "--config", str(tmp / "config.toml")], tmp / "gateway.log")
    base = f"http://127.0.0.1:{gw_port}"
    await wait_http(base + "/health", gw.p, log=gw.tail)

    sessions = [f"bench-session-{i}" for i in range(args.sessions)]
    home: dict[str, str] = {}
    hits = {"surviving": [0, 0], "moved": [0, 0]}  # [on home replica, total] per kind of session
    before, after = Phase(), Phase()
    phase = before
    victim = "replica-1"
    stop = asyncio.Event()
    rng = random.Random(7)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            sid = rng.choice(sessions)
            current = phase
            who = await one(session, base + "/v1/messages", sid, current)
            if who is None:
                continue
            first = home.setdefault(sid, who) if current is before else home.get(sid)
            if first is None:
                continue  # a session first seen after the kill has no home from before it
            if first != victim:
                hits["surviving"][0] += who == first
                hits["surviving"][1] += 1
            elif current is after:  # the victim's sessions, once it is gone: each must have moved
                hits["moved"][0] += who == first
                hits["moved"][1] += 1

    connector = aiohttp.TCPConnector(limit=args.workers * 2)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        tasks = [asyncio.ensure_future(worker(session)) for _ in range(args.workers)]
        await asyncio.sleep(args.seconds)
        ups[1].p.kill()  # SIGKILL: no goodbye to the open streams
        phase = after
        await asyncio.sleep(args.seconds)
        stop.set()
        await asyncio.gather(*tasks)
        async with session.get(base + "/health") as resp:
            health = await resp.json()
    gw.stop()
    for proc in ups:
        proc.stop()

    replicas = health["backends"]["pool"].get("replicas", [])
    result = {
        "quick": args.quick, "seconds_per_phase": args.seconds, "workers": args.workers, "sessions": args.sessions,
        "affinity_hit_rate_surviving": _rate(hits["surviving"]),
        "affinity_hit_rate_moved": _rate(hits["moved"]),
        "before_kill": before.summary(), "after_kill": after.summary(),
        "victim_ejected": any(r["url"] == urls[1] and not r["ok"] for r in replicas),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"replicas bench ({'quick' if args.quick else 'full'}): 3 replicas, {args.workers} workers, "
          f"{args.sessions} sessions, {args.seconds:g} s before and after killing {victim}")
    print(f"  session affinity hit rate: {_pct_text(result['affinity_hit_rate_surviving'])} for sessions on "
          f"surviving replicas; {_pct_text(result['affinity_hit_rate_moved'])} of the victim's sessions' requests "
          "after the kill still went to it (0% expected)")
    for name, summary in (("before kill", result["before_kill"]), ("after kill", result["after_kill"])):
        print(f"  {name}: {summary['requests']} requests, {summary['ok']} ok, errors: "
              f"{summary['failed_before_content']} before any content, {summary['cut_mid_stream']} cut mid-stream; "
              f"TTFT p50 {summary['p50_ttft_ms']} ms, p95 {summary['p95_ttft_ms']} ms")
    print(f"  victim ejected in /health: {result['victim_ejected']}")
    print(f"  wrote {out}")
    return 0


def _rate(pair: list[int]) -> float | None:
    return round(pair[0] / pair[1], 4) if pair[1] else None


def _pct_text(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate * 100:.1f}%"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="load before the kill, and again after it")
    parser.add_argument("--workers", type=int, default=32, help="streaming requests kept in flight")
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--chunk-delay", type=float, default=0.02, help="seconds between an upstream's chunks")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (3 s per phase, 8 workers)")
    parser.add_argument("--out", default=str(BENCH / "results" / "replicas.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.workers, args.sessions = 3.0, 8, 40
    return args


if __name__ == "__main__":
    sys.exit(run_main(amain, parse_args()))
