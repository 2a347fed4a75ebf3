"""The inspector's data routes over HTTP (no browser): the latest lines, bounded in memory."""
from __future__ import annotations

from tests.conftest import TOKEN, gateway_config
from tests.logtools import read_records, wait_records


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
