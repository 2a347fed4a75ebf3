"""log_replay speed on a large request log: `uv run python bench/log_replay_bench.py [--mb 200] [--quick]`.

Writes a synthetic log (~200 MB by default) with the gateway's own line renderer: Claude-Code-
shaped bodies (bench/claude_code_request.py, 5–85 KB), count_tokens calls, errors, unknown-route
probes, rotated into PATH.1.gz like the gateway does. Then times, in this process:

  baseline   reading every line as bytes and counting them (what `wc -l` does, in Python)
  summary    the summary over every record (no filter)
  filtered   --errors-only, --session ID and --since (the byte-needle fast paths)
  json       `--json` of every record (whole records, as piped to jq)

and prints each as a ratio to the baseline measured in the same run. `--no-bodies` writes a log
as `log.bodies = false` would (small lines: per-line cost dominates).
"""
from __future__ import annotations

import argparse
import io
import os
import random
import sys
import tempfile
import time
from contextlib import redirect_stdout
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.claude_code_request import build_request
from gateway.logfile import RotatingFile
from gateway.protocol.errors import ErrorInfo
from gateway.outcome import RequestOutcome
from gateway.reqlog import LineRenderer, log_line
from tools.log_replay import main as log_replay
from tools.logread import iter_lines, log_files


def write_log(path: Path, megabytes: float, bodies: bool) -> int:
    """The synthetic log; returns its record count."""
    rng = random.Random(7)
    templates = [build_request(turns=t, target_bytes=b) for t, b in ((4, 5_000), (12, 30_000), (30, 85_000))]
    sessions = [f"sess-{i:04d}" for i in range(200)]
    start = datetime(2025, 6, 1, tzinfo=timezone.utc)
    # Rotate like the gateway (a quarter of the log goes to PATH.1.gz) so the gzip path is timed too.
    out = RotatingFile(path, max_bytes=int(megabytes * 1024 * 1024 * 0.75), keep=1, compress=True)
    render = LineRenderer().render  # the request log's own renderer, so lines are byte-identical
    written, n = 0, 0
    while written < megabytes * 1024 * 1024:
        n += 1
        kind = rng.random()
        rec = dict(request_id=f"req_{n:024d}", method="POST", path="/v1/messages",
                   ts=(start + timedelta(seconds=n)).isoformat(timespec="milliseconds"),
                   session_id=rng.choice(sessions), user_agent="claude-cli/2.1.0 (external, cli)",
                   model="claude-opus-4-8", backend="gpu", backend_model="Qwen/Qwen3-Coder-30B-A3B-Instruct",
                   body=rng.choice(templates), status=200, stream=True,
                   duration_ms=round(rng.uniform(500, 20000), 2), ttft_ms=round(rng.uniform(50, 2000), 2),
                   input_tokens=rng.randint(1000, 30000), output_tokens=rng.randint(1, 2000),
                   cache_read_tokens=rng.randint(0, 20000), stop_reason=rng.choice(["end_turn", "tool_use"]))
        if kind < 0.2:
            rec.update(path="/v1/messages/count_tokens", stream=None, ttft_ms=None, output_tokens=None,
                       stop_reason=None)
        elif kind < 0.25:
            rec.update(status=529, stop_reason=None,
                       error=ErrorInfo("overloaded_error", "backend 'gpu' answered 503: busy"))
        elif kind < 0.26:
            rec.update(event="unknown_route", method="GET", path="/v1/organizations/x", status=404, body=None,
                       model=None, backend=None, backend_model=None, error=ErrorInfo("not_found_error", "no route"))
        line = render(log_line(RequestOutcome(**rec), bodies)) + b"\n"
        out.write(line)
        written += len(line)
    out.close()
    return n


def timed(label: str, fn, baseline: float | None = None) -> float:
    t0 = time.perf_counter()
    result = fn()
    dt = time.perf_counter() - t0
    ratio = f"{dt / baseline:6.2f}x baseline" if baseline else "   (baseline)"
    print(f"{label:<34} {dt:7.3f} s  {ratio}   {result}")
    return dt


def run_cli(*args: str) -> str:
    sink = io.StringIO()
    buf = io.BytesIO()
    sink.buffer = buf  # log_replay writes bytes to sys.stdout.buffer
    with redirect_stdout(sink):
        log_replay(list(args))
    lines = buf.getvalue().count(b"\n")
    return f"{lines} output lines"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=200, help="log size in MB before compression (default 200)")
    ap.add_argument("--no-bodies", action="store_true", help="write lines as log.bodies = false would")
    ap.add_argument("--dir", help="where to write the log (default: a temporary directory, removed after)")
    ap.add_argument("--quick", action="store_true", help="a ~2 MB log: a smoke run, not a measurement")
    args = ap.parse_args(argv)
    if args.quick:
        args.mb = 2
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "requests.jsonl"
        t0 = time.perf_counter()
        n = write_log(path, args.mb, not args.no_bodies)
        files = log_files([str(path)])
        sizes = ", ".join(f"{f.name} {os.path.getsize(f) / 1e6:.0f} MB" for f in files)
        print(f"wrote {n} records in {time.perf_counter() - t0:.1f} s: {sizes}\n")
        f = ["--file", str(path), "--json"]
        base = timed("baseline: count lines", lambda: f"{sum(1 for _ in iter_lines(files))} lines")
        timed("summary (every record)", lambda: run_cli(*f, "summary"), base)
        timed("--errors-only", lambda: run_cli(*f, "--errors-only"), base)
        timed("--session sess-0042", lambda: run_cli(*f, "--session", "sess-0042"), base)
        timed("--since (last ~10%)", lambda: run_cli(*f, "--since", _tenth_from_end(n)), base)
        timed("--json (every whole record)", lambda: run_cli(*f), base)
        timed("--status 5xx summary", lambda: run_cli(*f, "--status", "5xx", "summary"), base)


def _tenth_from_end(n: int) -> str:
    start = datetime(2025, 6, 1, tzinfo=timezone.utc)
    return (start + timedelta(seconds=int(n * 0.9))).isoformat()


if __name__ == "__main__":
    main()
