"""log_replay reads answers: replay and diff compare them, show --brief prints them, tables a person reads."""
from __future__ import annotations

import asyncio
import json
import os

from tests.conftest import TOKEN, gateway_config
from tests.support.net import free_port
from tests.logtools import json_lines, read_records, run_cli, run_cli_tty, wait_records
from tests.test_log_replay import OPUS, _answer, _answer_b, _backends, _msg, make_log
from tests.upstream import TOOL, Script


async def _gateway_b(start_upstream, start_gateway, answer, log_path: str = ""):
    a = await start_upstream(models=["model-a"])
    b = await start_upstream(models=["model-b"])
    a.default = b.default = answer
    return await start_gateway(gateway_config(_backends(a, b), default="a", log_path=log_path)), a


async def test_replay_compares_answers_and_prints_a_diff(start_upstream, start_gateway, tmp_path):
    log = tmp_path / "requests.jsonl"
    _, ids = await make_log(start_upstream, start_gateway, log)
    other, _ = await _gateway_b(start_upstream, start_gateway, _answer_b)
    env = {**os.environ, "ANTHROPIC_API_KEY": TOKEN}
    code, out, err = await run_cli("--file", str(log), "--path", "/v1/messages", "replay", "--to", other.url,
                                   "--json", env=env)
    results = {r["request_id"]: r for r in json_lines(out)}
    text = results[ids["text"]]["answer"]
    assert text["changed"] and 0 < text["text_similarity"] < 0.6
    assert "-A says hello, here is a fine answer" in text["diff"] and "+B answers in words" in text["diff"]
    tool = results[ids["tool"]]["answer"]  # streamed: the answer is rebuilt from the events
    assert tool["tool_calls"] == "changed_tools"
    assert '-[tool_use get_weather] {"location":"Paris"}' in tool["diff"]
    assert "answers changed 4" in err
    # On a terminal: the numbers on one line, the diff indented under it.
    code, out = await run_cli_tty("--file", str(log), "--path", "/v1/messages", "--status", "200",
                                  "replay", "--to", other.url, "--token", TOKEN)
    assert code == 1  # regressions
    lines = out.splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith(ids["text"]))
    assert "similar" in lines[i]
    assert lines[i + 1:i + 3] == ["    -A says hello, here is a fine answer", "    +B answers in words"]


async def test_same_answers_pass_and_changed_tool_arguments_regress(start_upstream, start_gateway, tmp_path):
    log = tmp_path / "requests.jsonl"
    _, ids = await make_log(start_upstream, start_gateway, log)
    same, _ = await _gateway_b(start_upstream, start_gateway, _answer)
    env = {**os.environ, "ANTHROPIC_API_KEY": TOKEN}
    code, out, err = await run_cli("--file", str(log), "--status", "200", "--path", "/v1/messages", "replay",
                                   "--to", same.url, "--json", "--min-similarity", "0.9", env=env)
    assert code == 0, out + err
    assert all(r["answer"]["changed"] is False for r in json_lines(out))

    def other_city(body: dict):
        if "weather" in json.dumps(body["messages"]):
            return TOOL("get_weather", {"location": "Lyon"}, lead="Checking.")
        return _answer(body)

    moved, _ = await _gateway_b(start_upstream, start_gateway, other_city)
    code, out, _ = await run_cli("--file", str(log), "--status", "200", "replay", "--to", moved.url, "--json",
                                 "--min-similarity", "0.9", env=env)
    results = {r["request_id"]: r for r in json_lines(out)}
    assert code == 1
    assert results[ids["tool"]]["regressions"] == ["tool_arguments_changed"]
    assert '+[tool_use get_weather] {"location":"Lyon"}' in results[ids["tool"]]["answer"]["diff"]
    assert results[ids["text"]]["regressions"] == []


async def test_diff_two_logs_request_by_request(start_upstream, start_gateway, tmp_path):
    log_a, log_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _, ids_a = await make_log(start_upstream, start_gateway, log_a)
    gw_b, _ = await _gateway_b(start_upstream, start_gateway, _answer_b, str(log_b))
    # The same prompts in another order, under another model name, plus one A never saw.
    recs_a = [r for r in read_records(log_a) if r["event"] == "request"]
    for rec in reversed(recs_a):
        body = rec["body"] if not isinstance(rec["body"], dict) or "model" not in rec["body"] \
            else {**rec["body"], "model": "other-model"}
        resp = await gw_b.post(rec["path"], body)
        await resp.read()
    resp = await gw_b.post("/v1/messages", _msg("a brand new prompt"))
    await resp.read()
    await wait_records(log_b, len(recs_a) + 1)
    code, out, err = await run_cli("diff", str(log_a), str(log_b), "--json")
    assert code == 1, err  # B lost the tool call, cut the essay, failed the poem
    results = json_lines(out)
    paired = {r["request_id"]: r for r in results if r["new"] is not None}
    assert set(paired) == {r["request_id"] for r in recs_a}
    text = paired[ids_a["text"]]
    assert text["model"] == f"{OPUS}→other-model" and text["other_request_id"].startswith("req_")
    assert "+B answers in words" in text["answer"]["diff"]
    assert paired[ids_a["tool"]]["regressions"] == ["tools_lost"]
    assert paired[ids_a["haiku"]]["regressions"] == ["truncated"]
    assert [r["skipped"] for r in results if r["new"] is None] == ["only in LOG_B"]
    assert "1 only in" in err and "compared 7" in err
    code, out = await run_cli_tty("diff", str(log_a), str(log_b))
    assert f"{ids_a['text']}↔req_" in out and "    +B answers in words" in out


async def test_replay_stops_at_a_connection_failure(start_upstream, start_gateway, tmp_path):
    log = tmp_path / "requests.jsonl"
    await make_log(start_upstream, start_gateway, log)
    code, out, err = await run_cli("--file", str(log), "replay", "--to", f"http://127.0.0.1:{free_port()}",
                                   "--json", "--concurrency", "3")
    assert code == 2 and len(json_lines(out)) == 1
    assert "cannot reach" in err and "--to" in err and "Traceback" not in err


async def test_replay_to_the_gateway_writing_the_log_replays_each_record_once(start_upstream, start_gateway,
                                                                             tmp_path):
    log = tmp_path / "requests.jsonl"
    gw, _ = await make_log(start_upstream, start_gateway, log)
    before = len(read_records(log))
    env = {**os.environ, "ANTHROPIC_API_KEY": TOKEN}
    code, out, err = await run_cli("--file", str(log), "replay", "--to", gw.url, "--json", env=env)
    assert code == 0, err
    replayed = json_lines(out)
    assert len(replayed) == 7, err  # the 7 requests, not the records the replay itself adds
    recs = await wait_records(log, before + 7)
    await asyncio.sleep(0.3)
    assert len(read_records(log)) == before + 7 == len(recs)


async def test_show_brief_and_id_prefixes(start_upstream, start_gateway, tmp_path):
    log = tmp_path / "requests.jsonl"
    _, ids = await make_log(start_upstream, start_gateway, log)
    tool_id = ids["tool"]
    code, out, err = await run_cli("--file", str(log), "show", tool_id[:10], "--brief")
    assert code == 0, err
    assert out.startswith(tool_id)
    assert "what is the weather" in out  # the last user message
    assert '[tool_use get_weather] {"location":"Paris"}' in out and "Checking." in out  # the answer
    assert "claude-opus-4-8 → a (model-a)" in out and "ttft" in out and "messages 1" in out
    code, out, _ = await run_cli("--file", str(log), "show", tool_id[4:12])  # without "req_"
    assert code == 0 and json.loads(out)["request_id"] == tool_id
    code, out, err = await run_cli("--file", str(log), "show", "req_")
    assert code == 1 and "ambiguous" in err and ids["text"] in err
    code, out, _ = await run_cli("--file", str(log), "show", ids["fail"], "--brief")
    assert "error: api_error: backend 'a' answered 500: upstream A is down" in out


async def test_list_tables_fit_the_terminal_and_show_error_messages(start_upstream, start_gateway, tmp_path):
    log = tmp_path / "requests.jsonl"
    _, ids = await make_log(start_upstream, start_gateway, log)
    for columns, shown in ((100, 12), (160, 28)):
        code, out = await run_cli_tty("--file", str(log), "list", columns=columns)
        assert code == 0
        assert max(len(line) for line in out.splitlines()) <= columns, out
        # A narrow terminal shows id prefixes, which `show` accepts.
        assert all(rid[:shown] in out for rid in ids.values()), out
    code, out, _ = await run_cli("--file", str(log), "show", ids["fail"][:12])
    assert code == 0 and json.loads(out)["request_id"] == ids["fail"]
    code, out = await run_cli_tty("--file", str(log), "list", columns=250)
    assert "api_error: backend 'a' answered 500: upstream A is down" in out
    assert "invalid_request_error: max_tokens: field required" in out


async def test_curl_for_a_stream_prints_events_as_they_come(start_upstream, start_gateway, tmp_path):
    log = tmp_path / "requests.jsonl"
    gw, ids = await make_log(start_upstream, start_gateway, log)
    code, cmd, _ = await run_cli("--file", str(log), "curl", ids["text"], "--url", gw.url)
    assert code == 0 and " -N " not in cmd
    code, cmd, _ = await run_cli("--file", str(log), "curl", ids["tool"], "--url", gw.url)
    assert code == 0 and cmd.startswith("curl -N ")
    proc = await asyncio.create_subprocess_exec("bash", "-c", cmd, stdout=asyncio.subprocess.PIPE,
                                                env={**os.environ, "ANTHROPIC_API_KEY": TOKEN})
    out, _ = await proc.communicate()
    assert b"event: message_stop" in out and b"get_weather" in out


async def test_a_held_back_tool_call_is_no_regression_when_the_answer_repeats(start_upstream, start_gateway,
                                                                               tmp_path):
    """A length stop inside a tool call: the client gets no call (the log keeps it, marked
    incomplete). Replayed against a backend that answers the same, nothing was lost or changed."""
    def cut_call(_body: dict) -> Script:
        return Script(deltas=[{"content": "Checking."},
                              {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                               "function": {"name": "get_weather", "arguments": ""}}]},
                              {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Pa'}}]}],
                      finish_reason="length")
    log = tmp_path / "requests.jsonl"
    up = await start_upstream()
    up.default = cut_call
    gw = await start_gateway(gateway_config({"up": {"type": "openai", "base_url": up.url, "model": "m"}},
                                            default="up", log_path=str(log)))
    for stream in (False, True):
        resp = await gw.post("/v1/messages", _msg("what is the weather", stream=stream))
        assert resp.status == 200
        await resp.read()
    recs = await wait_records(log, 2)
    assert [r["response"][-1]["incomplete"] for r in recs] == [True, True]  # the log keeps what was cut
    other = await start_gateway(gateway_config({"up": {"type": "openai", "base_url": up.url, "model": "m"}},
                                               default="up"))
    code, out, err = await run_cli("--file", str(log), "replay", "--to", other.url, "--json", "--strict",
                                   env={**os.environ, "ANTHROPIC_API_KEY": TOKEN})
    results = json_lines(out)
    assert [r["regressions"] for r in results] == [[], []], out
    assert [r["answer"]["changed"] for r in results] == [False, False], out
    assert code == 0, out + err
