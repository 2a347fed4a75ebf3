"""anthropic-compat.md section A: reachability, authentication, headers."""
from __future__ import annotations

import asyncio
import gzip
import json
import zlib

import aiohttp
import pytest

from tests.compat_helpers import MODEL, assert_error, body, post_raw, start_stack
from tests.conftest import TOKEN
from tests.support.sse import parse_frames
from tests.upstream import TEXT

CLAUDE_CODE_BETAS = ["claude-code-20250219", "context-1m-2025-08-07", "interleaved-thinking-2025-05-14",
                     "fine-grained-tool-streaming-2025-05-14", "context-management-2025-06-27",
                     "effort-2025-11-24", "some-future-beta-2031-01-01"]


async def test_a1_root_probe_without_credentials(start_upstream, start_gateway):
    """A1: `HEAD /` and `GET /` → 2xx without credentials."""
    _, gw = await start_stack(start_upstream, start_gateway)
    for _ in range(2):  # Claude Code probes twice
        async with gw.session.head(gw.url + "/") as resp:
            assert 200 <= resp.status < 300
    async with gw.session.get(gw.url + "/") as resp:
        assert 200 <= resp.status < 300


async def test_a2_beta_query_string_ignored(start_upstream, start_gateway):
    """A2: `POST /v1/messages?beta=true` behaves exactly like `POST /v1/messages`."""
    up, gw = await start_stack(start_upstream, start_gateway)
    answers = []
    for path in ("/v1/messages", "/v1/messages?beta=true"):
        up.push(TEXT("Hello there!"))
        resp = await gw.post(path, body())
        assert resp.status == 200
        answers.append(await resp.json())
    for a in answers:
        a.pop("id")
    assert answers[0] == answers[1]
    assert up.received[0] == up.received[1]
    up.push(TEXT("streamed"))
    resp = await gw.post("/v1/messages?beta=true", body(stream=True))
    assert resp.status == 200
    frames = parse_frames(await resp.text())
    assert "".join(d["delta"].get("text", "") for n, d in frames if n == "content_block_delta") == "streamed"


@pytest.mark.parametrize("headers", [
    {"x-api-key": TOKEN},
    {"Authorization": f"Bearer {TOKEN}"},
    {"x-api-key": "sk-something-else", "Authorization": f"Bearer {TOKEN}"},
], ids=["x-api-key", "bearer", "both-bearer-correct"])
async def test_a3_bearer_or_x_api_key(start_upstream, start_gateway, headers):
    """A3: with key K configured, `x-api-key: K`, `Authorization: Bearer K`, or both (Bearer correct) → 200."""
    _, gw = await start_stack(start_upstream, start_gateway)
    resp = await post_raw(gw, "/v1/messages", json.dumps(body()),
                          {"content-type": "application/json", "anthropic-version": "2023-06-01", **headers})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["type"] == "message"


@pytest.mark.parametrize("credentials", [{}, {"x-api-key": "wrong"}, {"Authorization": "Bearer wrong"}],
                         ids=["missing", "wrong-x-api-key", "wrong-bearer"])
async def test_a4_missing_or_wrong_key_is_401(start_upstream, start_gateway, credentials):
    """A4: a missing or wrong key → E(401, authentication_error) on every /v1 endpoint; JSON even for stream:true."""
    up, gw = await start_stack(start_upstream, start_gateway)
    headers = {"content-type": "application/json", "anthropic-version": "2023-06-01", **credentials}
    for path, payload in [("/v1/messages", body()), ("/v1/messages", body(stream=True)),
                          ("/v1/messages/count_tokens", {"model": MODEL, "messages": [{"role": "user",
                                                                                       "content": "hi"}]})]:
        resp = await post_raw(gw, path, json.dumps(payload), headers)
        await assert_error(resp, 401, "authentication_error")
    for path in ("/v1/models", f"/v1/models/{MODEL}"):
        resp = await gw.session.get(gw.url + path, headers=headers)
        await assert_error(resp, 401, "authentication_error")
    assert up.received == []  # nothing reached the backend


@pytest.mark.parametrize("credentials", [{}, {"x-api-key": "anything"}, {"Authorization": "Bearer whatever"}],
                         ids=["none", "x-api-key", "bearer"])
async def test_a5_no_inbound_key_accepts_anything(start_upstream, start_gateway, credentials):
    """A5: with no inbound key configured, any key value (or none) is accepted."""
    _, gw = await start_stack(start_upstream, start_gateway, token=None)
    headers = {"content-type": "application/json", **credentials}
    resp = await post_raw(gw, "/v1/messages", json.dumps(body()), headers)
    assert resp.status == 200, await resp.text()
    resp = await gw.session.get(gw.url + "/v1/models", headers=headers)
    assert resp.status == 200


@pytest.mark.parametrize("version", [None, "2099-12-31", "not-a-version"])
async def test_a6_anthropic_version_optional(start_upstream, start_gateway, version):
    """A6: requests without `anthropic-version`, or with an unexpected value, are still served."""
    _, gw = await start_stack(start_upstream, start_gateway)
    headers = {"content-type": "application/json", "x-api-key": TOKEN}
    if version:
        headers["anthropic-version"] = version
    resp = await post_raw(gw, "/v1/messages", json.dumps(body()), headers)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["content"] == [{"type": "text", "text": "Hello there!"}]


@pytest.mark.parametrize("style", ["comma-joined", "repeated"])
async def test_a7_claude_code_betas_ignored(start_upstream, start_gateway, style):
    """A7: the full Claude Code `anthropic-beta` list is accepted and ignored, comma-joined or repeated."""
    _, gw = await start_stack(start_upstream, start_gateway)
    base = [("content-type", "application/json"), ("anthropic-version", "2023-06-01"), ("x-api-key", TOKEN)]
    if style == "comma-joined":
        headers = base + [("anthropic-beta", ",".join(CLAUDE_CODE_BETAS))]
    else:
        headers = base + [("anthropic-beta", b) for b in CLAUDE_CODE_BETAS]
    for path, payload in [("/v1/messages?beta=true", body()), ("/v1/messages?beta=true", body(stream=True)),
                          ("/v1/messages/count_tokens?beta=true", {"model": MODEL, "messages": [
                              {"role": "user", "content": "hi"}]})]:
        resp = await post_raw(gw, path, json.dumps(payload), headers)
        assert resp.status == 200, await resp.text()
        await resp.read()
    resp = await gw.session.get(gw.url + "/v1/models?limit=1000", headers=headers)
    assert resp.status == 200


def _decode(raw: bytes, encoding: str) -> bytes:
    """Undo a Content-Encoding the gateway may have applied (identity, gzip or deflate)."""
    if encoding in ("", "identity"):
        return raw
    if encoding == "gzip":
        return gzip.decompress(raw)
    if encoding == "deflate":
        return zlib.decompress(raw)
    raise AssertionError(f"response uses an encoding this test cannot check: {encoding!r}")


async def test_a8_claude_code_headers_and_accept_encoding(start_upstream, start_gateway):
    """A8: Claude Code's session/app/Stainless headers and `Accept-Encoding: gzip, deflate, br, zstd` are accepted;
    the response is identity or correctly labelled."""
    up, gw = await start_stack(start_upstream, start_gateway)
    headers = {"content-type": "application/json", "anthropic-version": "2023-06-01", "x-api-key": TOKEN,
               "X-Claude-Code-Session-Id": "3f1c2a9e-0000-4000-8000-000000000001", "x-app": "cli",
               "X-Stainless-Lang": "js", "X-Stainless-Package-Version": "0.60.0", "X-Stainless-OS": "Linux",
               "X-Stainless-Arch": "x64", "X-Stainless-Runtime": "node", "X-Stainless-Runtime-Version": "v22.1.0",
               "X-Stainless-Retry-Count": "0", "X-Stainless-Timeout": "600",
               "Accept-Encoding": "gzip, deflate, br, zstd", "User-Agent": "claude-cli/2.1.0 (external, cli)"}
    # auto_decompress off: the test itself checks that the bytes match the label.
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        up.push(TEXT("Hello there!"), TEXT("streamed"))
        async with session.post(gw.url + "/v1/messages", data=json.dumps(body()), headers=headers) as resp:
            assert resp.status == 200
            raw = _decode(await resp.read(), resp.headers.get("Content-Encoding", ""))
            assert json.loads(raw)["content"] == [{"type": "text", "text": "Hello there!"}]
        async with session.post(gw.url + "/v1/messages", data=json.dumps(body(stream=True)), headers=headers) as resp:
            assert resp.status == 200
            raw = _decode(await resp.read(), resp.headers.get("Content-Encoding", ""))
            frames = parse_frames(raw.decode())
            assert frames[-1][0] == "message_stop"
        async with session.get(gw.url + "/v1/models", headers=headers) as resp:
            assert resp.status == 200
            raw = _decode(await resp.read(), resp.headers.get("Content-Encoding", ""))
            assert json.loads(raw)["data"]


async def test_a9_unknown_path_is_json_404(start_upstream, start_gateway):
    """A9: an unknown path, e.g. `GET /v1/nope` → E(404, not_found_error) as JSON, not HTML."""
    _, gw = await start_stack(start_upstream, start_gateway)
    await assert_error(await gw.get("/v1/nope"), 404, "not_found_error")
    await assert_error(await gw.post("/v1/nope", {}), 404, "not_found_error")
    # without credentials as well: an unknown route is still a JSON 404, never HTML
    resp = await gw.session.get(gw.url + "/v1/nope")
    assert resp.content_type == "application/json"
    assert resp.status in (401, 404)


async def test_a10_request_id_on_every_v1_response(start_upstream, start_gateway):
    """A10: a unique, non-empty `request-id` header on every /v1/* response; error bodies carry it as `request_id`."""
    _, gw = await start_stack(start_upstream, start_gateway)
    ids = []
    ok = [await gw.post("/v1/messages", body()), await gw.post("/v1/messages", body(stream=True)),
          await gw.post("/v1/messages/count_tokens", {"model": MODEL, "messages": [{"role": "user",
                                                                                    "content": "hi"}]}),
          await gw.get("/v1/models"), await gw.get(f"/v1/models/{MODEL}")]
    for resp in ok:
        assert resp.status == 200, await resp.text()
        await resp.read()
        assert resp.headers.get("request-id"), resp.url
        ids.append(resp.headers["request-id"])
    errors = [await gw.post("/v1/messages", b"not json"), await gw.get("/v1/nope"),
              await gw.get("/v1/models/no-such-model"),
              await gw.session.post(gw.url + "/v1/messages", data=json.dumps(body()))]  # no key: 401
    for resp in errors:
        assert resp.status >= 400
        rid = resp.headers.get("request-id")
        assert rid, resp.url
        assert (await resp.json())["request_id"] == rid
        ids.append(rid)
    assert len(set(ids)) == len(ids)


async def test_a11_event_logging_answers_quickly(start_upstream, start_gateway):
    """A11: `POST /api/event_logging/batch` answers with 2xx (or 404) and never hangs."""
    _, gw = await start_stack(start_upstream, start_gateway)
    payload = {"events": [{"event_type": "ClaudeCodeInternalEvent", "event_data": {"x": 1}}]}
    # The timeout only guards against a hang; it is not a speed measurement.
    resp = await asyncio.wait_for(gw.post("/api/event_logging/batch", payload), timeout=10)
    assert 200 <= resp.status < 300 or resp.status == 404
    await resp.read()
