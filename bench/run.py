"""Gateway vs direct-to-upstream benchmark: `uv run python bench/run.py [--quick]`.

Starts bench/fake_upstream.py and the real `claude-gateway serve` as subprocesses on free
127.0.0.1 ports, then sends the Claude-Code-shaped request (bench/claude_code_request.py) at
concurrency 1, 8 and 32, alternating rounds DIRECT (the OpenAI body the gateway would send, straight
to the fake upstream) and THROUGH the gateway, so both see the same machine state.

Two scenarios: `realistic` (5 ms per token, latency-bound like a GPU server) and `cpu` (0 ms per
token: pure CPU cost, the gateway's peak rate on this machine), and the cpu scenario at c=32 once more
with `serve --workers N`. The report ends with issue 12's targets, each PASS, FAIL or n/a.
Reports p50/p95 TTFT, req/s, the gateway's CPU ms per request (utime+stime from /proc/PID/stat; the
JSON also has the ns-precise schedstat figure) and RSS; writes bench/results/latest.json. Everything
started is stopped on exit. The load generator shares the machine with both servers, so other work on
it (see the load average printed with the table) moves the numbers: compare runs taken back to back.

    --gateway-src DIR   run the gateway from another checkout, for before/after comparisons
    --py-spy FILE       profile the gateway (then: python bench/profile_summary.py FILE)
"""
from __future__ import annotations

import argparse
import asyncio
import atexit
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from gateway.protocol.backend import BackendRequest  # noqa: E402
from backends.translate import Dialect, to_openai  # noqa: E402
from claude_code_request import build_request, claude_code_headers  # noqa: E402
from fake_upstream import MODEL, fewest_deltas  # noqa: E402
from gateway.protocol.anthropic import parse_messages_request  # noqa: E402
from gateway.normalize import normalize  # noqa: E402
from tests.support.net import free_port, wait_http  # noqa: E402

TOKEN = "sk-bench-local"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CONTEXT_WINDOW = 262144  # max_tokens 64000 + the ~25k-token prompt fit without clamping
# The targets of issue 12 ("cheaper per request, every core used").
TTFT_TARGET_MS = 2.0  # p50 added TTFT at c=1 (realistic)
CPU_TARGET_MS = 2.5  # gateway CPU per request (cpu scenario: 0 ms/token upstream)
RSS_TARGET_MB = 100.0  # peak RSS of one worker
WORKERS_TARGET = 1.6  # req/s of --workers N over one worker at c=32 (cpu scenario)
_DIRECT_FIRST = re.compile(rb'"content":"[^"]')  # first chunk that carries text
_GATEWAY_FIRST = b"event: content_block_delta"


@dataclass
class Scenario:
    name: str
    interval_ms: float
    counts: dict[int, int]  # concurrency → requests per side (direct, gateway)
    judged: bool  # the targets apply
    workers: int = 1  # `serve --workers N`
    stream: bool = True  # False: non-streaming requests (JSON answers), both sides


@dataclass
class Side:
    """Measurements of one side (direct or gateway) at one concurrency, over all its rounds."""

    ttft_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    gw_cpu_ticks: int = 0
    up_cpu_ticks: int = 0
    gw_sched_ns: int = 0

    @property
    def ok(self) -> int:
        return len(self.ttft_ms)

    def summary(self) -> dict:
        return {"requests": self.ok, "errors": len(self.errors), "error_samples": self.errors[:3],
                "ttft_p50_ms": _pct(self.ttft_ms, 50), "ttft_p95_ms": _pct(self.ttft_ms, 95),
                "total_p50_ms": _pct(self.total_ms, 50), "total_p95_ms": _pct(self.total_ms, 95),
                "req_per_s": self.ok / self.wall_s if self.wall_s else 0.0,
                "gateway_cpu_ms_per_req": _per_req(self.gw_cpu_ticks, self.ok),
                "upstream_cpu_ms_per_req": _per_req(self.up_cpu_ticks, self.ok),
                "gateway_schedstat_ms_per_req": self.gw_sched_ns / 1e6 / self.ok if self.ok else None}


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


def _per_req(ticks: int, n: int) -> float | None:
    return ticks * 1000 / CLK_TCK / n if n else None


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process and of the processes of its group (`serve --workers N` forks
    them), all threads, in clock ticks."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended between listdir and open
        if int(entry) == pid or int(fields[2]) == pid:  # fields[2]: the process group
            total += int(fields[11]) + int(fields[12])
    return total


def cpu_ns(pid: int) -> int:
    """Precise on-CPU time of all of a process's threads (/proc/PID/task/*/schedstat), in ns."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that ended between listdir and open
    return total


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


# -- processes --------------------------------------------------------------------------------------

_RUNNING: list["Proc"] = []


class Proc:
    """A subprocess we started; stopped with SIGTERM, then SIGKILL (at exit too, whatever happened)."""

    def __init__(self, name: str, argv: list[str], log_path: Path, stop_signal: int = signal.SIGTERM,
                 cwd: Path = ROOT, env: dict | None = None):
        self.name = name
        self.stop_signal = stop_signal
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.p = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                  start_new_session=True)
        self.pid = self.p.pid
        _RUNNING.append(self)

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(self.stop_signal)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._log.close()
        if self in _RUNNING:
            _RUNNING.remove(self)

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]


def gateway_argv(src: str | None = None) -> list[str]:
    script = Path(sys.executable).parent / "claude-gateway"
    # The console script itself, not `uv run` or a shell: its PID is the gateway's Python process.
    return [str(script)] if script.exists() and not src else [sys.executable, "-m", "gateway.cli"]


def gateway_env(src: str | None) -> dict | None:
    """With --gateway-src, the gateway's modules come from that checkout (A/B runs of two versions)."""
    if not src:
        return None
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}


def gateway_toml(port: int, upstream_port: int, log_path: Path) -> str:
    return f"""
[server]
host = "127.0.0.1"
port = {port}
auth_token = "{TOKEN}"
ping_interval_s = 5.0

[log]
requests = "{log_path}"
bodies = true
level = "info"

[routing]
default = "fake"

[backends.fake]
type = "openai"
base_url = "http://127.0.0.1:{upstream_port}/v1"
model = "{MODEL}"
context_window = {CONTEXT_WINDOW}
timeout_s = 60
"""


# -- load generation --------------------------------------------------------------------------------

@dataclass
class Target:
    name: str  # direct | gateway
    url: str
    body: bytes
    headers: dict[str, str]
    first: object  # bytes marker or compiled regex: the first text chunk
    done: bytes  # the stream's last frame
    delta: bytes | None  # one occurrence per token (None: a JSON answer, one piece)
    session: aiohttp.ClientSession | None = None

    def found_first(self, buf: bytes) -> bool:
        return self.first in buf if isinstance(self.first, bytes) else self.first.search(buf) is not None


async def one_request(t: Target, tokens: int, side: Side) -> None:
    t0 = time.perf_counter()
    ttft = None
    parts: list[bytes] = []
    try:
        async with t.session.post(t.url, data=t.body, headers=t.headers) as resp:
            if resp.status != 200:
                side.errors.append(f"HTTP {resp.status}: {(await resp.read())[:200]!r}")
                return
            async for chunk in resp.content.iter_any():
                parts.append(chunk)
                if ttft is None and t.found_first(b"".join(parts) if len(parts) > 1 else chunk):
                    ttft = time.perf_counter()
        end = time.perf_counter()
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        side.errors.append(f"{type(exc).__name__}: {exc}")
        return
    data = b"".join(parts)
    deltas = data.count(t.delta) if t.delta is not None else tokens
    if ttft is None or t.done not in data[-200:] or not fewest_deltas(tokens) <= deltas <= tokens:
        side.errors.append(f"bad stream: {deltas} deltas, tail {data[-120:]!r}")
        return
    side.ttft_ms.append((ttft - t0) * 1000)
    side.total_ms.append((end - t0) * 1000)


async def run_round(t: Target, concurrency: int, n: int, tokens: int, side: Side,
                    gw_pid: int, up_pid: int) -> None:
    """`n` requests from `concurrency` workers; adds wall time and CPU deltas to `side`."""
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one_request(t, tokens, side)

    g0, u0, s0, w0 = cpu_ticks(gw_pid), cpu_ticks(up_pid), cpu_ns(gw_pid), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    side.wall_s += time.perf_counter() - w0
    side.gw_cpu_ticks += cpu_ticks(gw_pid) - g0
    side.up_cpu_ticks += cpu_ticks(up_pid) - u0
    side.gw_sched_ns += cpu_ns(gw_pid) - s0


def whole(body: bytes) -> bytes:
    """The same request without streaming (what a non-streaming client sends)."""
    data = orjson.loads(body)
    data.pop("stream_options", None)
    return orjson.dumps({**data, "stream": False})


def direct_body(body: dict) -> bytes:
    """The OpenAI chat body the gateway sends upstream for `body` (same code path as the backend)."""
    req = normalize(parse_messages_request(body))
    breq = BackendRequest(req, MODEL, req.max_tokens or 1)
    return orjson.dumps(to_openai(breq, Dialect()))


async def run_scenario(sc: Scenario, args, tmp: Path, anthropic_body: bytes, openai_body: bytes) -> dict:
    up_port, gw_port = free_port(), free_port()
    upstream = Proc("fake upstream", [sys.executable, str(BENCH / "fake_upstream.py"), "--port", str(up_port),
                                      "--tokens", str(args.tokens), "--interval-ms", str(sc.interval_ms)],
                    tmp / f"upstream-{sc.name}.log")
    procs = [upstream]  # stopped in reverse order: profiler, gateway, upstream
    try:
        await wait_http(f"http://127.0.0.1:{up_port}/v1/models", upstream.p, log=upstream.tail)
        cfg = tmp / f"gateway-{sc.name}.toml"
        cfg.write_text(gateway_toml(gw_port, up_port, tmp / f"requests-{sc.name}.jsonl"))
        workers = ["--workers", str(sc.workers)] if sc.workers > 1 else []
        gateway = Proc("gateway", gateway_argv(args.gateway_src) + ["serve", "--config", str(cfg), *workers],
                       tmp / f"gateway-{sc.name}.log", cwd=Path(args.gateway_src or ROOT),
                       env=gateway_env(args.gateway_src))
        procs.append(gateway)
        await wait_http(f"http://127.0.0.1:{gw_port}/", gateway.p, log=gateway.tail)
        rss_idle = rss_mb(gateway.pid)

        conn = dict(limit=0, force_close=False)
        timeout = aiohttp.ClientTimeout(total=120)
        direct_headers = {"Authorization": "Bearer none", "Content-Type": "application/json"}
        direct_url, gateway_url = f"http://127.0.0.1:{up_port}/v1/chat/completions", \
            f"http://127.0.0.1:{gw_port}/v1/messages?beta=true"
        if sc.stream:
            direct = Target("direct", direct_url, openai_body, direct_headers,
                            _DIRECT_FIRST, b"data: [DONE]", b'"delta":{"content":"')
            through = Target("gateway", gateway_url, anthropic_body, claude_code_headers(TOKEN), _GATEWAY_FIRST,
                             b"event: message_stop", b"event: content_block_delta")
        else:  # one JSON answer each: its "first token" is the whole answer
            direct = Target("direct", direct_url, whole(openai_body), direct_headers,
                            b'"finish_reason":"stop"', b'"total_tokens"', None)
            through = Target("gateway", gateway_url, whole(anthropic_body), claude_code_headers(TOKEN),
                             b'"stop_reason":"end_turn"', b'"output_tokens"', None)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(**conn), timeout=timeout) as s1, \
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(**conn), timeout=timeout) as s2:
            direct.session, through.session = s1, s2
            warm = Side()
            for t in (direct, through):  # connections, imports, first-request caches
                await run_round(t, 8, 16, args.tokens, warm, gateway.pid, upstream.pid)
            if warm.errors:
                raise RuntimeError(f"warm-up failed: {warm.errors[:3]}\ngateway log:\n{gateway.tail()}")
            if args.py_spy and sc.name == args.py_spy_scenario:
                procs.append(start_py_spy(gateway.pid, args.py_spy))
            rows = []
            for c, n in sc.counts.items():
                sides = {"direct": Side(), "gateway": Side()}
                rounds = args.rounds
                per_round = [n // rounds + (1 if i < n % rounds else 0) for i in range(rounds)]
                for i, k in enumerate(per_round):
                    order = (direct, through) if i % 2 == 0 else (through, direct)
                    for t in order:
                        await run_round(t, c, k, args.tokens, sides[t.name], gateway.pid, upstream.pid)
                rows.append(_row(c, sides["direct"].summary(), sides["gateway"].summary(), rss_mb(gateway.pid)))
                _print_progress(sc, rows[-1])
        result = {"scenario": sc.name, "interval_ms": sc.interval_ms, "workers": sc.workers, "tokens": args.tokens, "judged": sc.judged,
                  "gateway_rss_idle_mb": round(rss_idle, 1), "gateway_rss_peak_mb": round(rss_mb(gateway.pid, "VmHWM"), 1),
                  "rows": rows}
        return result
    finally:
        for p in reversed(procs):
            p.stop()


def start_py_spy(pid: int, out: str) -> Proc:
    exe = shutil.which("py-spy")
    if exe is None:
        raise SystemExit("--py-spy needs py-spy on PATH: uv run --with py-spy python bench/run.py --py-spy FILE")
    fmt = "speedscope" if out.endswith(".json") else "raw" if out.endswith(".txt") else "flamegraph"
    return Proc("py-spy", [exe, "record", "--pid", str(pid), "--rate", "250", "--format", fmt, "-o", out],
                Path(out).with_suffix(".log"), stop_signal=signal.SIGINT)  # SIGINT: py-spy writes its file


def _row(c: int, d: dict, g: dict, rss: float) -> dict:
    added = g["ttft_p50_ms"] - d["ttft_p50_ms"] if g["ttft_p50_ms"] is not None and d["ttft_p50_ms"] is not None else None
    ratio = g["req_per_s"] / d["req_per_s"] if d["req_per_s"] else None
    return {"concurrency": c, "direct": d, "gateway": g, "added_ttft_p50_ms": added,
            "added_ttft_p95_ms": (g["ttft_p95_ms"] - d["ttft_p95_ms"]) if added is not None else None,
            "throughput_ratio": ratio, "gateway_rss_mb": round(rss, 1)}


def _print_progress(sc: Scenario, row: dict) -> None:
    g, d = row["gateway"], row["direct"]
    print(f"  [{sc.name}] c={row['concurrency']}: direct {d['requests']} ok / gateway {g['requests']} ok, "
          f"errors {d['errors']}/{g['errors']}", file=sys.stderr, flush=True)


# -- report -----------------------------------------------------------------------------------------

def _f(v: float | None, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def verdicts(results: list[dict]) -> list[dict]:
    """Issue 12's targets, each PASS/FAIL (or n/a when this run did not measure it)."""
    by = {r["scenario"]: r for r in results if r.get("workers", 1) == 1}
    rows = {name: {r["concurrency"]: r for r in res["rows"]} for name, res in by.items()}
    out = []

    def check(target: str, value: float | None, ok: bool | None) -> None:
        out.append({"scenario": "all", "target": target, "value": value, "pass": ok})

    errors = sum(r["direct"]["errors"] + r["gateway"]["errors"] for res in results for r in res["rows"])
    check("no errors", errors, errors == 0)
    cpu = [r["gateway"]["gateway_cpu_ms_per_req"] for r in rows.get("cpu", {}).values()]
    v = max(cpu) if cpu and None not in cpu else None
    check(f"gateway CPU per request <= {CPU_TARGET_MS:g} ms (0 ms/token, worst c)", v,
          None if v is None else v <= CPU_TARGET_MS)
    v = rows.get("realistic", {}).get(1, {}).get("added_ttft_p50_ms")
    check(f"c=1 added p50 TTFT <= {TTFT_TARGET_MS:g} ms (5 ms/token)", v, None if v is None else v <= TTFT_TARGET_MS)
    # Per relayed token: what pacing adds to a request's CPU (realistic minus cpu scenario, same c),
    # per token, for the gateway and for the fake upstream serving the direct side.
    worst = None
    tokens = results[0]["tokens"] if results else 0
    for c in set(rows.get("realistic", {})) & set(rows.get("cpu", {})):
        real, burst = rows["realistic"][c], rows["cpu"][c]
        gw = (real["gateway"]["gateway_cpu_ms_per_req"] - burst["gateway"]["gateway_cpu_ms_per_req"]) / tokens
        up = (real["direct"]["upstream_cpu_ms_per_req"] - burst["direct"]["upstream_cpu_ms_per_req"]) / tokens
        ratio = gw / up if up > 0 else float("inf")
        worst = ratio if worst is None else max(worst, ratio)
    check("gateway CPU per token <= fake upstream's (5 ms/token; ratio, worst c)", worst,
          None if worst is None else worst <= 1.0)
    peaks = [res["gateway_rss_peak_mb"] for res in results if res.get("workers", 1) == 1]
    v = max(peaks) if peaks else None
    check(f"peak RSS of one worker <= {RSS_TARGET_MB:g} MB", v, None if v is None else v <= RSS_TARGET_MB)
    multi = next((res for res in results if res.get("workers", 1) > 1), None)
    one = rows.get("cpu", {}).get(32)
    if multi is None or one is None:
        check(f"--workers 2 vs 1 req/s at c=32 >= {WORKERS_TARGET:g}x", None, None)
    else:
        n = {r["concurrency"]: r for r in multi["rows"]}[32]["gateway"]["req_per_s"]
        v = n / one["gateway"]["req_per_s"] if one["gateway"]["req_per_s"] else None
        check(f"--workers {multi['workers']} vs 1 req/s at c=32 >= {WORKERS_TARGET:g}x", v,
              None if v is None else v >= WORKERS_TARGET)
    return out


def render(results: list[dict], checks: list[dict]) -> str:
    header = ["scenario", "c", "direct p50/p95 TTFT ms", "gateway p50/p95 TTFT ms", "added p50/p95 ms",
              "direct req/s", "gateway req/s", "ratio", "gw CPU ms/req", "up CPU ms/req d/g", "gw RSS MB"]
    rows = []
    for res in results:
        for r in res["rows"]:
            d, g = r["direct"], r["gateway"]
            workers = f", {res['workers']} workers" if res.get("workers", 1) > 1 else ""
            rows.append([f"{res['scenario']} ({res['interval_ms']:g} ms/tok{workers})", str(r["concurrency"]),
                         f"{_f(d['ttft_p50_ms'])} / {_f(d['ttft_p95_ms'])}",
                         f"{_f(g['ttft_p50_ms'])} / {_f(g['ttft_p95_ms'])}",
                         f"{_f(r['added_ttft_p50_ms'])} / {_f(r['added_ttft_p95_ms'])}",
                         _f(d["req_per_s"], 1), _f(g["req_per_s"], 1), _f(r["throughput_ratio"], 3),
                         _f(g["gateway_cpu_ms_per_req"]),
                         f"{_f(d['upstream_cpu_ms_per_req'])} / {_f(g['upstream_cpu_ms_per_req'])}",
                         _f(r["gateway_rss_mb"], 1)])
    widths = [max(len(x[i]) for x in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    for ch in checks:
        value = ch["value"] if isinstance(ch["value"], int) else _f(ch["value"], 3)
        verdict = "n/a " if ch["pass"] is None else "PASS" if ch["pass"] else "FAIL"
        lines.append(f"{verdict}  {ch['target']}: {value if ch['pass'] is not None else 'n/a'}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="gateway vs direct-to-upstream benchmark")
    p.add_argument("--quick", action="store_true", help="fewer requests; finishes in under a minute")
    p.add_argument("--scenario", choices=["both", "realistic", "cpu", "json"], default="both",
                   help="both: realistic, cpu and json (cpu with non-streaming requests)")
    p.add_argument("--tokens", type=int, default=64, help="tokens per answer (default 64)")
    p.add_argument("--interval-ms", type=float, default=5.0, help="per-token interval of the realistic scenario")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated levels (default 1,8,32)")
    p.add_argument("--rounds", type=int, default=0, help="alternating direct/gateway rounds per level")
    p.add_argument("--out", default=str(BENCH / "results" / "latest.json"))
    p.add_argument("--py-spy", metavar="FILE", help="profile the gateway with py-spy (.json speedscope, "
                                                     ".txt collapsed stacks, else flamegraph svg)")
    p.add_argument("--py-spy-scenario", default="cpu", help="which scenario to profile (default cpu)")
    p.add_argument("--workers", type=int, default=2,
                   help="also run the cpu scenario at c=32 with `serve --workers N` (0: skip; skipped too "
                        "when serve has no --workers)")
    p.add_argument("--gateway-src", metavar="DIR", help="run the gateway from another checkout (e.g. a git "
                                                         "worktree of an older commit) to compare versions")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 4)
    return args


def scenarios(args) -> list[Scenario]:
    levels = [int(c) for c in args.concurrency.split(",")]
    # Requests per side: enough for stable percentiles, bounded so a run stays short.
    if args.quick:
        realistic = {1: 16, 8: 64, 32: 192}
        cpu = {1: 100, 8: 240, 32: 480}
    else:
        realistic = {1: 60, 8: 240, 32: 640}
        cpu = {1: 400, 8: 1200, 32: 2400}
    out = []
    if args.scenario in ("both", "realistic"):
        out.append(Scenario("realistic", args.interval_ms, {c: realistic.get(c, 20 * c) for c in levels}, True))
    if args.scenario in ("both", "cpu"):
        out.append(Scenario("cpu", 0.0, {c: cpu.get(c, 60 * c) for c in levels}, False))
        if args.workers > 1 and 32 in levels and serve_has_workers(args.gateway_src):
            out.append(Scenario("cpu", 0.0, {32: cpu[32]}, False, workers=args.workers))
    if args.scenario in ("both", "json"):
        out.append(Scenario("json", 0.0, {c: cpu.get(c, 60 * c) // 2 for c in levels}, False, stream=False))
    return out


def serve_has_workers(src: str | None) -> bool:
    """Does this gateway's `serve` take --workers (older checkouts, via --gateway-src, may not)."""
    proc = subprocess.run(gateway_argv(src) + ["serve", "--help"], capture_output=True, text=True,
                          cwd=src or ROOT, env=gateway_env(src), timeout=60)
    return "--workers" in proc.stdout


async def amain(args) -> int:
    body = build_request()
    anthropic_body = orjson.dumps(body)
    openai_body = direct_body(body)
    print(f"request: {len(anthropic_body)} bytes Anthropic ({len(body['tools'])} tools, {len(body['messages'])} "
          f"messages) -> {len(openai_body)} bytes OpenAI; {args.tokens} tokens back", file=sys.stderr)
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp:
        for sc in scenarios(args):
            print(f"scenario {sc.name}: {sc.interval_ms:g} ms/token", file=sys.stderr, flush=True)
            results.append(await run_scenario(sc, args, Path(tmp), anthropic_body, openai_body))
    checks = verdicts(results)
    print(render(results, checks))
    load = [round(x, 2) for x in os.getloadavg()]
    print(f"\nload average at the end: {load[0]} {load[1]} {load[2]} on {os.cpu_count()} CPUs "
          f"(the benchmark itself accounts for about 2)")
    out = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "quick": args.quick, "duration_s": round(time.perf_counter() - started, 1),
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                       "loadavg_end": load},
           "request_bytes": len(anthropic_body), "openai_request_bytes": len(openai_body),
           "results": results, "checks": checks}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))
    print(f"\nwrote {args.out} ({out['duration_s']} s)")
    return 0 if all(c["pass"] is not False for c in checks) else 1


def _stop_all() -> None:
    for proc in reversed(list(_RUNNING)):
        proc.stop()


def run_main(amain_fn, args) -> int:
    """Run a benchmark's async main so that every process it started is stopped, even when killed."""
    atexit.register(_stop_all)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a killed run still stops its children
    return asyncio.run(amain_fn(args))


def main(argv: list[str] | None = None) -> int:
    return run_main(amain, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
