"""The real Claude Code CLI (npm @anthropic-ai/claude-code, pinned) in headless mode (`claude -p`)
through the gateway: a scripted OpenAI-compatible upstream drives a whole tool loop (Write a file,
run a Bash command, Read the result back, answer), and killing the CLI mid-stream cancels the
upstream generation. Plain `claude -p` (no flags) runs against `serve --demo`.

The CLI is installed once into .cache/node/ (git-ignored) by a session fixture; these tests skip,
saying why, only where npm is missing or the registry cannot be reached.
"""
from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import TOKEN, gateway_config
from tests.upstream import TEXT, TOOL, Script

CLAUDE_CODE_VERSION = "2.1.197"  # the version claude-code-traffic.md was recorded with
ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / ".cache" / "node"
CLAUDE_BIN = NODE_DIR / "node_modules" / ".bin" / "claude"
RUN_TIMEOUT_S = 120
DEMO_START_TIMEOUT_S = 900  # a first start generates the demo model (minutes on a busy CPU)


def _launchers() -> list[list[str]]:
    """Ways to start the installed CLI: the native binary that npm's postinstall puts in place, or,
    where install scripts did not run, the package's own node fallback launcher."""
    out = [[str(CLAUDE_BIN)]]
    wrapper = NODE_DIR / "node_modules" / "@anthropic-ai" / "claude-code" / "cli-wrapper.cjs"
    if shutil.which("node") and wrapper.exists():
        out.append([shutil.which("node"), str(wrapper)])
    return out


def _working_launcher() -> list[str] | None:
    """The first launcher that reports the pinned version."""
    for argv in _launchers():
        try:
            out = subprocess.run([*argv, "--version"], check=False, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.split()[:1] == [CLAUDE_CODE_VERSION]:
            return argv
    return None


@pytest.fixture(scope="session")
def claude_bin() -> list[str]:
    """argv that starts the pinned Claude Code CLI, installed into .cache/node on first use."""
    if (argv := _working_launcher()) is not None:
        return argv
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: cannot install @anthropic-ai/claude-code for the end-to-end tests")
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    try:
        out = subprocess.run([npm, "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund",
                              "--loglevel=error", f"@anthropic-ai/claude-code@{CLAUDE_CODE_VERSION}"],
                             check=False, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.skip("npm install @anthropic-ai/claude-code timed out (registry unreachable?)")
    if out.returncode != 0:
        pytest.skip(f"npm install @anthropic-ai/claude-code@{CLAUDE_CODE_VERSION} failed (registry unreachable?): "
                    + (out.stderr or out.stdout)[-500:])
    argv = _working_launcher()
    assert argv is not None, f"npm installed @anthropic-ai/claude-code@{CLAUDE_CODE_VERSION} but it does not start"
    return argv


@dataclass
class Session:
    """A finished `claude -p` run."""

    returncode: int
    result: dict  # the --output-format json result object
    stderr: str


def _claude_env(home: Path, base_url: str) -> dict:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_AUTH_TOKEN": TOKEN,
        # Nothing but the gateway: no telemetry, updates, error reports or other side traffic.
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "IS_SANDBOX": "1",  # lets --dangerously-skip-permissions run as root (CI containers)
    }


async def _start_claude(claude: list[str], prompt: str, cwd: Path, home: Path, base_url: str):
    return await asyncio.create_subprocess_exec(
        *claude, "-p", prompt, "--output-format", "json", "--dangerously-skip-permissions",
        cwd=str(cwd), env=_claude_env(home, base_url), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def _run_claude(claude: list[str], prompt: str, cwd: Path, home: Path, base_url: str) -> Session:
    proc = await _start_claude(claude, prompt, cwd, home, base_url)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    text = out.decode("utf-8", "replace").strip()
    try:
        result = json.loads(text.splitlines()[-1]) if text else {}
    except json.JSONDecodeError:
        result = {"unparsed": text}
    return Session(proc.returncode, result, err.decode("utf-8", "replace"))


def _tool_text(message: dict) -> str:
    """The text of an OpenAI `tool` message (a string or a list of text parts)."""
    content = message.get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


@dataclass
class ToolLoop:
    """Plays the model: decides each turn from the tool results it has been sent so far."""

    workdir: Path
    main_calls: list[dict] = field(default_factory=list)
    side_calls: list[dict] = field(default_factory=list)

    def __call__(self, body: dict) -> Script:
        names = {t["function"]["name"] for t in body.get("tools") or []}
        if "Write" not in names:  # title generation and other side requests
            self.side_calls.append(body)
            return TEXT('{"title": "Notes tool loop"}' if body.get("response_format") else "ok")
        self.main_calls.append(body)
        results = [m for m in body["messages"] if m["role"] == "tool"]
        if len(results) == 0:
            return TOOL("Write", {"file_path": str(self.workdir / "notes.txt"), "content": "alpha\nbeta\n"},
                        lead="I'll write the file first.", call_id="call_write")
        if len(results) == 1:
            return TOOL("Bash", {"command": "tr a-z A-Z < notes.txt > upper.txt && wc -l < upper.txt",
                                 "description": "Uppercase the notes"}, call_id="call_bash")
        if len(results) == 2:
            return TOOL("Read", {"file_path": str(self.workdir / "upper.txt")}, call_id="call_read")
        seen = _tool_text(results[-1])
        words = [w for w in ("ALPHA", "BETA") if w in seen]
        return TEXT(f"Done: upper.txt holds {','.join(words) or 'nothing I expected'}.")


async def test_claude_code_tool_loop(claude_bin, start_upstream, start_gateway, tmp_path):
    """`claude -p` runs Write → Bash → Read → answer through the gateway: the files exist with the
    right content, every tool result reached the model, the final answer is printed, and every
    request the CLI sent was answered 200 with no error."""
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    up = await start_upstream("openai")
    loop = ToolLoop(work)
    up.default = loop
    log = tmp_path / "requests.jsonl"
    gw = await start_gateway(gateway_config(
        {"up": {"type": "openai", "base_url": up.url, "model": "test-model",
                "model_mapping": {"claude-*": "test-model"}}}, default="up", log_path=str(log)))

    s = await _run_claude(claude_bin, "Write notes.txt, uppercase it with a shell command, then read it back.",
                          work, home, gw.url)

    assert s.returncode == 0, (s.result, s.stderr[-2000:])
    assert s.result.get("is_error") is False and s.result.get("subtype") == "success", s.result
    assert s.result["result"].strip() == "Done: upper.txt holds ALPHA,BETA."
    assert (work / "notes.txt").read_text() == "alpha\nbeta\n"
    assert (work / "upper.txt").read_text() == "ALPHA\nBETA\n"
    # The model saw each tool's real outcome, in order, answering the call it made.
    final = loop.main_calls[-1]
    results = [m for m in final["messages"] if m["role"] == "tool"]
    assert len(results) == 3 and len(loop.main_calls) == 4
    calls = [tc for m in final["messages"] if m["role"] == "assistant" for tc in m.get("tool_calls") or []]
    assert [c["function"]["name"] for c in calls] == ["Write", "Bash", "Read"]
    assert [r["tool_call_id"] for r in results] == [c["id"] for c in calls]
    assert json.loads(calls[0]["function"]["arguments"])["content"] == "alpha\nbeta\n"
    assert "2" in _tool_text(results[1])  # wc -l of the uppercased file
    assert "ALPHA" in _tool_text(results[2]) and "BETA" in _tool_text(results[2])
    assert all(b["stream"] for b in loop.main_calls)  # the CLI streamed every turn
    lines = await _log_lines(log, at_least=len(loop.main_calls) + len(loop.side_calls))
    api = [ln for ln in lines if ln["path"].endswith("/messages")]
    assert len(api) == len(loop.main_calls) + len(loop.side_calls)
    assert all(ln["status"] == 200 and ln["error"] is None for ln in api), api


async def _log_lines(log: Path, at_least: int, timeout: float = 5.0) -> list[dict]:
    """The request log once it holds `at_least` lines (it is written by a background thread)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        lines = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
        if len(lines) >= at_least or loop.time() > deadline:
            return lines
        await asyncio.sleep(0.05)


async def test_killing_claude_mid_stream_cancels_upstream(claude_bin, start_upstream, start_gateway, tmp_path):
    """SIGKILL on the CLI while the answer streams: the gateway cancels the upstream request within a
    second (the backend stops generating) and keeps serving."""
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    up = await start_upstream("openai")
    streaming = asyncio.Event()

    def slow(body: dict) -> Script:
        names = {t["function"]["name"] for t in body.get("tools") or []}
        if "Write" not in names:
            return TEXT('{"title": "t"}' if body.get("response_format") else "ok")
        asyncio.get_running_loop().call_later(0.5, streaming.set)  # some text is out by then
        return Script(deltas=[{"content": f"word{i} "} for i in range(1000)], delay_s=0.02)  # 20 s

    up.default = slow
    gw = await start_gateway(gateway_config(
        {"up": {"type": "openai", "base_url": up.url, "model": "test-model",
                "model_mapping": {"claude-*": "test-model"}}}, default="up"))
    proc = await _start_claude(claude_bin, "Tell me a long story.", work, home, gw.url)
    try:
        await asyncio.wait_for(streaming.wait(), RUN_TIMEOUT_S)
        assert up.completed == 0 and up.cancelled == 0
        proc.kill()
        await proc.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while up.cancelled == 0 and loop.time() < deadline:
            await asyncio.sleep(0.02)
        assert up.cancelled == 1, "the upstream kept generating after the client was killed"
        assert up.completed == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    up.default = TEXT("still serving")
    status, msg = await gw.messages({"model": "claude-opus-4-8", "max_tokens": 50,
                                     "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and msg["content"][0]["text"] == "still serving"


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    """The generated tiny MLX demo model (cached like `serve --demo` does, or in $CLAUDE_GATEWAY_DEMO_DIR)."""
    from backends.mlx_demo import DEMO_DIR_ENV, default_root, ensure_demo_model

    return ensure_demo_model(root=os.environ.get(DEMO_DIR_ENV) or default_root())


async def _mlx_gateway(start_gateway, model: Path, log: Path, **backend):
    return await start_gateway(gateway_config(
        {"demo": {"type": "mlx", "model": str(model), "model_mapping": {"claude-*": str(model)}, **backend}},
        default="demo", log_path=str(log)))


def _banner_env(line: str) -> dict:
    """The variables of serve's `use it: K=V … claude` line."""
    words = shlex.split(line.split("use it:", 1)[1])
    assert words[-1] == "claude", line
    return dict(w.split("=", 1) for w in words[:-1])


async def test_plain_claude_code_on_serve_demo_first_start(claude_bin, tmp_path):
    """The README's demo path, on a first start: `serve --demo` shows progress while it generates the
    model, then `claude -p "Say hello."` with nothing but the banner's environment (Claude Code's whole
    prompt and tools, no flags) succeeds, and the prompt was prefilled in seconds."""
    work, home, models = tmp_path / "work", tmp_path / "home", tmp_path / "models"
    work.mkdir()
    home.mkdir()
    port = _free_port()
    env = dict(os.environ, CLAUDE_GATEWAY_DEMO_DIR=str(models), PYTHONPATH=str(ROOT))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "serve", "--demo", "--port", str(port), cwd=str(work), env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        seen: list[str] = []
        while not any("use it:" in ln for ln in seen):
            line = await asyncio.wait_for(proc.stderr.readline(), DEMO_START_TIMEOUT_S)
            assert line, "serve --demo exited before listening: " + "".join(seen)
            seen.append(line.decode())
        text = "".join(seen)
        assert "training the scripted answers: step" in text and "demo model ready" in text, text
        assert text.index("demo model ready") < text.index("listening on"), text
        banner = _banner_env(seen[-1])
        assert banner["ANTHROPIC_BASE_URL"] == f"http://127.0.0.1:{port}"
        cli = await asyncio.create_subprocess_exec(
            *claude_bin, "-p", "Say hello.", cwd=str(work), stdin=asyncio.subprocess.DEVNULL,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), **banner},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(cli.communicate(), RUN_TIMEOUT_S)
        assert cli.returncode == 0, (out, err)
        assert out.decode().strip() and not out.decode().startswith("API Error"), out  # noise, but an answer
        lines = await _log_lines(work / "logs" / "requests.jsonl", at_least=1)
        api = [ln for ln in lines if ln["path"].endswith("/messages")]
        assert api and all(ln["status"] == 200 and ln["error"] is None for ln in api), api
        main = max(api, key=lambda ln: ln["input_tokens"])
        # Claude Code's own system prompt and tool definitions, whole, in a small share of the window.
        assert 15_000 < main["input_tokens"] < 40_000, main
        assert main["stop_reason"] == "end_turn" and main["ttft_ms"] < 30_000, main
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_claude_code_sees_prompt_too_long_from_mlx_backend(claude_bin, demo_model_dir, start_gateway,
                                                                  tmp_path):
    """Claude Code's full prompt against the demo model cut to an 8k window: the gateway's 400 is
    recognised by the CLI as "prompt is too long" (it would compact), not as a generic failure."""
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    log = tmp_path / "requests.jsonl"
    gw = await _mlx_gateway(start_gateway, demo_model_dir, log, context_window=8192)
    s = await _run_claude(claude_bin, "Say hello.", work, home, gw.url)
    assert s.result.get("api_error_status") == 400, s.result
    assert s.result.get("terminal_reason") == "prompt_too_long", s.result
    [line] = [ln for ln in await _log_lines(log, at_least=1) if ln["path"].endswith("/messages")]
    assert line["status"] == 400 and "prompt is too long" in line["error"]["message"]
