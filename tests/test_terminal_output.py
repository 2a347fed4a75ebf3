"""Hostile text never drives the operator's terminal (console log, log_replay tables), `curl ID`
re-sends exactly the recorded request, and rotated logs keep the live log's permissions."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import re
import stat
import sys

from tests.conftest import TOKEN, gateway_config
from tests.gateway_process import ROOT
from tests.logtools import (
    log_has,
    read_records,
    run_cli,
    run_cli_tty,
    wait_records,
    wait_until,
)
from tests.raw_http import get_request, post_request, raw_request
from tests.support.net import free_port
from tests.support.poll import wait_for

# Retitles the window, rings the bell, clears the screen; then a forged line; then C1 CSI and a bidi override.
HOSTILE_PATH = "/v1/x%1b%5d0;PWNED%07%1b[2J%0aFORGED%20status=200%c2%9b31m%e2%80%aeevil"
HOSTILE_MODEL = "claude-\x1b]0;OWNED\x07\x1b[2J\nFORGED-MODEL\u202e"


def _assert_inert(text: str, forged: str) -> None:
    """No control character a terminal acts on, and no line the attacker started."""
    for ch in ("\x1b", "\x07", "\x9b", "\u202e", "\r"):
        assert ch not in text, (ch, text[:2000])
    assert not any(line.lstrip().startswith(forged) for line in text.splitlines()), text[:2000]


async def test_console_log_on_a_terminal_escapes_paths_and_model_names(start_upstream, tmp_path):
    up = await start_upstream()
    toml = gateway_config({"up": {"type": "openai", "base_url": up.url, "model": "m"}}, default="up", token=None,
                          log_path=str(tmp_path / "requests.jsonl")).replace('level = "warning"', 'level = "info"')
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(toml.replace("port = 8082", f"port = {port}"))
    master, slave = pty.openpty()  # stderr is a terminal: the gateway picks its key=value console format
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway.cli", "serve", "--config", str(config),
                                                cwd=str(ROOT), stdout=asyncio.subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    os.set_blocking(master, False)
    out = bytearray()

    async def read_until(needle: bytes, timeout: float = 20) -> None:
        def drain() -> bool:
            with contextlib.suppress(BlockingIOError):
                out.extend(os.read(master, 65536))
            return needle in out

        assert await wait_for(drain, timeout, interval=0.05), out.decode(errors="replace")

    try:
        await read_until(b"listening on")
        url = f"http://127.0.0.1:{port}"
        status, _, _ = await raw_request(url, get_request(HOSTILE_PATH))
        assert status == 404
        body = json.dumps({"model": HOSTILE_MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
        await raw_request(url, post_request("/v1/messages", body.encode()))
        await read_until(b"PWNED")
        await read_until(b"OWNED")
    finally:
        proc.terminate()
        await proc.wait()
    text = out.decode("utf-8", "replace").replace("\r\n", "\n")
    _assert_inert(text, "FORGED")
    # The operator still sees what the client sent, as escapes (doubled where the renderer quotes the value).
    assert re.search(r"\\+x1b]0;PWNED\\+x07\\+x1b\[2J\\+x0aFORGED", text) and re.search(r"\\+u202eevil", text)
    assert re.search(r"claude-\\+x1b]0;OWNED", text)
    os.close(master)


async def _hostile_log(start_upstream, start_gateway, log):
    up = await start_upstream()
    gw = await start_gateway(gateway_config({"up": {"type": "openai", "base_url": up.url, "model": "m",
                                                    "model_mapping": {"claude-*": "m"}}},
                                            log_path=str(log)))
    await raw_request(gw.url, get_request(HOSTILE_PATH))
    resp = await gw.post("/v1/messages", {"model": HOSTILE_MODEL, "max_tokens": 5,
                                          "messages": [{"role": "user", "content": "hi \x1b[2J\u0085"}]})
    assert resp.status == 200, await resp.text()
    await wait_records(log, 2)
    return gw, resp.headers["request-id"]


async def test_replay_tables_and_show_escape_control_characters(start_upstream, start_gateway, tmp_path):
    log = tmp_path / "requests.jsonl"
    gw, model_id = await _hostile_log(start_upstream, start_gateway, log)
    recs = read_records(log)
    assert recs[0]["path"].startswith("/v1/x\x1b]0;PWNED")  # the log keeps the data as it was
    code, out = await run_cli_tty("--file", str(log))
    assert code == 0
    _assert_inert(out, "FORGED")
    table = out.split("REQUEST ID", 1)[1].splitlines()
    assert len(table) == 1 + len(recs), out  # header line + one row per record: no forged row
    assert "\\x1b]0;PWNED" in out and "claude-\\x1b]0;OWNED" in out
    code, out = await run_cli_tty("--file", str(log), "show", model_id)
    assert code == 0
    _assert_inert(out, "FORGED")
    assert json.loads(out) == recs[1]  # still valid JSON, the same record
    # Replay lines print the path and model too.
    code, out = await run_cli_tty("--file", str(log), "replay", "--to", gw.url, "--token", TOKEN)
    assert "REGRESSION" not in out and model_id in out
    _assert_inert(out, "FORGED")


async def _sh(cmd: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec("bash", "-c", cmd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT,
                                                env={**os.environ, "ANTHROPIC_API_KEY": TOKEN})
    out, _ = await proc.communicate()
    return proc.returncode, out.decode(errors="replace")


async def test_curl_command_sends_exactly_the_recorded_target_once(start_upstream, start_gateway, tmp_path):
    log = tmp_path / "requests.jsonl"
    up = await start_upstream()
    gw = await start_gateway(gateway_config({"up": {"type": "openai", "base_url": up.url, "model": "m"}},
                                            default="up", log_path=str(log)))
    targets = ["/v1/models/x[1-40]",  # literal brackets: curl would glob them into 40 requests
               "/v1/models/a%2Fb%5B1-3%5D%0a%20c?q=%26x%20y&r=[1-2]",  # encoded: must arrive encoded the same way
               "/v1/models/{a,b}"]
    for i, target in enumerate(targets):
        await raw_request(gw.url, get_request(target))
        recs = await wait_records(log, i + 1)
        original = recs[-1]
        code, cmd, err = await run_cli("--file", str(log), "curl", original["request_id"], "--url", gw.url)
        assert code == 0, err
        assert " -g " in cmd
        rc, out = await _sh(cmd)
        assert rc == 0, out
        await wait_until(lambda n=i * 2 + 2: len(read_records(log)) >= n)
        await asyncio.sleep(0.2)  # a globbing curl would still be sending
        recs = read_records(log)
        assert len(recs) == i * 2 + 2, [r["path"] for r in recs]  # one request, not one per glob expansion
        again = recs[-1]
        assert (again["path"], again["query"], again.get("raw_path")) == \
               (original["path"], original["query"], original.get("raw_path")), target
    assert read_records(log)[2]["raw_path"] == targets[1]


async def test_rotated_logs_keep_the_live_logs_permissions(start_upstream, start_gateway, tmp_path):
    old_umask = os.umask(0o022)  # the usual umask: files the gateway creates carelessly are world-readable
    try:
        for compress in ("true", "false"):
            up = await start_upstream()
            d = tmp_path / compress
            log = d / "requests.jsonl"
            toml = gateway_config({"up": {"type": "openai", "base_url": up.url, "model": "m"}}, default="up",
                                  log_path=str(log)).replace(
                "bodies = true", f"bodies = true\nrotate_mb = 0.005\nkeep = 3\ngzip = {compress}")
            gw = await start_gateway(toml)
            for _ in range(15):
                resp = await gw.post("/v1/messages", {"model": "m", "max_tokens": 5,
                                                      "messages": [{"role": "user", "content": "z" * 1500}]})
                await resp.read()
            last = resp.headers["request-id"]
            await wait_until(lambda log=log, last=last: log_has(log, last))
            suffix = ".gz" if compress == "true" else ""
            expected = ["requests.jsonl"] + [f"requests.jsonl.{i}{suffix}" for i in (1, 2, 3)]
            await wait_until(lambda d=d, expected=expected: sorted(p.name for p in d.iterdir()) == expected)  # compression done
            files = sorted(p.name for p in d.iterdir())
            modes = {name: stat.S_IMODE((d / name).stat().st_mode) for name in files}
            assert set(modes.values()) == {0o600}, modes
    finally:
        os.umask(old_umask)
