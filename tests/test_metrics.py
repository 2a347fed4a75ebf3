"""GET /metrics (Prometheus text format) and GET /health, scraped from a real gateway."""
from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import loopback
from tests.conftest import gateway_config
from tests.support.sse import read_until_event
from tests.upstream import FAIL, TEXT, Script

MODEL = "claude-opus-4-8"


def _cfg(up) -> str:
    return gateway_config({"up": {"type": up.flavor, "base_url": up.url, "model": "test-model",
                                  "model_mapping": {MODEL: "test-model", "claude-*": "test-model"}}})


def _msg(**kw) -> dict:
    return {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "hello there"}], **kw}


async def scrape(gw, **headers) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from /metrics, requested without any credentials."""
    resp = await gw.session.get(gw.url + "/metrics", headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(await resp.text()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _get(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_what_happened(start_upstream, start_gateway):
    up = await start_upstream()
    gw = await start_gateway(_cfg(up))
    other = await start_gateway(_cfg(up))  # a second gateway in the process keeps its own numbers
    cached = Script(deltas=[{"content": "cached answer"}],
                    usage={"prompt_tokens": 100, "completion_tokens": 3, "total_tokens": 103,
                           "prompt_tokens_details": {"cached_tokens": 60}})
    up.push(TEXT("one"), TEXT("two two"), cached, FAIL(500, "down"))
    usages = []
    for _ in range(3):
        status, body = await gw.messages(_msg())
        assert status == 200
        usages.append(body["usage"])
    assert (await gw.messages(_msg()))[0] == 500
    frames = await gw.stream(_msg())
    usages.append(next(d for n, d in frames if n == "message_delta")["usage"])  # final totals of the stream
    assert (await gw.post("/v1/messages/count_tokens", {"model": MODEL, "messages": _msg()["messages"]})).status == 200
    assert (await gw.get("/v1/not-a-route")).status == 404

    m = await scrape(gw)
    req = "gateway_requests_total"
    assert _get(m, req, route="/v1/messages", status="200", backend="up", model=MODEL) == 4
    assert _get(m, req, route="/v1/messages", status="500", backend="up", model=MODEL) == 1
    assert _get(m, req, route="/v1/messages/count_tokens", status="200", backend="up", model=MODEL) == 1
    assert _get(m, req, route="unknown", status="404", backend="", model="") == 1
    assert _get(m, "gateway_unknown_routes_total", method="GET") == 1
    assert _get(m, "gateway_upstream_errors_total", backend="up", type="api_error") == 1
    assert _get(m, "gateway_tokens_total", direction="output", backend="up", model=MODEL) == sum(
        u["output_tokens"] for u in usages)
    assert _get(m, "gateway_tokens_total", direction="input", backend="up", model=MODEL) == sum(
        u["input_tokens"] for u in usages)
    assert _get(m, "gateway_cache_hits_total", backend="up") == 1
    assert _get(m, "gateway_cache_read_tokens_total", backend="up") == 60
    # Only the stream times a first token: the JSON answers came whole from the server (stream=false).
    assert _get(m, "gateway_time_to_first_token_seconds_count", backend="up", model=MODEL) == 1
    assert _get(m, "gateway_request_duration_seconds_count", route="/v1/messages", backend="up") == 5
    assert _get(m, "gateway_streams_in_flight", backend="up") == 0
    assert _get(await scrape(other), req, route="/v1/messages", status="200", backend="up", model=MODEL) == 0


async def test_in_flight_stream_gauge(start_upstream, start_gateway):
    up = await start_upstream()
    gw = await start_gateway(_cfg(up))
    hold = asyncio.Event()
    up.push(Script(deltas=[{"content": "slow "}] * 4, hold=hold))
    resp = await gw.post("/v1/messages", {**_msg(), "stream": True})
    assert resp.status == 200
    # A relayed text delta: the gateway is mid-stream, and stays there until the upstream is released.
    await read_until_event(resp.content, "content_block_delta")
    during = await scrape(gw)
    hold.set()
    rest = await resp.text()
    assert "event: message_stop" in rest
    after = await scrape(gw)
    assert _get(during, "gateway_streams_in_flight", backend="up") == 1
    assert _get(during, "gateway_requests_in_flight", backend="up") == 1
    assert _get(after, "gateway_streams_in_flight", backend="up") == 0
    assert _get(after, "gateway_requests_in_flight", backend="up") == 0


async def test_metrics_from_this_host_need_no_token_but_v1_still_does(start_upstream, start_gateway):
    up = await start_upstream()
    gw = await start_gateway(_cfg(up))  # auth_token is set
    await scrape(gw)  # no credentials, from 127.0.0.1: allowed
    await scrape(gw, authorization="Bearer wrong")
    resp = await gw.session.get(gw.url + "/v1/models")
    assert resp.status == 401


def test_only_loopback_peers_skip_the_token():
    assert loopback("127.0.0.1") and loopback("::1") and loopback("::ffff:127.0.0.1")
    assert not loopback("10.0.0.5") and not loopback("192.168.1.2") and not loopback("::ffff:10.0.0.5")
    assert not loopback(None) and not loopback("not-an-ip")


async def test_health_reports_backends_models_context_and_cache(start_upstream, start_gateway):
    up = await start_upstream("vllm", context=16384)
    gw = await start_gateway(_cfg(up))
    up.push(Script(deltas=[{"content": "hi"}], usage={"prompt_tokens": 50, "completion_tokens": 1, "total_tokens": 51,
                                                      "prompt_tokens_details": {"cached_tokens": 20}}))
    assert (await gw.messages(_msg()))[0] == 200
    resp = await gw.session.get(gw.url + "/health")
    assert resp.status == 200
    health = await resp.json()
    assert health["status"] == "ok"
    b = health["backends"]["up"]
    assert b["ok"] is True and b["type"] == "vllm" and "test-model" in b["models"]
    assert b["context_window"] == 16384
    assert b["cache"] == {"requests": 1, "hits": 1, "read_tokens": 20, "hit_ratio": 0.4}


async def test_health_says_degraded_when_a_backend_is_down(start_upstream, start_gateway):
    up = await start_upstream()
    gw = await start_gateway(_cfg(up))
    await up.stop()
    health = await (await gw.session.get(gw.url + "/health")).json()
    assert health["status"] == "degraded" and health["backends"]["up"]["ok"] is False


async def test_openai_clients_tokens_and_cache_hits_are_counted(start_upstream, start_gateway):
    """/v1/chat/completions answers from the same backends: their tokens and cache reads reach the
    token counters and /health's cache figures like those of /v1/messages."""
    up = await start_upstream()
    gw = await start_gateway(_cfg(up))
    usage = {"prompt_tokens": 100, "completion_tokens": 3, "total_tokens": 103,
             "prompt_tokens_details": {"cached_tokens": 60}}
    up.push(Script(deltas=[{"content": "cached answer"}], usage=usage),
            Script(deltas=[{"content": "cached answer"}], usage=usage))
    chat = {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "hello there"}]}
    resp = await gw.post("/v1/chat/completions", chat)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["usage"]["prompt_tokens_details"]["cached_tokens"] == 60
    resp = await gw.post("/v1/chat/completions", {**chat, "stream": True})
    assert resp.status == 200 and (await resp.text()).endswith("data: [DONE]\n\n")
    m = await scrape(gw)
    assert _get(m, "gateway_requests_total", route="/v1/chat/completions", status="200", backend="up",
                model=MODEL) == 2
    assert _get(m, "gateway_tokens_total", direction="output", backend="up", model=MODEL) == 6
    assert _get(m, "gateway_tokens_total", direction="input", backend="up", model=MODEL) == 80
    assert _get(m, "gateway_cache_hits_total", backend="up") == 2
    assert _get(m, "gateway_cache_read_tokens_total", backend="up") == 120
    health = await (await gw.session.get(gw.url + "/health")).json()
    assert health["backends"]["up"]["cache"] == {"requests": 2, "hits": 2, "read_tokens": 120, "hit_ratio": 0.6}
