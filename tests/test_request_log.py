"""The JSONL request log, read back from the file a real gateway wrote."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import aiohttp

from tests.conftest import TOKEN, gateway_config
from tests.support.net import free_port
from tests.logtools import (
    ROOT,
    OwnGateway,
    log_has,
    read_lines,
    read_records,
    wait_records,
    wait_until,
)
from tests.upstream import FAIL, FAIL_MID, TEXT, TOOL, Script

CONTRACT = {"ts", "request_id", "event", "method", "path", "query", "status", "duration_ms", "ttft_ms", "model",
            "backend", "backend_model", "stream", "input_tokens", "output_tokens", "cache_read_tokens",
            "stop_reason", "error", "session_id", "user_agent", "body"}


def _backend(up, **extra) -> dict:
    return {"up": {"type": "openai", "base_url": up.url, "model": "test-model",
                   "model_mapping": {"claude-*": "test-model"}, **extra}}


def _msg(text: str = "hi", **kw) -> dict:
    return {"model": "claude-opus-4-8", "max_tokens": 100, "messages": [{"role": "user", "content": text}], **kw}


async def test_concurrent_requests_give_whole_lines_flushed_at_shutdown(start_upstream, tmp_path):
    up = await start_upstream()
    up.default = lambda body: TEXT("answer " * 20)
    log = tmp_path / "requests.jsonl"
    async with OwnGateway(gateway_config(_backend(up), log_path=str(log)), token=TOKEN) as gw:
        # Bodies from 1 KB to ~125 KB: big lines take longer to write, the case where appends could interleave.
        bodies = [_msg("x" * (1000 * (i % 6) ** 3 + i), stream=bool(i % 2)) for i in range(40)]

        async def send(body: dict) -> str:
            resp = await gw.post("/v1/messages", body)
            await resp.read()
            assert resp.status == 200
            return resp.headers["request-id"]

        ids = await asyncio.gather(*(send(b) for b in bodies))
    # The gateway has shut down: everything it answered is in the file, no waiting.
    recs = read_records(log)
    assert len(recs) == 40
    by_id = {r["request_id"]: r for r in recs}
    assert set(by_id) == set(ids)
    for rid, body in zip(ids, bodies):
        assert by_id[rid]["body"] == body
        assert by_id[rid]["stream"] is body["stream"]
        assert CONTRACT <= set(by_id[rid])


async def test_streaming_record_has_ttft_tokens_stop_reason_and_tools(start_upstream, start_gateway, tmp_path):
    up = await start_upstream()
    up.push(Script(deltas=TOOL("get_weather", {"location": "Paris"}, lead="Checking.").deltas,
                   finish_reason="tool_calls", first_delay_s=0.3))
    log = tmp_path / "r.jsonl"
    gw = await start_gateway(gateway_config(_backend(up), log_path=str(log)))
    resp = await gw.post("/v1/messages", _msg(stream=True), **{"X-Claude-Code-Session-Id": "sess-42",
                                                               "User-Agent": "claude-cli/2.1.0 (external, cli)"})
    await resp.read()
    [rec] = await wait_records(log, 1)
    assert rec["event"] == "request" and rec["method"] == "POST" and rec["path"] == "/v1/messages"
    assert rec["status"] == 200 and rec["stream"] is True and rec["error"] is None
    assert rec["ttft_ms"] >= 300 and rec["duration_ms"] >= rec["ttft_ms"]
    assert rec["input_tokens"] > 0 and rec["output_tokens"] > 0
    assert rec["stop_reason"] == "tool_use" and rec["tool_names"] == ["get_weather"]
    assert (rec["model"], rec["backend"], rec["backend_model"]) == ("claude-opus-4-8", "up", "test-model")
    assert rec["session_id"] == "sess-42" and rec["user_agent"] == "claude-cli/2.1.0 (external, cli)"
    assert rec["request_id"] == resp.headers["request-id"]


async def test_failures_are_recorded_with_their_error(start_upstream, start_gateway, tmp_path):
    up = await start_upstream()
    up.push(FAIL(500, "boom"), FAIL_MID(500))
    log = tmp_path / "r.jsonl"
    gw = await start_gateway(gateway_config(_backend(up), log_path=str(log)))
    assert (await gw.messages(_msg()))[0] == 500
    resp = await gw.post("/v1/messages", _msg(stream=True))
    assert "event: error" in await resp.text()
    bad = await gw.post("/v1/messages", b"{not json")
    assert bad.status == 400
    first, mid, invalid = await wait_records(log, 3)
    assert first["status"] == 500 and first["error"]["type"] == "api_error" and "boom" in first["error"]["message"]
    assert mid["status"] == 200 and mid["error"]["type"] == "api_error" and mid["stop_reason"] is None
    # Even a body that is not JSON is kept (as text), so the request can be replayed as it came.
    assert invalid["status"] == 400 and invalid["body"] == "{not json"


async def test_unknown_route_gets_404_and_a_redacted_log_line(start_upstream, start_gateway, tmp_path):
    up = await start_upstream()
    log = tmp_path / "r.jsonl"
    gw = await start_gateway(gateway_config(_backend(up), log_path=str(log)))
    resp = await gw.session.post(gw.url + "/v1/experimental/probe?beta=true&x=1", data=b"0123456789",
                                 headers={"Authorization": f"Bearer {TOKEN}", "Cookie": "sid=cookie-value-77",
                                          "X-Probe": "yes"})
    assert resp.status == 404
    body = await resp.json()
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"
    assert body["request_id"] == resp.headers["request-id"]
    [rec] = await wait_records(log, 1)
    assert rec["event"] == "unknown_route"
    assert (rec["method"], rec["path"], rec["query"]) == ("POST", "/v1/experimental/probe", "beta=true&x=1")
    assert rec["status"] == 404 and rec["body_bytes"] == 10
    headers = {k.lower(): v for k, v in rec["headers"].items()}
    assert headers["authorization"] == "[REDACTED]" and headers["cookie"] == "[REDACTED]"
    assert headers["x-probe"] == "yes"
    assert b"cookie-value-77" not in log.read_bytes()


async def test_secrets_never_reach_the_file(start_upstream, start_gateway, tmp_path):
    up_key = "sk-upstream-key-0451"
    up = await start_upstream(api_key=up_key)
    log = tmp_path / "r.jsonl"
    gw = await start_gateway(gateway_config(_backend(up, api_key=up_key), log_path=str(log)))
    assert (await gw.messages(_msg(f"my token is {TOKEN} and the key {up_key}")))[0] == 200
    resp = await gw.session.post(gw.url + "/v1/messages", data=json.dumps(_msg()),
                                 headers={"Authorization": f"Bearer {TOKEN}", "content-type": "application/json",
                                          "anthropic-version": "2023-06-01"})
    assert resp.status == 200
    resp = await gw.session.get(gw.url + f"/nope?key={TOKEN}", headers={"x-api-key": TOKEN, "x-other": up_key})
    assert resp.status == 404
    recs = await wait_records(log, 3)
    raw = log.read_bytes()
    assert TOKEN.encode() not in raw and up_key.encode() not in raw
    assert recs[0]["body"]["messages"][0]["content"] == "my token is [REDACTED] and the key [REDACTED]"
    assert recs[2]["query"] == "key=[REDACTED]"
    assert {k.lower(): v for k, v in recs[2]["headers"].items()}["x-other"] == "[REDACTED]"


async def test_secret_with_json_escaped_characters_is_redacted(start_upstream, start_gateway, tmp_path):
    token = 'sk-"quoted\\token'
    up = await start_upstream()
    log = tmp_path / "r.jsonl"
    toml = gateway_config(_backend(up), log_path=str(log), token=None).replace(
        "[log]", f"auth_token = {json.dumps(token)}\n[log]")
    gw = await start_gateway(toml, token=token)
    assert (await gw.messages(_msg(f"say {token}")))[0] == 200
    [rec] = await wait_records(log, 1)
    raw = log.read_bytes()
    assert token.encode() not in raw and json.dumps(token)[1:-1].encode() not in raw
    assert rec["body"]["messages"][0]["content"] == "say [REDACTED]"


async def test_bodies_false_keeps_no_body(start_upstream, start_gateway, tmp_path):
    up = await start_upstream()
    log = tmp_path / "r.jsonl"
    gw = await start_gateway(gateway_config(_backend(up), log_path=str(log)).replace("bodies = true", "bodies = false"))
    assert (await gw.messages(_msg("private words")))[0] == 200
    [rec] = await wait_records(log, 1)
    assert "body" not in rec and b"private words" not in log.read_bytes()
    assert rec["status"] == 200 and rec["output_tokens"] > 0


async def test_rotation_keeps_n_gzipped_files_of_whole_lines(start_upstream, start_gateway, tmp_path):
    up = await start_upstream()
    log = tmp_path / "requests.jsonl"
    toml = gateway_config(_backend(up), log_path=str(log)).replace(
        "bodies = true", "bodies = true\nrotate_mb = 0.01\nkeep = 2\ngzip = true")  # ~10 KB per file
    gw = await start_gateway(toml)
    ids = []
    for i in range(30):  # ~2 KB lines: ~5 per file, so 6 rotations; only the newest 3 files survive
        resp = await gw.post("/v1/messages", _msg(f"{i:03d} " + "y" * 1500))
        await resp.read()
        ids.append(resp.headers["request-id"])
    await wait_until(lambda: log_has(log, ids[-1]))
    # The newest rotated file is compressed in a side thread: wait for it, then the set is final.
    expected = ["requests.jsonl", "requests.jsonl.1.gz", "requests.jsonl.2.gz"]
    await wait_until(lambda: sorted(p.name for p in tmp_path.iterdir()) == expected)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == expected
    kept = []
    for name in ["requests.jsonl.2.gz", "requests.jsonl.1.gz", "requests.jsonl"]:
        recs = read_records(tmp_path / name)
        assert sum(len(line) for line in read_lines(tmp_path / name)) <= 0.01 * 1024 * 1024
        kept += [r["request_id"] for r in recs]
    # Oldest first across the files, no gap, ending with the newest request.
    assert kept == ids[-len(kept):] and len(kept) >= 9  # 3 files of 3+ lines (each line also holds the answer)


async def test_rotation_without_gzip_keeps_plain_files(start_upstream, start_gateway, tmp_path):
    up = await start_upstream()
    log = tmp_path / "requests.jsonl"
    toml = gateway_config(_backend(up), log_path=str(log)).replace(
        "bodies = true", "bodies = true\nrotate_mb = 0.005\nkeep = 1\ngzip = false")
    gw = await start_gateway(toml)
    for i in range(12):
        resp = await gw.post("/v1/messages", _msg("z" * 1500))
        await resp.read()
    await wait_until(lambda: log_has(log, resp.headers["request-id"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["requests.jsonl", "requests.jsonl.1"]
    assert read_records(tmp_path / "requests.jsonl.1")


async def test_killed_gateway_leaves_only_whole_lines_but_the_last(start_upstream, tmp_path):
    up = await start_upstream()
    up.default = lambda body: TEXT("ok " * 30, pieces=10)
    log = tmp_path / "requests.jsonl"
    port = free_port()
    cfg = tmp_path / "config.toml"
    cfg.write_text(gateway_config(_backend(up), log_path=str(log), token=None).replace("port = 8082", f"port = {port}"))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg),
                                                cwd=ROOT, stderr=asyncio.subprocess.PIPE)
    try:
        while b"listening" not in await asyncio.wait_for(proc.stderr.readline(), 20):
            pass
        url = f"http://127.0.0.1:{port}/v1/messages"
        answered = 0
        async with aiohttp.ClientSession() as session:
            async def client(i: int) -> None:
                nonlocal answered
                while True:
                    body = _msg("w" * (3000 * (i + 1)), stream=bool(i % 2))
                    async with session.post(url, json=body, headers={"anthropic-version": "2023-06-01"}) as r:
                        await r.read()
                    answered += 1

            clients = [asyncio.create_task(client(i)) for i in range(6)]
            while answered < 30:
                await asyncio.sleep(0.01)
            proc.send_signal(signal.SIGKILL)  # mid-flood: requests in flight, lines being written
            await proc.wait()
            for c in clients:
                c.cancel()
            await asyncio.gather(*clients, return_exceptions=True)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = read_lines(log)
    assert len(lines) >= 20
    for line in lines[:-1]:
        assert line.endswith(b"\n")
        json.loads(line)
    assert os.path.getsize(log) == sum(len(line) for line in lines)


async def test_unicode_line_separators_do_not_split_lines(start_upstream, start_gateway, tmp_path):
    up = await start_upstream()
    log = tmp_path / "r.jsonl"
    gw = await start_gateway(gateway_config(_backend(up), log_path=str(log)))
    text = "a\u2028b\u2029c\x85d é 日本"
    assert (await gw.messages(_msg(text)))[0] == 200
    assert (await gw.messages(_msg("plain")))[0] == 200
    await wait_records(log, 2)
    # str.splitlines() (and JavaScript) also break lines at U+2028, U+2029 and U+0085.
    lines = log.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    assert json.loads(lines[0])["body"]["messages"][0]["content"] == text


async def test_deeply_nested_body_still_gets_its_line(start_upstream, start_gateway, tmp_path):
    up = await start_upstream()
    log = tmp_path / "r.jsonl"
    gw = await start_gateway(gateway_config(_backend(up), log_path=str(log)))
    msg = json.dumps(_msg())
    deep = msg[:-1] + ', "extra": ' + "[" * 1000 + "]" * 1000 + "}"
    assert (await gw.post("/v1/messages", deep)).status == 400
    [rec] = await wait_records(log, 1)
    assert rec["status"] == 400 and rec["body"] == deep  # kept as sent, so it can be replayed


def test_a_body_too_deep_to_serialize_leaves_the_rest_of_the_line():
    from gateway.reqlog import LineRenderer, RequestRecord

    rec = RequestRecord(request_id="req_1", method="POST", path="/v1/messages", status=200)
    for depth, expect_body in ((300, True), (1500, False)):  # past orjson's 255 levels; past Python's recursion
        body: list = []
        for _ in range(depth - 1):
            body = [body]
        rec.body = body
        line = json.loads(LineRenderer(("sk-x",)).render(rec.to_dict(with_body=True)))
        assert line["request_id"] == "req_1" and line["status"] == 200
        assert isinstance(line["body"], list) is expect_body
