"""Model discovery (Claude Code's CLAUDE_CODE_ENABLE_GATEWAY_MODEL_DISCOVERY) on glob-only configs:
GET /v1/models lists the Claude ids each glob serves, named after what serves them; GET
/v1/models/{id} answers every name /v1/messages serves by name; listing never loads an MLX model."""
from __future__ import annotations

import json
import re
import shutil

import pytest

from gateway.models_api import family_name, shipped_claude_ids
from tests.compat_helpers import assert_error
from tests.conftest import gateway_config

CLAUDE_CODE_FILTER = re.compile(r"claude|anthropic", re.IGNORECASE)  # what Claude Code keeps of the list


async def _ids(gw, query: str = "?limit=1000") -> list[dict]:
    resp = await gw.get("/v1/models" + query)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["data"]


async def test_glob_only_config_lists_current_claude_ids(start_upstream, start_gateway):
    """The shipped config's shape ("claude-*" only, split by family across two backends): every
    current Claude id is listed once, routed by the first matching glob, with a display name and a
    description saying what serves it."""
    gpu = await start_upstream("vllm", models=["Qwen/Qwen3-Coder-30B-A3B-Instruct"], context=65536)
    small = await start_upstream("openai", models=["qwen3-1.7b"])
    gw = await start_gateway(gateway_config({
        "gpu": {"type": "vllm", "base_url": gpu.url, "model": "Qwen/Qwen3-Coder-30B-A3B-Instruct",
                "model_mapping": {"claude-sonnet-*": "Qwen/Qwen3-Coder-30B-A3B-Instruct",
                                  "claude-opus-*": "Qwen/Qwen3-Coder-30B-A3B-Instruct"}},
        "small": {"type": "openai", "base_url": small.url, "model": "qwen3-1.7b",
                  "model_mapping": {"claude-*": "qwen3-1.7b"}}}))
    data = await _ids(gw)
    claude = [m for m in data if CLAUDE_CODE_FILTER.search(m["id"])]
    assert [m["id"] for m in claude] == list(shipped_claude_ids())
    assert "claude-opus-5-5" in {m["id"] for m in claude} and "claude-haiku-4-5" in {m["id"] for m in claude}
    by_id = {m["id"]: m for m in claude}
    sonnet = by_id["claude-sonnet-4-6"]
    assert sonnet["display_name"] == "Sonnet 4.6 → Qwen3-Coder-30B-A3B-Instruct (gpu)"
    assert "gpu" in sonnet["description"] and "vllm" in sonnet["description"] and "65,536" in sonnet["description"]
    assert sonnet["max_input_tokens"] == 65536
    assert by_id["claude-haiku-4-5"]["display_name"] == "Haiku 4.5 → qwen3-1.7b (small)"
    # Each listed id routes where its entry says.
    for model_id, up, backend_model in (("claude-sonnet-5-5", gpu, "Qwen/Qwen3-Coder-30B-A3B-Instruct"),
                                        ("claude-haiku-5-5", small, "qwen3-1.7b")):
        assert backend_model in by_id[model_id]["description"]
        status, _ = await gw.messages({"model": model_id, "max_tokens": 10,
                                       "messages": [{"role": "user", "content": "hi"}]})
        assert status == 200 and up.received[-1]["model"] == backend_model


async def test_get_model_answers_every_name_served_by_name(start_upstream, start_gateway):
    """GET /v1/models/{id}: a listed id as listed; an older id the glob still serves
    (claude-sonnet-4-5), and a name with Claude Code's [1m] hint, get 200; anything else 404 (the
    default backend catches every name for /v1/messages, but that is not a model of its own)."""
    up = await start_upstream("openai")
    gw = await start_gateway(gateway_config({"up": {"type": "openai", "base_url": up.url, "model": "test-model",
                                                    "model_mapping": {"claude-*": "test-model"}}}, default="up"))
    listed = {m["id"]: m for m in await _ids(gw)}
    resp = await gw.get("/v1/models/claude-opus-5-5")
    assert resp.status == 200 and await resp.json() == listed["claude-opus-5-5"]
    for name in ("claude-sonnet-4-5", "claude-opus-4-8[1m]", "claude-3-7-sonnet-20250219"):
        resp = await gw.get(f"/v1/models/{name}")
        assert resp.status == 200, (name, await resp.text())
        entry = await resp.json()
        assert entry["id"] == name and entry["type"] == "model" and "test-model" in entry["display_name"]
        status, _ = await gw.messages({"model": name, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
        assert status == 200
    await assert_error(await gw.get("/v1/models/gpt-4o"), 404, "not_found_error")


async def test_config_overrides_the_claude_id_list(start_upstream, start_gateway):
    up = await start_upstream("openai")
    gw = await start_gateway(gateway_config(
        {"up": {"type": "openai", "base_url": up.url, "model": "test-model", "model_mapping": {"claude-*": "test-model"}}},
        extra='[routing]\nclaude_models = ["claude-sonnet-9-9", "claude-opus-9-9", "gpt-x"]\n'))
    ids = [m["id"] for m in await _ids(gw)]
    assert ids[:2] == ["claude-sonnet-9-9", "claude-opus-9-9"]  # gpt-x matches no glob
    assert "gpt-x" not in ids and "claude-opus-5-5" not in ids


def test_claude_models_config_must_be_ids():
    from gateway.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="claude_models"):
        parse_config('[routing]\nclaude_models = ["ok", 3]\n[backends.a]\ntype = "openai"\nbase_url = "http://x"\n')


def test_family_names():
    assert family_name("claude-opus-5-5") == "Opus 5.5"
    assert family_name("claude-haiku-4-5-20251001") == "Haiku 4.5"
    assert family_name("my-model") == "my-model"


async def test_listing_never_loads_an_mlx_model(start_gateway, demo_model_dir, tmp_path):
    """An MLX backend whose haiku mapping points at a model not loaded yet: listing answers from what
    is known (the local config.json's context) and the resident model stays the only one."""
    demo = demo_model_dir
    other = tmp_path / "haiku-model"
    shutil.copytree(demo, other)
    gw = await start_gateway(gateway_config({"m": {
        "type": "mlx", "model": str(demo), "max_resident_models": 1,
        "model_mapping": {"claude-haiku-*": str(other), "claude-*": str(demo)}}}, default="m"))
    data = {m["id"]: m for m in await _ids(gw)}
    assert data["claude-haiku-4-5"]["display_name"] == "Haiku 4.5 → haiku-model (m)"
    assert data["claude-haiku-4-5"]["max_input_tokens"] == json.loads((other / "config.json").read_text())["max_position_embeddings"]
    assert data["claude-opus-5-5"]["display_name"] == f"Opus 5.5 → {demo.name} (m)"
    resp = await gw.get("/v1/models/claude-haiku-4-5")
    assert resp.status == 200
    detail = (await (await gw.get("/health")).json())["backends"]["m"]["detail"]
    assert f"resident: {demo};" in detail, detail
