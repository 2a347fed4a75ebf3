"""tools/log_replay.py, run as a subprocess on the log a real gateway wrote."""
from __future__ import annotations

import asyncio
import gzip
import json
import os
import sys

from tests.conftest import TOKEN, gateway_config
from tests.logtools import (
    json_lines,
    log_has,
    read_records,
    run_cli,
    run_cli_tty,
    wait_records,
    wait_until,
)
from tests.upstream import FAIL, LEN, TEXT, TOOL

OPUS, HAIKU = "claude-opus-4-8", "claude-haiku-4-5"


def _answer(body: dict):
    """Upstream A: what each prompt gets (keyed on the prompt, so replays meet the same script)."""
    prompt = json.dumps(body["messages"][-1]["content"])
    if "weather" in prompt:
        return TOOL("get_weather", {"location": "Paris"}, lead="Checking.")
    if "fail" in prompt:
        return FAIL(500, "upstream A is down")
    return TEXT("A says hello, here is a fine answer")


def _answer_b(body: dict):
    """Upstream B, the "new model": no tool calls, cuts the essay short, fails where A succeeded."""
    prompt = json.dumps(body["messages"][-1]["content"])
    if "essay" in prompt:
        return LEN("B stops early")
    if "poem" in prompt and "again" in prompt:
        return FAIL(500, "upstream B is down")
    return TEXT("B answers in words")


def _backends(a, b) -> dict:
    return {"a": {"type": "openai", "base_url": a.url, "model": "model-a",
                  "model_mapping": {"claude-opus-*": "model-a", "other-model": "model-a"}},
            "b": {"type": "openai", "base_url": b.url, "model": "model-b",
                  "model_mapping": {"claude-haiku-*": "model-b"}}}


def _msg(text: str, model: str = OPUS, **kw) -> dict:
    return {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": text}], **kw}


async def make_log(start_upstream, start_gateway, path, **gw_kw):
    """A gateway in front of upstreams a and b, and a log of varied traffic; returns (gateway, ids by name)."""
    up_a = await start_upstream(models=["model-a"])
    up_b = await start_upstream(models=["model-b"])
    up_a.default = _answer
    up_b.default = _answer
    gw = await start_gateway(gateway_config(_backends(up_a, up_b), log_path=str(path), default="a", **gw_kw))
    calls = [
        ("text", "/v1/messages", _msg("write a poem"), {"X-Claude-Code-Session-Id": "s1"}),
        ("tool", "/v1/messages", _msg("what is the weather", stream=True), {"X-Claude-Code-Session-Id": "s1"}),
        ("haiku", "/v1/messages", _msg("write an essay", HAIKU), {"X-Claude-Code-Session-Id": "s2"}),
        ("fail", "/v1/messages", _msg("please fail"), {}),
        ("invalid", "/v1/messages", {"model": OPUS, "messages": []}, {}),
        ("count", "/v1/messages/count_tokens", {"model": OPUS, "messages": _msg("count me")["messages"]}, {}),
        ("stream", "/v1/messages", _msg("write a poem again", stream=True), {}),
    ]
    ids = {}
    for name, path_, body, headers in calls:
        resp = await gw.post(path_, body, **headers)
        await resp.read()
        ids[name] = resp.headers["request-id"]
        await asyncio.sleep(0.005)  # distinct millisecond timestamps for the --since/--until checks
    resp = await gw.session.get(gw.url + "/v1/probe?x=1")
    ids["unknown"] = resp.headers["request-id"]
    await wait_records(path, len(ids))
    return gw, ids


async def test_summary_counts_what_the_file_holds(start_upstream, start_gateway, tmp_path):
    log = tmp_path / "requests.jsonl"
    await make_log(start_upstream, start_gateway, log)
    recs = read_records(log)
    code, out, err = await run_cli("--file", str(log), "summary", "--json")
    assert code == 0, err
    [s] = json_lines(out)
    assert s["records"] == len(recs) == 8 and s["requests"] == 7 and s["unknown_routes"] == 1
    assert s["status"] == {"200": 5, "400": 1, "404": 1, "500": 1}
    assert s["backends"] == {"a": 5, "b": 1, "-": 1}
    assert s["models"][OPUS]["count"] == 5 and s["models"][HAIKU]["count"] == 1
    assert s["models"][OPUS]["errors"] == 1
    assert s["errors"] == {"api_error": 1, "invalid_request_error": 1, "not_found_error": 1}
    assert s["unknown"] == [{"method": "GET", "path": "/v1/probe", "count": 1, "last_ts": recs[-1]["ts"]}]
    latencies = sorted(r["duration_ms"] for r in recs if r["event"] == "request")
    assert s["latency_ms"]["p50"] == latencies[3] and s["latency_ms"]["p95"] == latencies[-1]
    assert s["ttft_ms"]["p50"] is not None
    assert s["tokens"]["output"] == sum(r["output_tokens"] or 0 for r in recs)
    assert (s["from"], s["to"]) == (recs[0]["ts"], recs[-1]["ts"])


async def test_every_filter(start_upstream, start_gateway, tmp_path):
    log = tmp_path / "requests.jsonl"
    _, ids = await make_log(start_upstream, start_gateway, log)
    recs = read_records(log)
    ts = {r["request_id"]: r["ts"] for r in recs}
    cases = {
        ("--errors-only",): {"fail", "invalid", "unknown"},
        ("--unknown-routes",): {"unknown"},
        ("--status", "500"): {"fail"},
        ("--status", "4xx"): {"invalid", "unknown"},
        ("--status", "400", "--status", "5xx"): {"invalid", "fail"},
        ("--model", "claude-haiku-*"): {"haiku"},
        ("--model", "model-b"): {"haiku"},  # the backend model matches too
        ("--model", "claude-*-4-8"): {"text", "tool", "fail", "count", "stream"},  # invalid: no model
        ("--backend", "b"): {"haiku"},
        ("--session", "s1"): {"text", "tool"},
        ("--session", "s1", "--session", "s2"): {"text", "tool", "haiku"},
        ("--path", "/v1/messages/count_tokens"): {"count"},
        ("--path", "/v1/messages"): {"text", "tool", "haiku", "fail", "invalid", "stream"},
        ("--path", "/v1/p*"): {"unknown"},
        ("--errors-only", "--backend", "a"): {"fail"},
        ("--since", ts[ids["haiku"]], "--until", ts[ids["count"]]): {"haiku", "fail", "invalid"},
        ("--since", "1h"): set(ids),
        ("--until", "2000-01-01"): set(),
        ("--since", "2999-01-01T00:00:00+02:00"): set(),
    }
    names = {v: k for k, v in ids.items()}

    async def check(args: tuple, expected: set) -> None:
        code, out, err = await run_cli("--file", str(log), *args)
        assert code == 0, (args, err)
        got = [names[r["request_id"]] for r in json_lines(out)]
        assert set(got) == expected, args
        assert got == [n for n in names.values() if n in expected], "file order"

    for args, expected in cases.items():
        await check(args, expected)
    # Filters written after the command work too.
    code, out, _ = await run_cli("--file", str(log), "list", "--backend", "b")
    assert code == 0
    assert [r["request_id"] for r in json_lines(out)] == [ids["haiku"]]


async def test_json_lines_are_whole_records_and_show_prints_one(start_upstream, start_gateway, tmp_path):
    log = tmp_path / "requests.jsonl"
    _, ids = await make_log(start_upstream, start_gateway, log)
    recs = {r["request_id"]: r for r in read_records(log)}
    code, out, _ = await run_cli("--file", str(log), "--json")
    assert code == 0 and {r["request_id"]: r for r in json_lines(out)} == recs
    code, out, _ = await run_cli("--file", str(log), "show", ids["tool"])
    assert code == 0 and json.loads(out) == recs[ids["tool"]]
    assert json.loads(out)["body"]["messages"][0]["content"] == "what is the weather"
    code, _, err = await run_cli("--file", str(log), "show", "req_doesnotexist")
    assert code == 1 and "req_doesnotexist" in err


async def test_terminal_gets_tables(start_upstream, start_gateway, tmp_path):
    log = tmp_path / "requests.jsonl"
    _, ids = await make_log(start_upstream, start_gateway, log)
    code, out = await run_cli_tty("--file", str(log))
    assert code == 0
    for heading in ("STATUS", "MODEL", "BACKEND", "ERROR TYPE", "UNKNOWN PATH", "REQUEST ID"):
        assert heading in out
    assert ids["tool"] in out and "get_weather" in out and "/v1/probe" in out
    assert not out.lstrip().startswith("{")
    code, out = await run_cli_tty("--file", str(log), "show", ids["text"])
    assert code == 0 and out.startswith("{\n  ")


async def test_rotated_gzipped_files_and_a_cut_last_line(start_upstream, start_gateway, tmp_path):
    log = tmp_path / "requests.jsonl"
    up = await start_upstream()
    toml = gateway_config({"up": {"type": "openai", "base_url": up.url, "model": "m"}}, default="up",
                          log_path=str(log)).replace("bodies = true", "bodies = true\nrotate_mb = 0.008\nkeep = 9")
    gw = await start_gateway(toml)
    ids = []
    for i in range(24):
        resp = await gw.post("/v1/messages", _msg(f"{i} " + "q" * 1200))
        await resp.read()
        ids.append(resp.headers["request-id"])
    await wait_until(lambda: log_has(log, ids[-1]))
    rotated = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".gz"))
    assert len(rotated) >= 3
    with gzip.open(tmp_path / rotated[0], "rb") as f:
        assert f.read().count(b"\n") >= 2
    # The gateway died while writing a line: the file ends in half a record.
    log.write_bytes(log.read_bytes() + b'{"ts":"2030-01-01T00:00:00.000+00:00","request_id":"req_cut","meth')
    code, out, err = await run_cli("--file", str(log), "--json")
    assert code == 0
    assert [r["request_id"] for r in json_lines(out)] == ids  # every rotation, oldest first
    assert "cut" in err and str(log) in err and "req_cut" not in out
    code, out, _ = await run_cli("--file", str(log), "--no-rotated", "--json")
    assert [r["request_id"] for r in json_lines(out)] == [r["request_id"] for r in read_records_whole(log)]
    code, out, _ = await run_cli("--file", str(tmp_path / rotated[0]), "summary", "--json")
    assert 2 <= json_lines(out)[0]["records"] < 24


def read_records_whole(path) -> list[dict]:
    """The records of a file whose last line may be cut."""
    return [json.loads(line) for line in path.read_bytes().split(b"\n")[:-1]]


async def test_default_file_comes_from_config_and_bad_input_is_one_line(start_upstream, start_gateway, tmp_path):
    log = tmp_path / "logs" / "requests.jsonl"
    await make_log(start_upstream, start_gateway, log)
    (tmp_path / "config.toml").write_text(f'[log]\nrequests = "{log}"\n')
    code, out, _ = await run_cli("summary", "--json", cwd=tmp_path)
    assert code == 0 and json_lines(out)[0]["records"] == 8
    code, _, err = await run_cli("--status", "abc", cwd=tmp_path)
    assert code == 2 and "--status" in err and "Traceback" not in err
    code, _, err = await run_cli("--file", str(tmp_path / "missing.jsonl"))
    assert code == 2 and "missing.jsonl" in err and "Traceback" not in err
    code, _, err = await run_cli("--since", "yesterday-ish", cwd=tmp_path)
    assert code == 2 and "yesterday-ish" in err


async def test_console_script_is_installed(start_upstream, start_gateway, tmp_path):
    log = tmp_path / "requests.jsonl"
    await make_log(start_upstream, start_gateway, log)
    script = os.path.join(os.path.dirname(sys.executable), "claude-gateway-replay")
    proc = await asyncio.create_subprocess_exec(script, "--file", str(log), "--unknown-routes", "--json",
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0 and [r["path"] for r in json_lines(out.decode())] == ["/v1/probe"]


async def test_curl_command_resends_the_request(start_upstream, start_gateway, tmp_path):
    log = tmp_path / "requests.jsonl"
    gw, ids = await make_log(start_upstream, start_gateway, log)
    code, cmd, err = await run_cli("--file", str(log), "curl", ids["text"], "--url", gw.url)
    assert code == 0, err
    assert TOKEN not in cmd  # the key comes from the environment when the command runs
    proc = await asyncio.create_subprocess_exec("bash", "-c", cmd, stdout=asyncio.subprocess.PIPE,
                                                env={**os.environ, "ANTHROPIC_API_KEY": TOKEN})
    out, _ = await proc.communicate()
    answer = json.loads(out)
    assert proc.returncode == 0 and answer["type"] == "message"
    assert answer["content"][0]["text"] == "A says hello, here is a fine answer"
    code, cmd, _ = await run_cli("--file", str(log), "curl", ids["unknown"], "--url", gw.url)
    assert code == 0 and "/v1/probe?x=1" in cmd and "-X GET" in cmd


async def test_replay_against_another_gateway_shows_the_differences(start_upstream, start_gateway, tmp_path):
    log = tmp_path / "requests.jsonl"
    _, ids = await make_log(start_upstream, start_gateway, log)
    new_a = await start_upstream(models=["model-a"])
    new_b = await start_upstream(models=["model-b"])
    new_a.default = _answer_b
    new_b.default = _answer_b
    other = await start_gateway(gateway_config(_backends(new_a, new_b), default="a"))
    env = {**os.environ, "ANTHROPIC_API_KEY": TOKEN}
    code, out, err = await run_cli("--file", str(log), "replay", "--to", other.url, "--concurrency", "3", "--json",
                                   env=env)
    assert code == 1, err  # regressions
    results = {r["request_id"]: r for r in json_lines(out)}
    assert list(results) == [ids[k] for k in ("text", "tool", "haiku", "fail", "invalid", "count", "stream")]
    tool = results[ids["tool"]]
    assert tool["recorded"]["tool_names"] == ["get_weather"] and tool["new"]["tool_names"] == []
    assert (tool["recorded"]["stop_reason"], tool["new"]["stop_reason"]) == ("tool_use", "end_turn")
    assert tool["regressions"] == ["tools_lost"] and tool["new"]["ttft_ms"] is not None
    assert results[ids["haiku"]]["regressions"] == ["truncated"]
    assert results[ids["haiku"]]["new"]["stop_reason"] == "max_tokens"
    assert results[ids["stream"]]["regressions"] == ["failed"]
    assert results[ids["stream"]]["new"]["status"] == 500 and results[ids["stream"]]["recorded"]["status"] == 200
    assert results[ids["fail"]]["regressions"] == []  # it failed before too: now it works
    assert results[ids["fail"]]["new"]["status"] == 200
    assert results[ids["text"]]["regressions"] == [] and results[ids["text"]]["new"]["output_tokens"] > 0
    assert results[ids["count"]]["new"]["input_tokens"] > 0
    assert results[ids["invalid"]]["new"]["status"] == 400
    assert "regressions 3" in err


async def test_replay_with_another_model_and_without_regressions(start_upstream, start_gateway, tmp_path):
    log = tmp_path / "requests.jsonl"
    _, ids = await make_log(start_upstream, start_gateway, log)
    same_a = await start_upstream(models=["model-a"])
    same_b = await start_upstream(models=["model-b"])
    same_a.default = _answer
    same_b.default = _answer
    other = await start_gateway(gateway_config(_backends(same_a, same_b), default="a"))
    env = {**os.environ, "ANTHROPIC_API_KEY": TOKEN}
    code, out, err = await run_cli("--file", str(log), "--status", "2xx", "--path", "/v1/messages",
                                   "replay", "--to", other.url, "--model", "other-model", env=env)
    assert code == 0, out + err
    lines = out.strip().splitlines()
    assert len(lines) == 4 and all("REGRESSION" not in line for line in lines)
    assert ids["tool"] in out and "tool_use" in out and "get_weather" in out
    # Every request went out under the new name, which gateway 2 maps to backend a.
    assert not same_b.received and {b["model"] for b in same_a.received} == {"model-a"}
    assert len(same_a.received) == 4
    # A wrong token: the first 401 stops the replay (the rest would fail alike) with a hint.
    received = len(same_a.received)
    code, out, err = await run_cli("--file", str(log), "--status", "2xx", "replay", "--to", other.url, "--json",
                                   "--token", "wrong", env=env)
    assert code == 2 and [r["new"]["status"] for r in json_lines(out)] == [401]
    assert "401" in err and "--token" in err and "$ANTHROPIC_AUTH_TOKEN" in err and "Traceback" not in err
    assert len(same_a.received) == received
