"""Models that are not on this machine yet, over HTTP: a request for one gets a 503 naming
`claude-gateway pull` (or, with download_on_demand, the download), and `preload` loads models once
the server listens, /health saying "loading" until they are resident. The hub is the local
stand-in (tests/fake_hub.py) serving the generated demo model's files."""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import gateway_config
from tests.fake_hub import FakeHub, partial_download
from tests.gateway_process import ROOT, env_without_token, start_serve
from tests.support.net import free_port
from tests.support.poll import wait_for

HUB_REPO = "test-org/demo"


@pytest.fixture
def hub(demo_model, tmp_path, monkeypatch):
    """The fake hub serving the demo model as HUB_REPO; huggingface_hub in this process points at
    it and at a scratch cache (its constants are read at import, so they are patched, not the env)."""
    from huggingface_hub import constants
    h = FakeHub().start()
    h.add_dir(HUB_REPO, demo_model)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "ENDPOINT", h.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", h.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    yield h
    for gate in h.gates.values():
        gate.set()
    h.stop()


def hello(model: str) -> dict:
    return {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hello"}]}


async def test_a_model_not_downloaded_is_a_503_naming_pull(hub, demo_model, start_gateway, tmp_path):
    log = tmp_path / "requests.jsonl"
    gw = await start_gateway(gateway_config({"m": {"type": "mlx", "model": str(demo_model),
                                                   "model_mapping": {"claude-haiku-*": HUB_REPO}}},
                                            default="m", log_path=str(log)))
    resp = await gw.post("/v1/messages", hello("claude-haiku-4-5"))
    assert resp.status == 503
    assert resp.headers["x-should-retry"] == "false"  # waiting cannot make the model appear
    body = await resp.json()
    assert body["type"] == "error" and body["error"]["type"] == "overloaded_error"
    assert f"claude-gateway pull {HUB_REPO}" in body["error"]["message"]
    assert "download_on_demand" in body["error"]["message"]
    resp = await gw.post("/v1/messages", {**hello("claude-haiku-4-5"), "stream": True})
    assert resp.status == 503  # before any event: the stream never starts
    resp = await gw.post("/v1/messages/count_tokens", {"model": "claude-haiku-4-5",
                                                       "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status == 503
    assert hub.gets() == []  # no download started inside a request
    await gw.runner.cleanup()  # flushes the request log
    line = json.loads(log.read_text().splitlines()[0])
    assert line["status"] == 503 and line["error"]["type"] == "overloaded_error"


async def test_a_corrupted_download_on_demand_says_so_and_the_next_request_fetches_again(hub, demo_model, start_gateway, tmp_path):
    """A file whose checksum is not the hub's: the client hears what happened and what to do (the
    same api_error as any failed download, not an internal error), and the next request (the hub
    fixed) downloads it again."""
    log = tmp_path / "requests.jsonl"
    gw = await start_gateway(gateway_config({"m": {"type": "mlx", "model": str(demo_model), "download_on_demand": True,
                                                   "model_mapping": {"claude-haiku-*": HUB_REPO}}},
                                            default="m", log_path=str(log)))
    hub.corrupt.add("model.safetensors")
    resp = await gw.post("/v1/messages", hello("claude-haiku-4-5"))
    body = await resp.json()
    assert resp.status == 500 and body["error"]["type"] == "api_error", body
    assert "arrived corrupted" in body["error"]["message"], body
    assert f"run `claude-gateway pull {HUB_REPO}` again" in body["error"]["message"], body
    hub.corrupt.clear()
    status, msg = await gw.messages(hello("claude-haiku-4-5"))
    assert status == 200, msg


async def test_download_on_demand_downloads_inside_the_request(hub, demo_model, start_gateway):
    gw = await start_gateway(gateway_config({"m": {"type": "mlx", "model": str(demo_model), "download_on_demand": True,
                                                   "model_mapping": {"claude-haiku-*": HUB_REPO}}}, default="m"))
    status, msg = await gw.messages(hello("claude-haiku-4-5"))
    assert status == 200, msg
    assert {p.rsplit("/", 1)[-1] for p, _ in hub.gets()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    detail = (await (await gw.get("/health")).json())["backends"]["m"]["detail"]
    assert HUB_REPO in detail  # resident now


async def _health(gw) -> dict:
    return await (await gw.get("/health")).json()


async def test_preload_loads_after_the_port_listens_and_health_says_loading_then_resident(
        hub, demo_model, start_gateway):
    gate = hub.gates["model.safetensors"] = threading.Event()  # holds the download until the test has looked
    gw = await start_gateway(gateway_config({"m": {"type": "mlx", "model": str(demo_model), "preload": True, "max_resident_models": 2,
                                                   "model_mapping": {"claude-haiku-*": HUB_REPO}}}, default="m"))
    health = await _health(gw)  # the server answers while the preload waits on the download
    assert health["status"] == "loading"
    assert HUB_REPO in health["backends"]["m"]["loading"]
    gate.set()
    health = await wait_for(lambda: _health(gw), 120, until=lambda h: h["status"] != "loading", interval=0.1)
    assert health["status"] == "ok", health
    m = health["backends"]["m"]
    assert m["loading"] == [] and set(m["resident"]) == {str(demo_model), HUB_REPO}
    gets = len(hub.gets())
    status, msg = await gw.messages(hello("claude-haiku-4-5"))  # no download and no load left for the request
    assert status == 200, msg
    assert len(hub.gets()) == gets


async def test_serve_says_what_preload_is_loading_then_what_is_resident(hub, demo_model, tmp_path):
    """A real `serve`: the banner names the models preload is loading, a later line the ones now
    resident, and /health says the same at each step."""
    gate = hub.gates["model.safetensors"] = threading.Event()
    path = _serve_config(tmp_path, str(demo_model), {"claude-haiku-*": HUB_REPO})
    gp = await start_serve(path, env=_hub_env(hub, tmp_path), timeout=120)
    try:
        banner = await _stderr_line(gp, "  m: ")
        said = re.fullmatch(r"  m: resident: (.*); loading: (.*) \(preload; GET /health says when they are resident\)\n",
                            banner)
        assert said, gp.stderr
        resident, loading = _names(said[1]), _names(said[2])
        assert HUB_REPO in loading and not resident & loading, banner  # each model in one state
        assert resident | loading == {str(demo_model), HUB_REPO}
        health = await _health_of(gp.url)
        m = health["backends"]["m"]
        assert health["status"] == "loading" and HUB_REPO in m["loading"], health
        assert not set(m["resident"]) & set(m["loading"]), health
        gate.set()
        done = await _stderr_line(gp, "preload finished")
        assert "loading" not in done, gp.stderr
        resident = _names(done.split("m: resident: ", 1)[1].strip())
        assert resident == {str(demo_model), HUB_REPO}, gp.stderr
        health = await _health_of(gp.url)
        assert health["status"] == "ok", health
        assert set(health["backends"]["m"]["resident"]) == resident
        assert health["backends"]["m"]["loading"] == []
    finally:
        gate.set()
        await gp.stop()


async def _stderr_line(gp, text: str, timeout: float = 120) -> str:
    """The first line of serve's stderr holding `text`, waiting for it to be printed."""
    def probe() -> str | int | None:
        return next((line for line in gp.stderr_lines if text in line), None) or gp.proc.returncode

    line = await wait_for(probe, timeout, until=lambda v: v is not None, interval=0.05)
    assert isinstance(line, str), f"serve never printed {text!r}:\n{gp.stderr}"
    return line


def _names(listed: str) -> set[str]:
    return set() if listed == "none" else set(listed.split(", "))


async def _health_of(url: str) -> dict:
    async with aiohttp.ClientSession() as session, session.get(url + "/health") as resp:
        return await resp.json()


async def test_serve_says_which_preload_failed_and_health_says_why(hub, demo_model, tmp_path):
    missing = "test-org/no-such-model"
    path = _serve_config(tmp_path, str(demo_model), {"claude-haiku-*": missing})
    gp = await start_serve(path, env=_hub_env(hub, tmp_path), timeout=120)
    try:
        done = await _stderr_line(gp, "preload finished")
        assert done == (f"claude-gateway: preload finished; m: resident: {demo_model}; preload failed: {missing} "
                        f"(GET /health says why)\n"), gp.stderr
        health = await _health_of(gp.url)
        m = health["backends"]["m"]
        assert health["status"] == "degraded" and m["loading"] == [] and m["resident"] == [str(demo_model)]
        assert m["preload_failed"] == [missing]
        assert f"preload of {missing} failed" in m["detail"] and "does not exist" in m["detail"], health
    finally:
        await gp.stop()


def _serve_config(tmp_path, model: str, mapping: dict[str, str] | None = None, routing: bool = True) -> Path:
    path = tmp_path / "config.toml"
    lines = [f'[server]\nhost = "127.0.0.1"\nport = {free_port()}\n[log]\nrequests = ""\n'
             + ('[routing]\ndefault = "m"' if routing else ""),
             f'[backends.m]\ntype = "mlx"\nmodel = {json.dumps(model)}\npreload = true\nmax_resident_models = 2']
    if mapping:
        lines.append("[backends.m.model_mapping]\n" + "".join(f"{json.dumps(k)} = {json.dumps(v)}\n"
                                                          for k, v in mapping.items()))
    path.write_text("\n".join(lines) + "\n")
    return path


def _hub_env(hub: FakeHub, tmp_path, **extra: str) -> dict:
    env = {k: v for k, v in env_without_token().items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1", **extra)
    return env


async def test_the_banner_says_loading_for_a_default_model_preload_is_still_downloading(hub, tmp_path):
    gate = hub.gates["model.safetensors"] = threading.Event()
    # No route for Claude Code's model families: the banner asks the backend nothing before it prints.
    gp = await start_serve(_serve_config(tmp_path, HUB_REPO, routing=False), env=_hub_env(hub, tmp_path),
                           timeout=120)
    try:
        banner = await _stderr_line(gp, "  m: ")
        assert banner == f"  m: resident: none; loading: {HUB_REPO} (preload; GET /health says when they are resident)\n"
        health = await _health_of(gp.url)
        assert health["status"] == "loading" and health["backends"]["m"]["loading"] == [HUB_REPO], health
        gate.set()
        done = await _stderr_line(gp, "preload finished")
        assert done == f"claude-gateway: preload finished; m: resident: {HUB_REPO}\n", gp.stderr
    finally:
        gate.set()
        await gp.stop()


async def test_ctrl_c_during_a_preload_download_stops_serve_at_once_and_pull_continues_the_file(
        hub, demo_model, tmp_path):
    src = tmp_path / "big"
    shutil.copytree(demo_model, src)
    (src / "model.safetensors").write_bytes(os.urandom(24 << 20))  # never loaded: serve stops first
    hub.add_dir("test-org/big", src)
    hub.stall_after["model.safetensors"] = 15 << 20
    # A read timeout far beyond the test's bound: only a download that is left behind lets serve exit in time.
    env = _hub_env(hub, tmp_path, HF_HUB_DOWNLOAD_TIMEOUT="120")
    gp = await start_serve(_serve_config(tmp_path, "test-org/big", routing=False), env=env, timeout=120)
    try:
        blobs = tmp_path / "hf" / "hub" / "models--test-org--big" / "blobs"
        partial = await wait_for(lambda: partial_download(blobs) or gp.proc.returncode, 60, interval=0.05)
        assert isinstance(partial, Path), gp.stderr  # else serve exited, or nothing appeared
        gp.signal(signal.SIGINT)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await gp.wait_exit(30) == 0, gp.stderr
        assert loop.time() - t0 < 10, gp.stderr
    finally:
        await gp.stop()
    assert "Traceback" not in gp.stderr and "preload finished" not in gp.stderr, gp.stderr
    kept = partial.stat().st_size
    assert 0 < kept < 24 << 20

    pull = subprocess.run([sys.executable, "-m", "gateway.cli", "pull", "test-org/big"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert pull.returncode == 0, pull.stderr
    assert "model.safetensors: resuming at" in pull.stderr
    assert hub.ranges("model.safetensors") == ["", f"bytes={kept}-"]
