"""Fixtures: scripted upstreams and a real gateway, both listening on 127.0.0.1."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.config import parse_config
from gateway.server import create_app, runner_options
from gateway.app_state import Gateway
from tests.support.poll import wait_for
from tests.support.sse import parse_frames
from tests.upstream import Upstream

TOKEN = "sk-test-token"


@dataclass
class RunningGateway:
    url: str
    gateway: Gateway
    runner: web.AppRunner
    session: aiohttp.ClientSession
    token: str | None

    def headers(self, **extra: str) -> dict:
        h = {"anthropic-version": "2023-06-01", "content-type": "application/json"}
        if self.token:
            h["x-api-key"] = self.token
        h.update(extra)
        return h

    async def post(self, path: str, body: Any, **headers: str) -> aiohttp.ClientResponse:
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return await self.session.post(self.url + path, data=data, headers=self.headers(**headers))

    async def get(self, path: str, **headers: str) -> aiohttp.ClientResponse:
        return await self.session.get(self.url + path, headers=self.headers(**headers))

    async def messages(self, body: dict, **headers: str) -> tuple[int, dict]:
        resp = await self.post("/v1/messages", body, **headers)
        return resp.status, await resp.json()

    async def stream(self, body: dict, **headers: str) -> list[tuple[str, dict]]:
        """POST a streaming request; returns (event name, data) for every SSE frame."""
        resp = await self.post("/v1/messages", {**body, "stream": True}, **headers)
        assert resp.status == 200, await resp.text()
        return parse_frames(await resp.text())

    def anthropic(self, **kw):
        import anthropic
        return anthropic.AsyncAnthropic(base_url=self.url, api_key=self.token or "none", max_retries=0, **kw)


def gateway_config(backends: dict[str, dict], *, token: str | None = TOKEN, default: str | None = None,
                   log_path: str = "", extra: str = "") -> str:
    """TOML text for a gateway in front of the given backends."""
    lines = ["[server]", 'host = "127.0.0.1"', "port = 8082", "ping_interval_s = 0.5"]
    if token:
        lines.append(f'auth_token = "{token}"')
    lines += ["[log]", f'requests = "{log_path}"', "bodies = true", 'level = "warning"']
    if default:
        lines += ["[routing]", f'default = "{default}"']
    for name, b in backends.items():
        lines.append(f"[backends.{name}]")
        mapping = b.pop("model_mapping", {})
        for k, v in b.items():
            lines.append(f"{k} = {json.dumps(v)}")
        if mapping:
            lines.append(f"[backends.{name}.model_mapping]")
            for k, v in mapping.items():
                lines.append(f"{json.dumps(k)} = {json.dumps(v)}")
    return "\n".join(lines) + "\n" + extra


@pytest.fixture
async def start_gateway():
    """Factory: start a gateway from TOML text; everything started is stopped at teardown."""
    started: list[RunningGateway] = []

    async def start(toml: str, token: str | None = TOKEN) -> RunningGateway:
        cfg = parse_config(toml)
        gw = Gateway(cfg)
        runner = web.AppRunner(create_app(gw), **runner_options(gw))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        session = aiohttp.ClientSession()
        rg = RunningGateway(f"http://127.0.0.1:{port}", gw, runner, session, token)
        started.append(rg)
        return rg

    yield start
    for rg in started:
        await rg.session.close()
        await rg.runner.cleanup()


@pytest.fixture
async def start_upstream():
    """Factory: start a scripted upstream of a flavor (openai, vllm, llamacpp)."""
    ups: list[Upstream] = []

    async def start(flavor: str = "openai", **kw) -> Upstream:
        up = Upstream(flavor, **kw)
        await up.start()
        ups.append(up)
        return up

    yield start
    for up in ups:
        await up.stop()


@pytest.fixture(params=["openai", "vllm", "llamacpp"])
async def stack(request, start_upstream, start_gateway):
    """A gateway in front of one scripted upstream, once per backend type."""
    up = await start_upstream(request.param)
    toml = gateway_config({"up": {"type": request.param, "base_url": up.url, "model": "test-model",
                                  "vision": True,
                                  "model_mapping": {"claude-opus-4-8": "test-model", "claude-*": "test-model"}}},
                          default="up")
    gw = await start_gateway(toml)
    return up, gw


@pytest.fixture(scope="session")
def demo_model() -> Path:
    """The tiny scripted MLX model, from the cache `serve --demo` uses (generated there when missing or stale)."""
    # Imported here: only the MLX tests pay for importing mlx.
    from demo_model.generate import default_root, ensure_demo_model
    return ensure_demo_model(root=default_root())


async def engine_idle(gw: RunningGateway, backend: str = "m", timeout: float = 5.0) -> str:
    """The MLX backend's /health detail once it says no request is active (a cancelled generation
    has stopped), or the last one seen when `timeout` passed first."""
    async def detail() -> str:
        return (await (await gw.get("/health")).json())["backends"][backend]["detail"]

    return await wait_for(detail, timeout, until=lambda d: "active requests: 0" in d, interval=0.05)


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    """The tiny scripted MLX model where `serve --demo` keeps it ($CLAUDE_GATEWAY_DEMO_DIR, else the
    user's cache), generated there when missing or stale."""
    from demo_model.generate import ensure_demo_model
    return ensure_demo_model()


@pytest.fixture
async def mlx_gw(start_gateway, demo_model, tmp_path):
    """Factory: a gateway whose default (and claude-*) backend is the demo model."""

    async def start(**backend):
        cfg = {"type": "mlx", "model": str(demo_model), "model_mapping": {"claude-*": str(demo_model)}}
        cfg.update(backend)
        log = tmp_path / "requests.jsonl"
        gw = await start_gateway(gateway_config({"m": cfg}, default="m", log_path=str(log)))
        gw.log_path = log
        return gw

    return start
