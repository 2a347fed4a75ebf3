"""The real Claude Code CLI (npm @anthropic-ai/claude-code, every pinned version) in headless mode
(`claude -p`) through the gateway: a scripted OpenAI-compatible upstream drives a whole tool loop
(Write a file, run a Bash command, Read the result back, answer), loads a deferred tool through
ToolSearch, the CLI's model discovery caches the gateway's models, its start-up probes are
answered, and killing the CLI mid-stream cancels the upstream generation. Plain `claude -p` (no
flags) runs against `serve --demo`.

Each version is installed once into .cache/node/<version>/ (git-ignored) by a session fixture;
these tests skip, saying why, only where npm is missing or the registry cannot be reached.
"""
from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import TOKEN, gateway_config
from tests.support.net import free_port
from tests.support.poll import wait_for
from tests.upstream import TEXT, TOOL, Script


@dataclass(frozen=True)
class CliVersion:
    """A pinned Claude Code release and what it does that older ones do not."""

    version: str
    tool_search: bool  # sends deferred tools (defer_loading) and a ToolSearch tool
    model_discovery: bool  # GET /v1/models?limit=1000 with CLAUDE_CODE_ENABLE_GATEWAY_MODEL_DISCOVERY


# Every version the end-to-end tests run against; the next release is one line here.
CLAUDE_CODE_VERSIONS = (
    CliVersion("2.1.197", tool_search=False, model_discovery=False),  # the version the recorded traffic came from
    CliVersion("2.1.328", tool_search=True, model_discovery=True),
)
ROOT = Path(__file__).resolve().parent.parent
NODE_ROOT = ROOT / ".cache" / "node"
RUN_TIMEOUT_S = 120
DEMO_START_TIMEOUT_S = 900  # a first start generates the demo model (minutes on a busy CPU)


@dataclass(frozen=True)
class Claude:
    """argv that starts one installed version, and that version's features."""

    argv: list[str]
    cli: CliVersion

    def __iter__(self):  # `[*claude, "--flag"]` extends the command line
        return iter(self.argv)


def _node_dir(version: str) -> Path:
    return NODE_ROOT / version


def _launchers(version: str) -> list[list[str]]:
    """Ways to start the installed CLI: the native binary that npm's postinstall puts in place, or,
    where install scripts did not run, the package's own node fallback launcher."""
    node_dir = _node_dir(version)
    out = [[str(node_dir / "node_modules" / ".bin" / "claude")]]
    wrapper = node_dir / "node_modules" / "@anthropic-ai" / "claude-code" / "cli-wrapper.cjs"
    if shutil.which("node") and wrapper.exists():
        out.append([shutil.which("node"), str(wrapper)])
    return out


def _working_launcher(version: str) -> list[str] | None:
    """The first launcher that reports the pinned version."""
    for argv in _launchers(version):
        try:
            out = subprocess.run([*argv, "--version"], capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.split()[:1] == [version]:
            return argv
    return None


@pytest.fixture(scope="session", params=CLAUDE_CODE_VERSIONS, ids=lambda v: v.version)
def claude_bin(request) -> Claude:
    """One pinned Claude Code CLI (the tests run once per version), installed on first use."""
    cli: CliVersion = request.param
    if (argv := _working_launcher(cli.version)) is not None:
        return Claude(argv, cli)
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: cannot install @anthropic-ai/claude-code for the end-to-end tests")
    node_dir = _node_dir(cli.version)
    node_dir.mkdir(parents=True, exist_ok=True)
    package = f"@anthropic-ai/claude-code@{cli.version}"
    try:
        out = subprocess.run([npm, "install", "--prefix", str(node_dir), "--no-audit", "--no-fund",
                              "--loglevel=error", package], capture_output=True, text=True, timeout=600,
                             check=False)
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm install {package} timed out (registry unreachable?)")
    if out.returncode != 0:
        pytest.skip(f"npm install {package} failed (registry unreachable?): " + (out.stderr or out.stdout)[-500:])
    argv = _working_launcher(cli.version)
    assert argv is not None, f"npm installed {package} but it does not start"
    return Claude(argv, cli)


@dataclass
class Session:
    """A finished `claude -p` run."""

    returncode: int
    result: dict  # the --output-format json result object
    stderr: str


def _claude_env(home: Path, base_url: str, extra: dict | None = None) -> dict:
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
        **(extra or {}),
    }


def _dirs(tmp_path: Path) -> tuple[Path, Path]:
    """The CLI's working directory and its own HOME (nothing of this machine's user reaches it)."""
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    return work, home


async def _gateway_to(start_gateway, up, log: Path | None = None):
    """A gateway that sends every claude-* model to the scripted OpenAI upstream `up`."""
    return await start_gateway(gateway_config(
        {"up": {"type": "openai", "base_url": up.url, "model": "test-model",
                "model_mapping": {"claude-*": "test-model"}}}, default="up", log_path=str(log) if log else ""))


async def _start_claude(claude, prompt: str, cwd: Path, home: Path, base_url: str, env: dict | None = None):
    return await asyncio.create_subprocess_exec(
        *claude, "-p", prompt, "--output-format", "json", "--dangerously-skip-permissions",
        cwd=str(cwd), env=_claude_env(home, base_url, env), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def _run_claude(claude, prompt: str, cwd: Path, home: Path, base_url: str,
                      env: dict | None = None) -> Session:
    proc = await _start_claude(claude, prompt, cwd, home, base_url, env)
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
    work, home = _dirs(tmp_path)
    up = await start_upstream("openai")
    loop = ToolLoop(work)
    up.default = loop
    log = tmp_path / "requests.jsonl"
    gw = await _gateway_to(start_gateway, up, log)

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


NOTEBOOK = {"cells": [{"cell_type": "code", "id": "cell-a", "metadata": {}, "execution_count": None, "outputs": [],
                       "source": ["print('a')"]}],
            "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


@dataclass
class ToolSearchLoop:
    """Plays a model that needs a deferred tool: ToolSearch for NotebookEdit, Read the notebook,
    edit it with the loaded tool, answer."""

    notebook: Path
    main_calls: list[dict] = field(default_factory=list)

    def __call__(self, body: dict) -> Script:
        names = [t["function"]["name"] for t in body.get("tools") or []]
        if "Write" not in names:
            return TEXT('{"title": "Notebook"}' if body.get("response_format") else "ok")
        self.main_calls.append(body)
        done = [m for m in body["messages"] if m["role"] == "tool"]
        if not done:
            return TOOL("ToolSearch", {"query": "select:NotebookEdit", "max_results": 5}, call_id="call_search")
        if len(done) == 1:
            return TOOL("Read", {"file_path": str(self.notebook)}, call_id="call_read")
        if len(done) == 2:
            return TOOL("NotebookEdit", {"notebook_path": str(self.notebook), "cell_id": "cell-a",
                                         "new_source": "print('loaded')", "edit_mode": "insert",
                                         "cell_type": "code"}, call_id="call_edit")
        return TEXT("Notebook updated.")


async def test_claude_code_loads_a_deferred_tool(claude_bin, start_upstream, start_gateway, tmp_path):
    """ToolSearch → Read → NotebookEdit: the deferred tool stays out of the first request, its full
    schema reaches the upstream once loaded (at the end of the list), the CLI runs it, and no
    request in the log got a 4xx (no fallback to resending every tool)."""
    if not claude_bin.cli.tool_search:
        pytest.skip(f"Claude Code {claude_bin.cli.version} sends every tool in full (no ToolSearch)")
    work, home = _dirs(tmp_path)
    notebook = work / "nb.ipynb"
    notebook.write_text(json.dumps(NOTEBOOK))
    up = await start_upstream("openai")
    loop = ToolSearchLoop(notebook)
    up.default = loop
    log = tmp_path / "requests.jsonl"
    gw = await _gateway_to(start_gateway, up, log)

    s = await _run_claude(claude_bin, "Add a cell to nb.ipynb.", work, home, gw.url)

    assert s.returncode == 0, (s.result, s.stderr[-2000:])
    assert s.result.get("result", "").strip() == "Notebook updated.", s.result
    first, *later = loop.main_calls
    first_names = [t["function"]["name"] for t in first["tools"]]
    assert "ToolSearch" in first_names and "NotebookEdit" not in first_names
    assert not any(n == "DeferredToolPlaceholder" for n in first_names)
    assert len(later) == 3
    for body in later:
        names = [t["function"]["name"] for t in body["tools"]]
        assert names[:len(first_names)] == first_names  # the prefix the backend cached is unchanged
        assert names[len(first_names):] == ["NotebookEdit"]
        schema = body["tools"][-1]["function"]["parameters"]
        assert {"notebook_path", "new_source"} <= set(schema["properties"])
    search_result = next(m for m in later[0]["messages"] if m["role"] == "tool")
    assert "NotebookEdit" in search_result["content"]
    cells = json.loads(notebook.read_text())["cells"]
    assert ["".join(c["source"]) for c in cells] == ["print('a')", "print('loaded')"]
    lines = await _log_lines(log, at_least=len(loop.main_calls))
    api = [ln for ln in lines if ln["path"].endswith("/messages")]
    assert api and all(ln["status"] == 200 and ln["error"] is None for ln in api), \
        [(ln["status"], ln["error"]) for ln in api]


async def test_claude_code_model_discovery_caches_gateway_models(claude_bin, start_upstream, start_gateway,
                                                                 tmp_path):
    """CLAUDE_CODE_ENABLE_GATEWAY_MODEL_DISCOVERY=1 on a glob-only config: Claude Code's own cache
    (~/.claude/cache/gateway-models.json, what /model offers) holds the gateway's Claude ids with
    the display names the gateway gave them."""
    if not claude_bin.cli.model_discovery:
        pytest.skip(f"Claude Code {claude_bin.cli.version} does not discover gateway models")
    work, home = _dirs(tmp_path)
    up = await start_upstream("openai")
    up.default = TEXT("ok")
    gw = await _gateway_to(start_gateway, up)
    s = await _run_claude(claude_bin, "Say ok.", work, home, gw.url,
                          env={"CLAUDE_CODE_ENABLE_GATEWAY_MODEL_DISCOVERY": "1"})
    assert s.returncode == 0, (s.result, s.stderr[-2000:])
    cache = home / ".claude" / "cache" / "gateway-models.json"
    assert cache.exists(), sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    data = json.loads(cache.read_text())
    assert data["baseUrl"] == gw.url
    ours = {m["id"]: m for m in (await (await gw.get("/v1/models?limit=1000")).json())["data"]}
    cached = {m["id"]: m for m in data["models"]}
    assert {"claude-opus-5-5", "claude-sonnet-4-6", "claude-haiku-4-5"} <= set(cached)
    assert set(cached) <= set(ours)
    assert cached["claude-sonnet-4-6"]["display_name"] == "Sonnet 4.6 → test-model (up)"


async def test_claude_code_start_up_probes_are_answered(claude_bin, start_upstream, start_gateway, tmp_path):
    """With non-essential traffic allowed, the CLI warms its connection (HEAD /api/hello on
    2.1.328): no request of the session hits an unknown route, and /api/hello answers 200."""
    work, home = _dirs(tmp_path)
    up = await start_upstream("openai")
    up.default = TEXT("ok")
    log = tmp_path / "requests.jsonl"
    gw = await _gateway_to(start_gateway, up, log)
    s = await _run_claude(claude_bin, "Say ok.", work, home, gw.url,
                          env={"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": ""})
    assert s.returncode == 0, (s.result, s.stderr[-2000:])
    lines = await _log_lines(log, at_least=1)
    assert lines and not [ln for ln in lines if ln["event"] == "unknown_route" or ln["status"] >= 400], lines
    resp = await gw.session.head(gw.url + "/api/hello")
    assert resp.status == 200


async def _log_lines(log: Path, at_least: int, timeout: float = 5.0) -> list[dict]:
    """The request log once it holds `at_least` lines (it is written by a background thread)."""
    def lines() -> list[dict]:
        return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []

    return await wait_for(lines, timeout, until=lambda got: len(got) >= at_least, interval=0.05)


async def test_killing_claude_mid_stream_cancels_upstream(claude_bin, start_upstream, start_gateway, tmp_path):
    """SIGKILL on the CLI while the answer streams: the gateway cancels the upstream request within a
    second (the backend stops generating) and keeps serving."""
    work, home = _dirs(tmp_path)
    up = await start_upstream("openai")
    streaming = asyncio.Event()

    def slow(body: dict) -> Script:
        names = {t["function"]["name"] for t in body.get("tools") or []}
        if "Write" not in names:
            return TEXT('{"title": "t"}' if body.get("response_format") else "ok")
        asyncio.get_running_loop().call_later(0.5, streaming.set)  # some text is out by then
        return Script(deltas=[{"content": f"word{i} "} for i in range(1000)], delay_s=0.02)  # 20 s

    up.default = slow
    gw = await _gateway_to(start_gateway, up)
    proc = await _start_claude(claude_bin, "Tell me a long story.", work, home, gw.url)
    try:
        await asyncio.wait_for(streaming.wait(), RUN_TIMEOUT_S)
        assert up.completed == 0 and up.cancelled == 0
        proc.kill()
        await proc.wait()
        await wait_for(lambda: up.cancelled, 1.0)
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


# A short system prompt and no tools: a session the demo model's context (and CI's CPU) can take.
BRIEF_NO_TOOLS = ("--system-prompt", "Be brief.", "--tools", "", "--max-turns", "2")


def gave_up_on_length(s: Session, api: list[dict]) -> bool:
    """Did the CLI (2.1.328) end the session on its own verdict that answers keep stopping at
    max_tokens (it continues a cut answer up to three times), with no API error behind it?"""
    return (s.result.get("terminal_reason") == "api_error" and s.result.get("api_error_status") is None
            and "output token maximum" in s.result.get("result", "") and api[-1]["stop_reason"] == "max_tokens")


async def _mlx_gateway(start_gateway, model: Path, log: Path, **backend):
    return await start_gateway(gateway_config(
        {"demo": {"type": "mlx", "model": str(model), "model_mapping": {"claude-*": str(model)}, **backend}},
        default="demo", log_path=str(log)))


def _banner_env(line: str) -> dict:
    """The variables of serve's `use it: K=V … claude` line."""
    words = shlex.split(line.split("use it:", 1)[1])
    assert words[-1] == "claude", line
    return dict(w.split("=", 1) for w in words[:-1])


async def test_plain_claude_code_on_serve_demo(claude_bin, tmp_path):
    """The README's demo path: `serve --demo`, then `claude -p "Say hello."` with nothing but the
    banner's environment (Claude Code's whole prompt and tools, no flags) succeeds, and the prompt was
    prefilled in seconds. With the newest version it is a first start (the model is generated into an
    empty folder, with progress shown); the others reuse the demo cache, as a second start does."""
    from demo_model.generate import DEMO_DIR_ENV

    first_start = claude_bin.cli == CLAUDE_CODE_VERSIONS[-1]
    work, home = _dirs(tmp_path)
    models = tmp_path / "models"
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if first_start:
        env[DEMO_DIR_ENV] = str(models)
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
        if first_start:
            assert "training the scripted answers: step" in text and "demo model ready" in text, text
            assert text.index("demo model ready") < text.index("listening on"), text
        banner = _banner_env(seen[-1])
        assert banner["ANTHROPIC_BASE_URL"] == f"http://127.0.0.1:{port}"
        cli = await asyncio.create_subprocess_exec(
            *claude_bin, "-p", "Say hello.", cwd=str(work), stdin=asyncio.subprocess.DEVNULL,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), **banner},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(cli.communicate(), RUN_TIMEOUT_S)
        lines = await _log_lines(work / "logs" / "requests.jsonl", at_least=1)
        api = [ln for ln in lines if ln["path"].endswith("/messages")]
        # The CLI may close a side request of its own (a short one beside the main answer) when it is
        # done: that is the client leaving, not a failure.
        answered = [ln for ln in api if (ln["error"] or {}).get("type") != "client_disconnected"]
        assert answered and all(ln["status"] == 200 and ln["error"] is None for ln in answered), api
        assert cli.returncode == 0, (out, err)
        assert out.decode().strip() and not out.decode().startswith("API Error"), out  # noise, but an answer
        main = max(answered, key=lambda ln: ln["input_tokens"])
        # Claude Code's own system prompt and tool definitions, whole (2.1.328 defers most tools, so its
        # prompt is the smaller one), in a small share of the window.
        assert 10_000 < main["input_tokens"] < 40_000 and main["ttft_ms"] < 30_000, main
        # The answers are the demo model's sampled noise, and each one ends by itself (the demo's
        # eos_bias) before the demo's output cap: none was cut, so the CLI had nothing to continue.
        assert all(ln["stop_reason"] == "end_turn" for ln in answered), api
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)



async def test_claude_code_sees_prompt_too_long_from_mlx_backend(claude_bin, demo_model_dir, start_gateway,
                                                                  tmp_path):
    """Claude Code's full prompt against the demo model cut to an 8k window: the gateway's 400 is
    recognised by the CLI as "prompt is too long" (it would compact), not as a generic failure."""
    work, home = _dirs(tmp_path)
    log = tmp_path / "requests.jsonl"
    gw = await _mlx_gateway(start_gateway, demo_model_dir, log, context_window=8192)
    s = await _run_claude(claude_bin, "Say hello.", work, home, gw.url)
    assert s.result.get("api_error_status") == 400, s.result
    assert s.result.get("terminal_reason") == "prompt_too_long", s.result
    [line] = [ln for ln in await _log_lines(log, at_least=1) if ln["path"].endswith("/messages")]
    assert line["status"] == 400 and "prompt is too long" in line["error"]["message"]
