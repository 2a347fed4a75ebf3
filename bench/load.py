"""Sustained-load bench: `uv run python bench/load.py [--seconds 60] [--streams 128] [--quick]`.

Starts bench/fake_upstream.py and `claude-gateway serve` as subprocesses on free 127.0.0.1 ports,
then keeps `--streams` streaming requests in flight for `--seconds` (each worker sends the next
request as soon as its stream ends). Reports errors (target 0), TTFT percentiles, throughput, the
gateway's CPU, and its RSS after warm-up and at the end, sampled along the way (target: flat).
Writes bench/results/load.json. Everything started is stopped on exit, whatever happened.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from claude_code_request import build_request, claude_code_headers  # noqa: E402
from fake_upstream import fewest_deltas  # noqa: E402
from run import TOKEN, Proc, _pct, run_main, cpu_ticks, gateway_argv, gateway_toml, rss_mb  # noqa: E402
from tests.support.net import free_port, wait_http  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
FIRST = b"event: content_block_delta"
DONE = b"event: message_stop"
RSS_GROWTH_TARGET = 0.10  # RSS over the last quarter within 10% (or 10 MB) of the second quarter's


@dataclass
class Tally:
    ttft_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    rss_samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds into the run, MB)


async def one_stream(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict, tokens: int,
                     tally: Tally) -> None:
    t0 = time.perf_counter()
    ttft = None
    tail = b""
    deltas = 0
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            if resp.status != 200:
                tally.errors.append(f"HTTP {resp.status}: {(await resp.read())[:200]!r}")
                return
            async for chunk in resp.content.iter_any():
                window = tail + chunk
                if ttft is None and FIRST in window:
                    ttft = time.perf_counter()
                deltas += window.count(FIRST) - tail.count(FIRST)
                tail = window[-64:]
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        tally.errors.append(f"{type(exc).__name__}: {exc}")
        return
    if ttft is None or DONE not in tail or not fewest_deltas(tokens) <= deltas <= tokens:
        tally.errors.append(f"bad stream: {deltas}/{tokens} deltas, tail {tail!r}")
        return
    tally.ttft_ms.append((ttft - t0) * 1000)


async def sample_rss(pid: int, tally: Tally, start: float, every: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        tally.rss_samples.append((round(time.perf_counter() - start, 1), round(rss_mb(pid), 1)))
        try:
            await asyncio.wait_for(stop.wait(), every)
        except asyncio.TimeoutError:
            pass


async def amain(args) -> int:
    body_dict = build_request() if args.body == "claude-code" else {
        "model": "claude-opus-4-8", "max_tokens": 1024, "stream": True,
        "messages": [{"role": "user", "content": "Say something."}]}
    body_dict["stream"] = True
    body = orjson.dumps(body_dict)
    headers = claude_code_headers(TOKEN)
    with tempfile.TemporaryDirectory(prefix="gw-load-") as tmp_name:
        tmp = Path(tmp_name)
        up_port, gw_port = free_port(), free_port()
        upstream = Proc("fake upstream", [sys.executable, str(BENCH / "fake_upstream.py"), "--port", str(up_port),
                                          "--tokens", str(args.tokens), "--interval-ms", str(args.interval_ms)],
                        tmp / "upstream.log")
        await wait_http(f"http://127.0.0.1:{up_port}/v1/models", upstream.p, log=upstream.tail)
        cfg = tmp / "gateway.toml"
        cfg.write_text(gateway_toml(gw_port, up_port, tmp / "requests.jsonl"))
        gateway = Proc("gateway", gateway_argv() + ["serve", "--config", str(cfg)], tmp / "gateway.log")
        await wait_http(f"http://127.0.0.1:{gw_port}/", gateway.p, log=gateway.tail)
        url = f"http://127.0.0.1:{gw_port}/v1/messages?beta=true"
        print(f"load: {args.streams} concurrent streams for {args.seconds:g} s, {len(body)}-byte requests, "
              f"{args.tokens} tokens at {args.interval_ms:g} ms/token", file=sys.stderr, flush=True)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
            rss_idle = rss_mb(gateway.pid)
            # Warm-up at full concurrency: connections, caches and the buffers that `streams` bodies in
            # flight need at once are in place before the RSS baseline, so growth means a leak.
            warm = Tally()

            async def warm_worker() -> None:
                for _ in range(2):
                    await one_stream(session, url, body, headers, args.tokens, warm)

            await asyncio.gather(*(warm_worker() for _ in range(args.streams)))
            if warm.errors:
                raise SystemExit(f"warm-up failed: {warm.errors[:3]}\ngateway log:\n{gateway.tail()}")
            rss_start = rss_mb(gateway.pid)
            tally = Tally()
            stop = asyncio.Event()
            start = time.perf_counter()
            deadline = start + args.seconds
            sampler = asyncio.ensure_future(sample_rss(gateway.pid, tally, start, args.seconds / 24, stop))
            cpu0 = cpu_ticks(gateway.pid)

            async def worker() -> None:
                while time.perf_counter() < deadline:
                    await one_stream(session, url, body, headers, args.tokens, tally)

            await asyncio.gather(*(worker() for _ in range(args.streams)))
            wall = time.perf_counter() - start
            cpu_s = (cpu_ticks(gateway.pid) - cpu0) / CLK_TCK
            stop.set()
            await sampler
            rss_end = rss_mb(gateway.pid)
            rss_peak = rss_mb(gateway.pid, "VmHWM")
        alive = gateway.p.poll() is None
        gateway.stop()
        upstream.stop()
    ok = len(tally.ttft_ms)
    # Flat = no trend once the working set for `streams` requests in flight is in place: the median
    # RSS of the last quarter of the run against that of the second quarter (samples are noisy, ±5 MB).
    quarter = args.seconds / 4
    q2 = [mb for t, mb in tally.rss_samples if quarter <= t < 2 * quarter] or [rss_start]
    q4 = [mb for t, mb in tally.rss_samples if t >= 3 * quarter] or [rss_end]
    growth = statistics.median(q4) - statistics.median(q2)
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "streams": args.streams, "seconds": args.seconds, "tokens": args.tokens, "interval_ms": args.interval_ms,
        "request_bytes": len(body), "completed": ok, "errors": len(tally.errors), "error_samples": tally.errors[:5],
        "req_per_s": round(ok / wall, 1), "ttft_p50_ms": _round(_pct(tally.ttft_ms, 50)),
        "ttft_p95_ms": _round(_pct(tally.ttft_ms, 95)), "ttft_p99_ms": _round(_pct(tally.ttft_ms, 99)),
        "gateway_cpu_pct": round(100 * cpu_s / wall, 1), "gateway_cpu_ms_per_req": _round(1000 * cpu_s / ok if ok else None),
        "rss_idle_mb": round(rss_idle, 1), "rss_start_mb": round(rss_start, 1),
        "rss_end_mb": round(rss_end, 1), "rss_peak_mb": round(rss_peak, 1),
        "rss_samples": tally.rss_samples, "rss_trend_mb": round(growth, 1), "gateway_survived": alive,
    }
    flat = growth <= max(10.0, RSS_GROWTH_TARGET * rss_start)
    print(render(result, flat))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(f"wrote {out}")
    return 0 if result["errors"] == 0 and flat and alive else 1


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def render(r: dict, flat: bool) -> str:
    lines = [
        f"{r['streams']} streams x {r['seconds']:g} s: {r['completed']} completed, {r['req_per_s']} req/s",
        f"TTFT ms: p50 {r['ttft_p50_ms']}  p95 {r['ttft_p95_ms']}  p99 {r['ttft_p99_ms']}",
        f"gateway CPU: {r['gateway_cpu_pct']}% of one core, {r['gateway_cpu_ms_per_req']} ms per request",
        f"gateway RSS MB: idle {r['rss_idle_mb']}  start {r['rss_start_mb']} (after warm-up)  end {r['rss_end_mb']}  "
        f"peak {r['rss_peak_mb']}  "
        f"samples {[mb for _, mb in r['rss_samples']]}",
        f"{'PASS' if r['errors'] == 0 else 'FAIL'}  errors: {r['errors']} {r['error_samples'][:2]}",
        f"{'PASS' if flat else 'FAIL'}  RSS flat (median of the last quarter - median of the second quarter "
        f"<= max(10 MB, {RSS_GROWTH_TARGET:.0%})): {r['rss_trend_mb']:+.1f} MB",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="sustained concurrent streams through the gateway")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--streams", type=int, default=128)
    p.add_argument("--tokens", type=int, default=64, help="tokens per answer (default 64)")
    p.add_argument("--interval-ms", type=float, default=20.0, help="fake upstream time per token (default 20)")
    p.add_argument("--body", choices=["claude-code", "small"], default="claude-code",
                   help="the ~85 KB Claude-Code-shaped request (default) or a one-line prompt")
    p.add_argument("--out", default=str(BENCH / "results" / "load.json"))
    p.add_argument("--quick", action="store_true", help="8 streams for 5 s: a smoke run, not a measurement")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.streams = 5.0, 8
    return args


def main(argv: list[str] | None = None) -> int:
    return run_main(amain, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
