"""Models that are not on this machine yet, over HTTP: a request for one gets a 503 naming
`claude-gateway pull` (or, with download_on_demand, the download), and `preload` loads models once
the server listens, /health saying "loading" until they are resident. The hub is the local
stand-in (tests/fake_hub.py) serving the generated demo model's files."""
from __future__ import annotations

import json
import threading

import pytest

from tests.conftest import gateway_config
from tests.fake_hub import FakeHub
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
