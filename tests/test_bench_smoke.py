"""Every bench script runs in its quick mode, so none of them rots between measurements.

These are smoke runs: they check that each script starts what it needs, finishes and prints its
report, not the figures themselves (those are read from full runs, never asserted on in tests).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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
    text = _bench("run.py", "--quick", "--concurrency", "1,8", "--rounds", "1", "--out", str(out), codes=(0, 1))
    data = json.loads(out.read_text())
    assert data["quick"] is True and data["results"] and data["checks"], text
    assert "PASS" in text or "FAIL" in text


def test_load_quick(tmp_path):
    out = tmp_path / "load.json"
    text = _bench("load.py", "--quick", "--out", str(out))
    data = json.loads(out.read_text())
    assert data, text
    assert "error" in text.lower()


def test_log_replay_bench_quick(tmp_path):
    text = _bench("log_replay_bench.py", "--quick", "--dir", str(tmp_path))
    assert "baseline: count lines" in text and "summary (every record)" in text
    assert "x baseline" in text


def test_profile_summary(tmp_path):
    # py-spy's collapsed format: "frame;frame;frame count" per line.
    profile = tmp_path / "profile.txt"
    profile.write_text(
        "main (run.py:1);handle_messages (gateway/messages.py:10);read_body (gateway/json_body.py:5) 30\n"
        "main (run.py:1);MessageStream.text (gateway/message_stream.py:40) 20\n"
        "main (run.py:1);mystery (x.py:3) 10\n")
    text = _bench("profile_summary.py", str(profile), "--cpu-ms", "6", timeout=60)
    assert "60 busy samples" in text
    assert "body read + JSON parse" in text and "ms/req" in text


def test_mlx_bench_smoke():
    # The tests' tiny demo model, in the cache the Claude Code end-to-end tests use too.
    text = _bench("mlx_bench.py", "--smoke", timeout=600)
    assert "tok/s" in text


def test_tool_load_cache_quick():
    text = _bench("tool_load_cache.py", "--quick", timeout=600)
    assert "baseline" in text and "embedded MLX" in text, text


def test_replicas_quick(tmp_path):
    out = tmp_path / "replicas.json"
    text = _bench("replicas.py", "--quick", "--out", str(out))
    data = json.loads(out.read_text())
    assert data["quick"] is True and data["before_kill"]["requests"] and data["after_kill"]["requests"], text
    assert "session affinity hit rate" in text and "p95" in text
def test_context_budget_report(tmp_path):
    text = _bench("context_budget_report.py", "--quick")
    assert "shorten_tool_descriptions" in text and "clear_tool_results" in text
    log = tmp_path / "requests.jsonl"
    log.write_text(json.dumps({"path": "/v1/messages", "body": {
        "model": "m", "max_tokens": 10, "tools": [{"name": "T", "description": "d" * 5000, "input_schema": {}}],
        "messages": [{"role": "user", "content": "hi"}]}}) + "\n")
    text = _bench("context_budget_report.py", "--log", str(log))
    assert "1 tools, 1 messages" in text
