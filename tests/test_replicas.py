"""Replica pools over real HTTP: scripted upstreams as their own processes (killed with SIGKILL like a
crashed server), gateways as real `serve` processes or in-process apps, clients over HTTP."""
from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from gateway.config import ConfigError, parse_config
from tests.conftest import TOKEN, gateway_config
from tests.gateway_process import run_cli, start_serve
from tests.support.net import free_port
from tests.support.sse import parse_frames
from tests.support.poll import wait_for
from tests.upstream import FAIL, FAIL_MID, TEXT, Script, UpstreamProcess

HEADERS = {"anthropic-version": "2023-06-01", "content-type": "application/json", "x-api-key": TOKEN}
BODY = {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}


async def _replicas(n: int, *args: str) -> list[UpstreamProcess]:
    ups = [UpstreamProcess(free_port(), "--flavor", "vllm", "--text", f"replica-{i} says hello", *args)
           for i in range(n)]
    await asyncio.gather(*(u.start() for u in ups))
    return ups


def _pool_config(urls: list[str], log_path: str = "", **backend) -> str:
    cfg = {"type": "vllm", "base_url": urls, "model": "test-model", **backend}
    return gateway_config({"pool": cfg}, default="pool", log_path=log_path)


def _who(text: str) -> str:
    """Which replica wrote an answer (each says its own name)."""
    return text.split(" ", 1)[0]


async def _ask(session: aiohttp.ClientSession, url: str, sid: str | None) -> str:
    headers = dict(HEADERS, **({"X-Claude-Code-Session-Id": sid} if sid else {}))
    async with session.post(url + "/v1/messages", json=BODY, headers=headers) as resp:
        data = await resp.json()
        assert resp.status == 200, data
        return _who(data["content"][0]["text"])


@pytest.fixture
async def replicas():
    started: list[UpstreamProcess] = []

    async def start(n: int, *args: str) -> list[UpstreamProcess]:
        ups = await _replicas(n, *args)
        started.extend(ups)
        return ups

    yield start
    for up in started:
        await up.kill()


async def test_two_gateway_processes_agree_on_every_session(replicas, tmp_path):
    ups = await replicas(3)
    path = tmp_path / "config.toml"
    path.write_text(_pool_config([u.url for u in ups]).replace("port = 8082", f"port = {free_port()}"))
    first = await start_serve(path)
    path2 = tmp_path / "config2.toml"
    path2.write_text(path.read_text().replace(first.url.rsplit(":", 1)[1], str(free_port())))
    second = await start_serve(path2)
    try:
        async with aiohttp.ClientSession() as session:
            sessions = [f"session-{i:03d}" for i in range(40)]
            a = [await _ask(session, first.url, s) for s in sessions]
            b = [await _ask(session, second.url, s) for s in sessions]
            again = [await _ask(session, first.url, s) for s in sessions]
        assert a == b, "two gateways with the same config sent some session to different replicas"
        assert a == again, "a session moved between requests"
        assert set(a) == {"replica-0", "replica-1", "replica-2"}, f"sessions do not spread: {a}"
    finally:
        await first.stop()
        await second.stop()


async def test_requests_without_session_spread_by_in_flight(replicas, start_gateway):
    ups = await replicas(3, "--first-delay", "0.5")
    gw = await start_gateway(_pool_config([u.url for u in ups]))
    async with aiohttp.ClientSession() as session:
        who = await asyncio.gather(*(_ask(session, gw.url, None) for _ in range(6)))
    # Six at once, each held half a second: least in-flight gives every replica two.
    assert sorted(who) == ["replica-0"] * 2 + ["replica-1"] * 2 + ["replica-2"] * 2


async def _stream(session: aiohttp.ClientSession, url: str, sid: str) -> dict:
    """One streaming request: who answered, whether content arrived, and how it ended."""
    headers = dict(HEADERS, **{"X-Claude-Code-Session-Id": sid})
    async with session.post(url + "/v1/messages", json={**BODY, "stream": True}, headers=headers) as resp:
        if resp.status != 200:
            return {"ok": False, "content": False, "status": resp.status, "error": await resp.text()}
        frames = parse_frames(await resp.text())
    text = "".join(d["delta"].get("text", "") for name, d in frames if name == "content_block_delta")
    errors = [d for name, d in frames if name == "error"]
    return {"ok": not errors and frames[-1][0] == "message_stop", "content": bool(text), "who": _who(text),
            "error": errors}


async def test_kill_a_replica_under_load(replicas, start_gateway, tmp_path):
    ups = await replicas(3, "--delay", "0.03")  # eight chunks: each answer streams for ~0.25 s
    log = tmp_path / "requests.jsonl"
    gw = await start_gateway(_pool_config([u.url for u in ups], log_path=str(log)))
    sessions = [f"s{i}" for i in range(24)]
    async with aiohttp.ClientSession() as session:
        home = {s: (await _stream(session, gw.url, s))["who"] for s in sessions}
        victim = ups[int(home["s0"].split("-")[1])]
        victim_name = home["s0"]
        results: list[tuple[str, dict]] = []
        stop = asyncio.Event()

        async def worker(chunk: list[str]) -> None:
            while not stop.is_set():
                for s in chunk:
                    results.append((s, await _stream(session, gw.url, s)))

        workers = [asyncio.ensure_future(worker(sessions[i::6])) for i in range(6)]
        await asyncio.sleep(1.0)
        await victim.kill()
        killed_at = len(results)
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.gather(*workers)

        assert len(results) > killed_at + 20, "the load stopped after the kill"
        failed_early = [r for _, r in results if not r["ok"] and not r["content"]]
        assert failed_early == [], f"requests that had not started streaming failed: {failed_early[:3]}"
        for s, r in results:
            if r["ok"] and home[s] != victim_name:
                assert r["who"] == home[s], f"session {s} moved from {home[s]} to {r['who']}"
        after = [r["who"] for s, r in results[killed_at + 12:] if r["ok"]]
        assert victim_name not in after, "the dead replica kept getting requests"

        health = await (await session.get(gw.url + "/health")).json()
        states = {r["url"]: r for r in health["backends"]["pool"]["replicas"]}
        assert states[victim.url]["ok"] is False and states[victim.url]["ejections"] >= 1
        assert health["backends"]["pool"]["ok"] is True  # two of three still serve

        metrics = await (await session.get(gw.url + "/metrics")).text()
        assert f'gateway_replica_up{{backend="pool",replica="{victim.url}"}} 0.0' in metrics
        assert 'gateway_replica_requests_total{backend="pool",replica="' in metrics

        await victim.start()  # back on the same port: a probe re-admits it
        assert await wait_for(lambda: gw.gateway.backends["pool"].replicas()[ups.index(victim)]["ok"], 20)
        moved_back = [s for s in sessions if home[s] == victim_name]
        for s in moved_back:
            assert (await _stream(session, gw.url, s))["who"] == victim_name, "its sessions did not come home"

    await asyncio.sleep(0.3)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert {line.get("replica") for line in lines} == {u.url for u in ups}


async def test_every_replica_down_is_a_clean_error(start_gateway):
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    gw = await start_gateway(_pool_config(dead))
    resp = await gw.post("/v1/messages", BODY)
    data = await resp.json()
    assert resp.status == 500 and data["error"]["type"] == "api_error"
    assert "no replica of backend 'pool' could answer (2 tried)" in data["error"]["message"]


async def test_llamacpp_slot_affinity_per_replica(start_upstream, start_gateway):
    small = await start_upstream("llamacpp", slots=2)
    big = await start_upstream("llamacpp", slots=7)
    gw = await start_gateway(gateway_config({"pool": {"type": "llamacpp", "base_url": [small.url, big.url],
                                                      "model": "test-model"}}, default="pool"))
    for i in range(30):
        status, _ = await gw.messages(BODY, **{"X-Claude-Code-Session-Id": f"sess-{i}"})
        assert status == 200
    slots_small = {b["id_slot"] for b in small.received}
    slots_big = {b["id_slot"] for b in big.received}
    assert small.received and big.received
    assert slots_small <= {0, 1} and max(slots_big) < 7 and len(slots_big) > 2, (slots_small, slots_big)


async def test_check_lists_every_replica(replicas, tmp_path):
    ups = await replicas(2)
    dead = f"http://127.0.0.1:{free_port()}"
    path = tmp_path / "config.toml"
    path.write_text(_pool_config([dead] + [u.url for u in ups]))  # the first one down: the others still serve
    code, out, err = await run_cli("check", "--config", str(path))
    assert code == 1, out + err
    assert "vllm pool of 3 replicas" in out and "2 of 3 replicas up" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] == ["replica"]]
    assert [(r[1], r[2]) for r in rows] == [(dead, "unreachable"), (ups[0].url, "ok"), (ups[1].url, "ok")], out


@pytest.mark.parametrize("urls, message", [
    ([], "needs 'base_url'"),
    (["http://a:1", "http://a:1/v1"], "lists 'http://a:1/v1' twice"),
    (["http://a:1", 5], "entries must be strings"),
    (["http://a:1", "ftp://b"], "must be an http:// or https:// URL"),
])
def test_bad_pools_are_config_errors(urls, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_config(_pool_config(urls))


def test_credentials_of_every_replica_are_secrets():
    cfg = parse_config(_pool_config(["http://u:pw-one@a:1", "http://v:pw-two@b:2"]))
    pool = cfg.backends["pool"]
    assert pool.base_urls == ["http://a:1", "http://b:2"]
    assert {"pw-one", "pw-two"} <= set(cfg.secrets())


def test_answers_name_the_replica():
    # The replicas' script is what _who reads: a test that could not tell replicas apart proves nothing.
    assert _who("".join(d["content"] for d in TEXT("replica-2 says hello", 8).deltas)) == "replica-2"


async def _home(gw, ups, sid: str) -> int:
    """Index of the replica a session goes to (found by asking once)."""
    before = [len(u.received) for u in ups]
    status, data = await gw.messages(BODY, **{"X-Claude-Code-Session-Id": sid})
    assert status == 200, data
    (index,) = [i for i, u in enumerate(ups) if len(u.received) > before[i]]
    return index


async def test_failure_before_content_is_retried_on_the_next_replica(start_upstream, start_gateway, tmp_path):
    ups = [await start_upstream("vllm") for _ in range(3)]
    for i, up in enumerate(ups):
        up.default = TEXT(f"replica-{i} says hello")
    log = tmp_path / "requests.jsonl"
    gw = await start_gateway(_pool_config([u.url for u in ups], log_path=str(log)))
    home = await _home(gw, ups, "sticky")
    ups[home].push(FAIL(500, "CUDA out of memory"))
    frames = await gw.stream(BODY, **{"X-Claude-Code-Session-Id": "sticky"})
    names = [n for n, _ in frames]
    assert names.count("message_start") == 1 and "error" not in names and names[-1] == "message_stop"
    text = "".join(d["delta"].get("text", "") for n, d in frames if n == "content_block_delta")
    survivor = int(_who(text).split("-")[1])
    assert survivor != home
    state = gw.gateway.backends["pool"].replicas()[home]
    assert state["ok"] is False and "CUDA out of memory" in state["last_error"]
    # Ejected: the session stays on the survivor (no more attempts at the failed one) until a probe answers.
    before = len(ups[home].received)
    assert await _home(gw, ups, "sticky") == survivor
    assert len(ups[home].received) == before
    assert await wait_for(lambda: gw.gateway.backends["pool"].replicas()[home]["ok"], 5)
    assert await _home(gw, ups, "sticky") == home, "re-admitted, the session comes home"
    await asyncio.sleep(0.3)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["replica"] for line in lines] == [ups[i].url for i in (home, survivor, survivor, home)]


async def test_a_stream_that_dies_before_content_is_retried(start_upstream, start_gateway):
    ups = [await start_upstream("vllm") for _ in range(2)]
    for i, up in enumerate(ups):
        up.default = TEXT(f"replica-{i} says hello")
    gw = await start_gateway(_pool_config([u.url for u in ups]))
    home = await _home(gw, ups, "s")
    ups[home].push(Script(deltas=[], die_mid=True))  # headers and the role chunk, then the connection drops
    frames = await gw.stream(BODY, **{"X-Claude-Code-Session-Id": "s"})
    text = "".join(d["delta"].get("text", "") for n, d in frames if n == "content_block_delta")
    assert text == f"replica-{1 - home} says hello"
    assert [n for n, _ in frames].count("message_start") == 1


async def test_no_retry_once_content_reached_the_client(start_upstream, start_gateway):
    ups = [await start_upstream("vllm") for _ in range(2)]
    gw = await start_gateway(_pool_config([u.url for u in ups]))
    home = await _home(gw, ups, "s")
    other = len(ups[1 - home].received)
    ups[home].push(FAIL_MID(500))
    frames = await gw.stream(BODY, **{"X-Claude-Code-Session-Id": "s"})
    names = [n for n, _ in frames]
    assert names[-1] == "error" and "content_block_delta" in names
    assert len(ups[1 - home].received) == other, "a request whose content had gone out was sent again"


async def test_overloaded_replica_is_skipped_without_ejection(start_upstream, start_gateway):
    ups = [await start_upstream("vllm") for _ in range(2)]
    gw = await start_gateway(_pool_config([u.url for u in ups]))
    home = await _home(gw, ups, "s")
    ups[home].push(FAIL(429, "queue full", retry_after="2"))
    status, data = await gw.messages(BODY, **{"X-Claude-Code-Session-Id": "s"})
    assert status == 200, data
    assert gw.gateway.backends["pool"].replicas()[home]["ok"] is True
    assert await _home(gw, ups, "s") == home
    for up in ups:
        up.push(FAIL(529, "busy"))
    status, data = await gw.messages(BODY, **{"X-Claude-Code-Session-Id": "s"})
    assert status == 529 and "every replica of backend 'pool' is overloaded" in data["error"]["message"]


async def test_sequential_requests_without_session_go_round(start_upstream, start_gateway):
    ups = [await start_upstream("vllm") for _ in range(3)]
    gw = await start_gateway(_pool_config([u.url for u in ups]))
    for _ in range(6):
        assert (await gw.messages(BODY))[0] == 200
    assert [len(u.received) for u in ups] == [2, 2, 2]
