"""The inspector's data routes over HTTP (no browser): the latest lines, bounded in memory."""
from __future__ import annotations

import json

from tests.conftest import TOKEN, gateway_config
from tests.logtools import read_records, wait_records
from tests.upstream import TOOL, Script


async def test_recent_lines_keep_whole_records_within_a_memory_budget(start_upstream, start_gateway, tmp_path):
    log = tmp_path / "requests.jsonl"
    up = await start_upstream()
    gw = await start_gateway(gateway_config({"up": {"type": "openai", "base_url": up.url, "model": "m"}},
                                            default="up", log_path=str(log)))
    ids = []
    big = "x" * 400_000  # Claude Code sends bodies this size once a session has grown
    for i in range(30):
        resp = await gw.post("/v1/messages", {"model": "m", "max_tokens": 5,
                                              "messages": [{"role": "user", "content": f"{i} {big}"}]})
        assert resp.status == 200
        ids.append(resp.headers["request-id"])
    recs = {r["request_id"]: r for r in await wait_records(log, 30)}
    resp = await gw.get("/inspect/api/records")
    data = await resp.json()
    assert [r["request_id"] for r in data["records"]] == ids  # every head, oldest first
    assert all("body" not in r for r in data["records"])  # the list never carries bodies
    assert data["records"][-1]["answer_preview"] == "Hello there!"
    newest = await (await gw.get(f"/inspect/api/records/{ids[-1]}")).json()
    assert newest == recs[ids[-1]]  # the very line of the log, body and answer included
    oldest = await (await gw.get(f"/inspect/api/records/{ids[0]}")).json()
    assert "body" not in oldest and "response" not in oldest  # over the budget: the head only
    assert oldest == {k: v for k, v in recs[ids[0]].items() if k not in ("body", "response")}
    assert sum(len(line) for _, line in gw.gateway.reqlog.recent()) <= 4.5 * 2**20
    # Only what is new since the last poll.
    after = (await (await gw.get(f"/inspect/api/records?after={data['seq']}")).json())
    assert after["records"] == [] and after["seq"] == data["seq"]
    assert len(read_records(log)) == 30


async def test_inspector_data_need_the_token_when_one_is_set(start_upstream, start_gateway):
    up = await start_upstream()
    gw = await start_gateway(gateway_config({"up": {"type": "openai", "base_url": up.url, "model": "m"}},
                                            default="up"))
    assert (await gw.session.get(gw.url + "/inspect")).status == 200
    for path in ("/inspect/api/records", "/inspect/api/records/req_x"):
        resp = await gw.session.get(gw.url + path)
        assert resp.status == 401 and (await resp.json())["error"]["type"] == "authentication_error"
        resp = await gw.session.get(gw.url + path, headers={"Authorization": f"Bearer {TOKEN}x"})
        assert resp.status == 401
    resp = await gw.session.get(gw.url + "/inspect/api/records", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200


async def test_hostile_lines_do_not_break_the_inspector(start_upstream, start_gateway):
    up = await start_upstream()
    gw = await start_gateway(gateway_config({"up": {"type": "openai", "base_url": up.url, "model": "m"}},
                                            default="up"))
    # A (hostile) upstream's tool arguments nested as deep as orjson reads: inside the log line they
    # sit deeper still, past what orjson reads back.
    args: dict = {}
    for _ in range(253):
        args = {"a": args}
    up.push(TOOL("deep", args, fragment=5000))
    resp = await gw.post("/v1/messages", {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
    assert resp.status == 200, await resp.text()  # was a 500: orjson cannot write the reply that deep
    assert json.loads(await resp.text())["content"][0]["input"] == args
    deep_id = resp.headers["request-id"]
    resp = await gw.session.get(gw.url + "/v1/x", headers={"body": '","body":{', **gw.headers()})
    assert resp.status == 404
    resp = await gw.post("/v1/messages", {"model": "m", "max_tokens": 5,
                                          "messages": [{"role": "user", "content": "</script><img src=x onerror=alert(1)>"}]})
    assert resp.status == 200
    data = await (await gw.get("/inspect/api/records")).json()
    assert data["records"][0]["request_id"] == deep_id and len(data["records"]) == 3
    one = await gw.get(f"/inspect/api/records/{deep_id}")
    assert one.status == 200 and one.content_type == "application/json"


async def test_the_list_does_not_show_a_call_the_client_never_got_as_made(start_upstream, start_gateway):
    """A tool call a length stop cut is held back from the client (the answer says max_tokens);
    the list's answer preview must not present it as a call the model made."""
    up = await start_upstream()
    gw = await start_gateway(gateway_config({"up": {"type": "openai", "base_url": up.url, "model": "m"}},
                                            default="up"))
    up.push(Script(deltas=[{"content": "Checking."},
                           {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                            "function": {"name": "get_weather", "arguments": ""}}]},
                           {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Pa'}}]}],
                   finish_reason="length"))
    status, msg = await gw.messages({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
                                     "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}]})
    assert status == 200 and msg["content"] == [{"type": "text", "text": "Checking."}]
    [head] = (await (await gw.get("/inspect/api/records")).json())["records"]
    assert head["stop_reason"] == "max_tokens"
    assert head["answer_preview"] == "Checking. [get_weather, cut short]"
