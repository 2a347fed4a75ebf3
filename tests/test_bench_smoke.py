"""Every bench script runs in its quick mode, so none of them rots between measurements.

These are smoke runs: they check that each script starts what it needs, finishes and prints its
report (every row, each with its ratio to the baseline), not the figures themselves (those are read
from full runs, never asserted on in tests).
"""
from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.support.net import free_port, wait_http_sync

ROOT = Path(__file__).resolve().parent.parent
FLOAT = r"\d+\.\d+"


def _bench(script: str, *args: str, timeout: float = 300, codes: tuple[int, ...] = (0,)) -> str:
    """Run one bench script; `codes` are the exit codes that mean it ran to the end."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode in codes, f"{script} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stdout


def test_run_quick(tmp_path):
    out = tmp_path / "run.json"
    # Exit 1 is a missed target: a measurement on a busy machine, not a broken script.
    text = _bench("run.py", "--quick", "--concurrency", "1", "--rounds", "1", "--tokens", "8", "--out", str(out),
                  codes=(0, 1))
    data = json.loads(out.read_text())
    assert data["quick"] is True and {r["scenario"] for r in data["results"]} == {"realistic", "cpu", "json"}, text
    for res in data["results"]:
        for row in res["rows"]:
            assert row["direct"]["requests"] == row["gateway"]["requests"] > 0, row
            assert row["direct"]["errors"] == row["gateway"]["errors"] == 0, row
            assert row["throughput_ratio"] > 0 and row["gateway"]["gateway_cpu_ms_per_req"] > 0, row
    # One printed verdict per target, in order: PASS, FAIL, or n/a where this run could not measure it.
    verdicts = re.findall(r"^(PASS|FAIL|n/a) +(.+): \S+$", text, re.M)
    word = {True: "PASS", False: "FAIL", None: "n/a"}
    assert verdicts == [(word[c["pass"]], c["target"]) for c in data["checks"]], text
    assert ("PASS", "no errors") in verdicts, text


def test_load_quick(tmp_path):
    out = tmp_path / "load.json"
    text = _bench("load.py", "--quick", "--out", str(out))
    data = json.loads(out.read_text())
    assert data["streams"] == 8 and data["completed"] > 0 and data["errors"] == 0 and data["gateway_survived"]
    assert f"{data['completed']} completed, {data['req_per_s']} req/s" in text
    assert "PASS  errors: 0" in text and "PASS  RSS flat" in text, text


def test_log_replay_bench_quick(tmp_path):
    text = _bench("log_replay_bench.py", "--quick", "--dir", str(tmp_path))
    records = int(re.search(r"^wrote (\d+) records", text, re.M).group(1))
    rows = {m[0].strip(): (m[1], m[2]) for m in re.findall(
        rf"^(.+?)\s+{FLOAT} s\s+(?:({FLOAT})x baseline|\(baseline\))\s+(\d+) (?:output )?lines$", text, re.M)}
    assert list(rows) == ["baseline: count lines", "summary (every record)", "--errors-only", "--session sess-0042",
                          "--since (last ~10%)", "--json (every whole record)", "--status 5xx summary"], text
    assert all(float(ratio) > 0 for ratio, _ in list(rows.values())[1:])
    # Every line is one record, and --json prints each whole.
    assert int(rows["baseline: count lines"][1]) == int(rows["--json (every whole record)"][1]) == records
    assert 0 < int(rows["--errors-only"][1]) < records


def test_profile_summary(tmp_path):
    # py-spy's collapsed format: "frame;frame;frame count" per line.
    profile = tmp_path / "profile.txt"
    profile.write_text(
        "main (run.py:1);handle_messages (gateway/messages.py:10);read_body (gateway/json_body.py:5) 30\n"
        "main (run.py:1);MessageStream.text (gateway/message_stream.py:40) 20\n"
        "main (run.py:1);mystery (x.py:3) 10\n")
    text = _bench("profile_summary.py", str(profile), "--cpu-ms", "6", timeout=60)
    assert text.splitlines() == [
        "60 busy samples (0 idle worker-thread samples left out)",
        " 50.0%   3.00 ms/req  body read + JSON parse",
        " 33.3%   2.00 ms/req  MessageStream (events → Anthropic events)",
        " 16.7%   1.00 ms/req  other: mystery (x.py)"]


def _mlx_rows(text: str) -> dict[str, tuple[float, str]]:
    return {m[0]: (float(m[1]), m[2]) for m in re.findall(
        rf"^(decode tok/s|TTFT turn 2 / turn 1|aggregate tok/s) .*?\s({FLOAT})\s+[≥≤] {FLOAT}\s+(PASS|FAIL)$", text,
        re.M)}


def test_mlx_bench_smoke():
    # The tests' tiny demo model, in the cache the Claude Code end-to-end tests use too.
    text = _bench("mlx_bench.py", "--smoke", timeout=900)
    rows = _mlx_rows(text)
    assert set(rows) == {"decode tok/s", "TTFT turn 2 / turn 1", "aggregate tok/s"}, text
    assert all(ratio > 0 for ratio, _ in rows.values())


def test_tool_load_cache_quick():
    text = _bench("tool_load_cache.py", "--quick", timeout=900)
    rows = {m[0].strip(): (int(m[1]), int(m[2]), int(m[3]), float(m[4])) for m in re.findall(
        rf"^(.+?)\s+(\d+)\s+(\d+)\s+(\d+)\s+({FLOAT})x$", text, re.M)}
    assert list(rows) == ["baseline: inserted in place", "remote backends: appended",
                          "embedded MLX: at the reference"], text
    assert rows["baseline: inserted in place"][3] == 1.0
    for before, after, reusable, ratio in rows.values():
        assert 0 < reusable <= before < after and ratio > 0


def test_replicas_quick(tmp_path):
    out = tmp_path / "replicas.json"
    text = _bench("replicas.py", "--quick", "--out", str(out))
    data = json.loads(out.read_text())
    assert data["quick"] is True and data["before_kill"]["requests"] and data["after_kill"]["requests"], text
    assert "session affinity hit rate" in text and "p95" in text
    for phase in ("before", "after"):
        d = data[f"{phase}_kill"]
        assert f"{phase} kill: {d['requests']} requests, {d['ok']} ok" in text, text


def test_context_budget_report(tmp_path):
    text = _bench("context_budget_report.py", "--quick")
    edits = re.findall(r"^  (\S+(?: \S+)*?)\s+(\d+) tokens  saved\s+(\d+)\s+(\d+\.\d)%$", text, re.M)
    names = [e[0] for e in edits]
    assert "shorten_tool_descriptions" in names and "clear_tool_results (keep 3)" in names, text
    # Each edit works on what the previous one left.
    for (_, tokens, saved, _), (_, following, _, _) in itertools.pairwise(edits):
        assert int(tokens) - int(saved) == int(following)
    log = tmp_path / "requests.jsonl"
    log.write_text(json.dumps({"path": "/v1/messages", "body": {
        "model": "m", "max_tokens": 10, "tools": [{"name": "T", "description": "d" * 5000, "input_schema": {}}],
        "messages": [{"role": "user", "content": "hi"}]}}) + "\n")
    text = _bench("context_budget_report.py", "--log", str(log))
    assert "1 tools, 1 messages" in text


def test_claude_code_request_prints_its_size():
    text = _bench("claude_code_request.py", timeout=60)
    total, tools, messages, tool_bytes = map(int, re.fullmatch(
        r"(\d+) bytes, (\d+) tools, (\d+) messages, tools (\d+) bytes\n", text).groups())
    assert tools > 0 and messages > 0 and 0 < tool_bytes < total


def test_fake_upstream_streams_the_tokens_it_was_told():
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "fake_upstream.py"), "--port", str(port),
                             "--tokens", "5", "--interval-ms", "0"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        models = f"http://127.0.0.1:{port}/v1/models"
        wait_http_sync(models, proc, timeout=20, log=lambda: proc.stderr.read().decode() if proc.poll() is not None else "")
        with urllib.request.urlopen(models, timeout=2) as resp:
            assert json.load(resp)["data"][0]["id"] == "bench-model"
        body = json.dumps({"model": "bench-model", "stream": True, "stream_options": {"include_usage": True},
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            lines = [ln for ln in resp.read().decode().split("\n\n") if ln]
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
        assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")) == 5
        assert chunks[-1]["usage"]["completion_tokens"] == 5
    finally:
        proc.terminate()
        proc.wait(10)
