"""`claude-gateway code`: starts a gateway in the background (or reuses the one listening), then runs
Claude Code with the environment the config implies. Checked with a stand-in `claude` that records
what it was given, and with the real CLI (what it then sends, from the request log).
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import TOKEN
from tests.support.net import free_port
from tests.test_e2e_claude_code import RUN_TIMEOUT_S, claude_bin  # noqa: F401 — the CLI fixture
from tests.upstream import TEXT

ROOT = Path(__file__).resolve().parent.parent

RECORDER = """#!{python}
import json, os, sys
with open({out!r}, "w") as f:
    json.dump({{"argv": sys.argv[1:], "env": dict(os.environ)}}, f)
"""


def _config(tmp: Path, port: int, upstream: str) -> Path:
    """Two backends with different windows: opus named exactly, sonnet by glob, haiku elsewhere."""
    cfg = tmp / "config.toml"
    cfg.write_text(f"""
[server]
host = "127.0.0.1"
port = {port}
auth_token = "{TOKEN}"
[log]
requests = "{tmp / 'requests.jsonl'}"
level = "warning"
[backends.big]
type = "openai"
base_url = "{upstream}"
context_window = 32768
[backends.big.model_mapping]
"claude-opus-4-8" = "big-model"
"claude-sonnet-*" = "big-model"
[backends.small]
type = "openai"
base_url = "{upstream}"
context_window = 16384
[backends.small.model_mapping]
"claude-haiku-*" = "small-model"
""")
    return cfg


def _env(tmp: Path, bin_dir: Path | None) -> dict:
    path = os.environ.get("PATH", "/usr/bin:/bin")
    env = {"PATH": f"{bin_dir}{os.pathsep}{path}" if bin_dir else path, "HOME": str(tmp / "home"),
           "XDG_CACHE_HOME": str(tmp / "cache"), "PYTHONPATH": str(ROOT),
           "ANTHROPIC_API_KEY": "sk-ant-must-not-reach-claude",
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1",
           "DISABLE_ERROR_REPORTING": "1"}
    (tmp / "home").mkdir(exist_ok=True)
    return env


async def _code(cfg: Path, env: dict, *claude_args: str, cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "code", "--config", str(cfg), *claude_args, cwd=str(cwd), env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
    return proc.returncode, out.decode(), err.decode()


def _started_pid(stderr: str) -> int:
    marker = "(pid "
    assert marker in stderr, stderr
    return int(stderr.split(marker, 1)[1].split(";", 1)[0])


def _stop(pid: int | None) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


async def _get_root(port: int) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/") as r:
        return await r.text()


async def test_code_starts_a_gateway_then_reuses_it_and_passes_the_routed_environment(start_upstream, tmp_path):
    up = await start_upstream("openai", models=["big-model", "small-model"])
    port = free_port()
    cfg = _config(tmp_path, port, up.url)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "claude-run.json"
    (bin_dir / "claude").write_text(RECORDER.format(python=sys.executable, out=str(record)))
    (bin_dir / "claude").chmod(0o755)
    env = _env(tmp_path, bin_dir)
    pid = None
    try:
        code, _, err = await _code(cfg, env, "-p", "hi there", "--output-format", "json", cwd=tmp_path)
        assert code == 0, err
        assert "starting one in the background" in err
        pid = _started_pid(err)
        run = json.loads(record.read_text())
        assert run["argv"] == ["-p", "hi there", "--output-format", "json"]
        got = run["env"]
        assert got["ANTHROPIC_BASE_URL"] == f"http://127.0.0.1:{port}"
        assert got["ANTHROPIC_AUTH_TOKEN"] == TOKEN
        assert got["CLAUDE_CODE_ENABLE_GATEWAY_MODEL_DISCOVERY"] == "1"
        assert got["ANTHROPIC_DEFAULT_OPUS_MODEL"] == "claude-opus-4-8"  # the config's own name for it
        assert got["ANTHROPIC_DEFAULT_SONNET_MODEL"] == "big-model"  # a glob: the backend model it routes to
        assert got["ANTHROPIC_DEFAULT_HAIKU_MODEL"] == "small-model"
        assert got["CLAUDE_CODE_AUTO_COMPACT_WINDOW"] == "16384"  # the smallest routed window
        # no threshold below 16k keeps Claude Code's own output and summary margin
        assert "CLAUDE_AUTOCOMPACT_PCT_OVERRIDE" not in got
        assert "ANTHROPIC_API_KEY" not in got
        assert (await _get_root(port)).startswith("claude-gateway")  # still serving after claude exited

        record.unlink()
        code, _, err = await _code(cfg, env, "--version", cwd=tmp_path)
        assert code == 0, err
        assert "starting" not in err, err  # reused, not started again
        assert json.loads(record.read_text())["env"]["ANTHROPIC_DEFAULT_HAIKU_MODEL"] == "small-model"
        os.kill(pid, 0)  # the first gateway is the one still running
    finally:
        _stop(pid)


async def test_code_with_the_real_claude_code(claude_bin, start_upstream, tmp_path):  # noqa: F811
    """The real CLI through `code`: it answers, and the request log shows it sent the model names
    `code` gave it, with Claude Code's own headers, to the gateway `code` started."""
    up = await start_upstream("openai", models=["big-model", "small-model"])
    up.default = lambda body: TEXT('{"title": "Greeting"}' if body.get("response_format") else "Hello from big-model.")
    port = free_port()
    cfg = _config(tmp_path, port, up.url)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    launcher = " ".join(f'"{a}"' for a in claude_bin)
    (bin_dir / "claude").write_text(f'#!/bin/sh\nexec {launcher} "$@"\n')
    (bin_dir / "claude").chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    pid = None
    try:
        code, out, err = await _code(cfg, _env(tmp_path, bin_dir), "-p", "Say hello.", "--output-format", "json",
                                     cwd=work)
        pid = _started_pid(err)
        assert code == 0, (out, err[-2000:])
        result = json.loads(out.strip().splitlines()[-1])
        assert result["is_error"] is False and result["result"] == "Hello from big-model.", result
        lines = [json.loads(x) for x in (tmp_path / "requests.jsonl").read_text().splitlines()]
        api = [ln for ln in lines if ln["path"].endswith("/messages")]
        assert api and all(ln["status"] == 200 for ln in api), api
        sent = {ln["model"] for ln in api}
        assert "claude-opus-4-8" in sent, sent  # the main turn, by the name `code` set for opus
        assert sent <= {"claude-opus-4-8", "big-model", "small-model"}, sent
        assert {ln["backend"] for ln in api} <= {"big", "small"}
        assert all(ln["user_agent"].startswith("claude-cli/") and ln["session_id"] for ln in api), api
        assert {b["model"] for b in up.received} <= {"big-model", "small-model"}
    finally:
        _stop(pid)


async def test_code_without_claude_says_how_to_install_it(tmp_path):
    port = free_port()
    cfg = _config(tmp_path, port, "http://127.0.0.1:9")
    env = _env(tmp_path, None)
    env["PATH"] = str(tmp_path / "empty")  # no claude anywhere
    code, _, err = await _code(cfg, env, "-p", "x", cwd=tmp_path)
    assert code == 1
    assert "Claude Code is not installed" in err and "npm install -g @anthropic-ai/claude-code" in err
    assert "Traceback" not in err
    with pytest.raises(aiohttp.ClientConnectionError):
        await _get_root(port)  # nothing was started for a claude that cannot run


async def test_code_refuses_a_port_held_by_something_else(tmp_path):
    async def other(_request: web.Request) -> web.Response:
        return web.Response(text="some other service")

    app = web.Application()
    app.router.add_get("/", other)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "claude").write_text("#!/bin/sh\necho ran > \"$HOME/ran\"\n")
    (bin_dir / "claude").chmod(0o755)
    try:
        code, _, err = await _code(_config(tmp_path, port, "http://127.0.0.1:9"), _env(tmp_path, bin_dir),
                                   cwd=tmp_path)
    finally:
        await runner.cleanup()
    assert code == 1
    assert f"port {port} is taken by something that is not claude-gateway" in err and "some other service" in err
    assert not (tmp_path / "home" / "ran").exists()


def test_autocompact_pct_lands_below_the_real_window():
    from gateway.code_cmd import autocompact_pct
    assert autocompact_pct(200_000) is None and autocompact_pct(100_000) is None
    assert autocompact_pct(32_768) is None
    pct = autocompact_pct(65_536)
    assert pct == 40
    # Claude Code's threshold: the 100k floor minus 20k output, times the percentage
    assert (100_000 - 20_000) * pct // 100 <= 65_536 - 20_000 - 13_000
