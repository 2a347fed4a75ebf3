"""anthropic-compat.md section L: /v1/models and /v1/models/{id}."""
from __future__ import annotations

import re
from datetime import datetime
from urllib.parse import quote

import pytest
from yarl import URL

from tests.compat_helpers import MODEL, assert_error
from tests.conftest import gateway_config

RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
MANY = [f"org/model-{i:02d}" for i in range(25)]


async def _many_models(start_upstream, start_gateway, flavor: str = "vllm"):
    """A gateway whose catalog has more than one default page (20) of models."""
    up = await start_upstream(flavor, models=MANY)
    toml = gateway_config({"up": {"type": flavor, "base_url": up.url, "model": MANY[0],
                                  "model_mapping": {MODEL: MANY[0], "claude-sonnet-4-5": MANY[1]}}},
                          default="up")
    return up, await start_gateway(toml)


async def _page(gw, query: str = "") -> dict:
    resp = await gw.get("/v1/models" + query)
    text = await resp.text()
    assert resp.status == 200, text
    return await resp.json()


async def _all(gw) -> list[dict]:
    return (await _page(gw, "?limit=1000"))["data"]


async def test_l1_list_shape(stack):
    """L1: `GET /v1/models` → `{data, has_more, first_id, last_id}`; items have type, id, display_name, created_at."""
    _, gw = stack
    page = await _page(gw)
    assert set(page) >= {"data", "has_more", "first_id", "last_id"}
    assert isinstance(page["has_more"], bool)
    assert page["data"]
    for item in page["data"]:
        assert item["type"] == "model"
        assert isinstance(item["id"], str) and item["id"]
        assert isinstance(item["display_name"], str) and item["display_name"]
        assert RFC3339.match(item["created_at"]), item
        datetime.fromisoformat(item["created_at"].replace("Z", "+00:00"))
        for key in ("max_input_tokens", "max_tokens"):
            assert key not in item or type(item[key]) is int


async def test_l2_claude_code_discovery(stack):
    """L2: `GET /v1/models?limit=1000` with the messages auth headers → 200, no redirect."""
    _, gw = stack
    resp = await gw.session.get(gw.url + "/v1/models?limit=1000", allow_redirects=False,
                                headers=gw.headers(**{"anthropic-beta": "claude-code-20250219",
                                                      "x-app": "cli"}))
    assert resp.status == 200
    assert not resp.history
    assert (await resp.json())["data"]


async def test_l3_listed_ids_usable(start_upstream, start_gateway):
    """L3: one listed id contains `claude`/`anthropic`, and every listed id is accepted by /v1/messages and count_tokens."""
    up = await start_upstream("openai", models=["test-model", "other-model"])
    toml = gateway_config({"up": {"type": "openai", "base_url": up.url, "model": "test-model",
                                  "model_mapping": {MODEL: "test-model", "claude-haiku-4-5": "other-model"}}})
    gw = await start_gateway(toml)  # no default backend: an unlisted name would be a 404
    ids = [m["id"] for m in await _all(gw)]
    assert any("claude" in i or "anthropic" in i for i in ids), ids
    assert set(ids) >= {MODEL, "claude-haiku-4-5", "test-model", "other-model"}
    for model_id in ids:
        status, data = await gw.messages({"model": model_id, "max_tokens": 20,
                                          "messages": [{"role": "user", "content": "hi"}]})
        assert status == 200, (model_id, data)
        assert data["model"] == model_id
        resp = await gw.post("/v1/messages/count_tokens", {"model": model_id,
                                                           "messages": [{"role": "user", "content": "hi"}]})
        assert resp.status == 200, (model_id, await resp.text())
    assert [r["model"] for r in up.received] == [
        {MODEL: "test-model", "claude-haiku-4-5": "other-model"}.get(i, i) for i in ids]


async def test_l4_first_and_last_id(start_upstream, start_gateway):
    """L4: `first_id == data[0].id`, `last_id == data[-1].id`; both null when `data` is empty."""
    _, gw = await _many_models(start_upstream, start_gateway)
    page = await _page(gw, "?limit=5")
    assert page["first_id"] == page["data"][0]["id"] and page["last_id"] == page["data"][-1]["id"]
    everything = await _all(gw)
    empty = await _page(gw, f"?after_id={quote(everything[-1]['id'], safe='')}")
    assert empty["data"] == [] and empty["first_id"] is None and empty["last_id"] is None
    assert empty["has_more"] is False


async def test_l5_limit(start_upstream, start_gateway):
    """L5: `limit=1` → one item with `has_more:true`; the default page size is 20; `limit=0`/`1001` → E(400)."""
    _, gw = await _many_models(start_upstream, start_gateway)
    assert len(await _all(gw)) > 20
    one = await _page(gw, "?limit=1")
    assert len(one["data"]) == 1 and one["has_more"] is True
    default = await _page(gw)
    assert len(default["data"]) == 20 and default["has_more"] is True
    for bad in ("0", "1001", "-1", "abc"):
        await assert_error(await gw.get(f"/v1/models?limit={bad}"), 400, "invalid_request_error")


async def test_l6_cursors(start_upstream, start_gateway):
    """L6: `after_id=<last_id>` → the next page, no overlap; `before_id=<first_id>` → the previous page;
    an unknown cursor → 4xx or an empty page, never page 1 again."""
    _, gw = await _many_models(start_upstream, start_gateway)
    everything = [m["id"] for m in await _all(gw)]
    p1 = await _page(gw, "?limit=7")
    p2 = await _page(gw, f"?limit=7&after_id={quote(p1['last_id'], safe='')}")
    assert [m["id"] for m in p1["data"]] == everything[:7]
    assert [m["id"] for m in p2["data"]] == everything[7:14]
    back = await _page(gw, f"?limit=7&before_id={quote(p2['first_id'], safe='')}")
    assert [m["id"] for m in back["data"]] == everything[:7]
    assert back["has_more"] is False  # nothing before page 1
    for cursor in ("after_id", "before_id"):
        resp = await gw.get(f"/v1/models?limit=7&{cursor}=no-such-model")
        if resp.status == 200:
            assert (await resp.json())["data"] == []
        else:
            assert 400 <= resp.status < 500
            await assert_error(resp, resp.status, {400: "invalid_request_error", 404: "not_found_error"}[resp.status])


async def test_l7_sdk_auto_pagination(start_upstream, start_gateway):
    """L7: the last page has `has_more:false`; walking with `after_id` ends and visits every model once (SDK pager)."""
    _, gw = await _many_models(start_upstream, start_gateway)
    everything = [m["id"] for m in await _all(gw)]
    walked = [m.id async for m in gw.anthropic().models.list(limit=4)]
    assert walked == everything
    # the manual walk, counting pages
    ids, after, pages = [], None, 0
    while True:
        page = await _page(gw, "?limit=6" + (f"&after_id={quote(after, safe='')}" if after else ""))
        pages += 1
        ids += [m["id"] for m in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
        assert pages < 100
    assert ids == everything
    assert pages == -(-len(everything) // 6)


async def test_l8_unknown_params_and_stable_order(start_upstream, start_gateway):
    """L8: unknown query parameters are tolerated; the order is stable across calls."""
    _, gw = await _many_models(start_upstream, start_gateway)
    first = [m["id"] for m in await _all(gw)]
    again = await _page(gw, "?limit=1000&beta=true&foo=bar&order=whatever")
    assert [m["id"] for m in again["data"]] == first
    assert [m["id"] for m in await _all(gw)] == first


@pytest.mark.parametrize("flavor", ["openai", "vllm"])
async def test_l9_get_one_model(start_upstream, start_gateway, flavor):
    """L9: `GET /v1/models/{id}` for a listed id → the same fields and values as its list entry; encoded ids work."""
    up = await start_upstream(flavor, models=["Qwen/Qwen3-Coder-30B-A3B-Instruct", "llama3:8b", "plain"])
    toml = gateway_config({"up": {"type": flavor, "base_url": up.url, "model": "plain",
                                  "model_mapping": {MODEL: "plain", "claude haiku 4.5 (local)": "llama3:8b"}}})
    gw = await start_gateway(toml)
    listed = await _all(gw)
    assert {"Qwen/Qwen3-Coder-30B-A3B-Instruct", "llama3:8b", "claude haiku 4.5 (local)"} <= {m["id"] for m in listed}
    for entry in listed:
        encoded = quote(entry["id"], safe="")
        resp = await gw.session.get(URL(f"{gw.url}/v1/models/{encoded}", encoded=True), headers=gw.headers())
        assert resp.status == 200, (entry["id"], await resp.text())
        assert await resp.json() == entry
    resp = await gw.get("/v1/models/Qwen/Qwen3-Coder-30B-A3B-Instruct")  # unencoded slash too
    assert (await resp.json())["id"] == "Qwen/Qwen3-Coder-30B-A3B-Instruct"
    model = await gw.anthropic().models.retrieve("Qwen/Qwen3-Coder-30B-A3B-Instruct")
    assert model.id == "Qwen/Qwen3-Coder-30B-A3B-Instruct" and model.type == "model"


async def test_l10_unknown_model_404(stack):
    """L10: `GET /v1/models/{unknown}` → E(404, not_found_error)."""
    _, gw = stack
    await assert_error(await gw.get("/v1/models/no-such-model"), 404, "not_found_error")
    await assert_error(await gw.get("/v1/models/" + quote("a/b c", safe="")), 404, "not_found_error")


async def test_l11_anthropic_shape_with_version_header(stack):
    """L11: with `anthropic-version`, /v1/models returns the Anthropic shape (not the OpenAI list shape)."""
    _, gw = stack
    page = await _page(gw)
    assert "object" not in page
    assert all(item["type"] == "model" and "object" not in item and "created" not in item for item in page["data"])
