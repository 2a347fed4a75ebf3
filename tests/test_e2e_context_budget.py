"""A long Claude Code session on a small window: the real CLI (every pinned version) runs 40 tool
rounds, each reading ~3k tokens of command output, against a scripted upstream with a 32k window
that refuses anything larger. The context budget keeps every request inside the window; the user
sees no error, and the request log shows the edits."""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import gateway_config
from tests.test_context_budget import prefix_breaks
from tests.test_e2e_claude_code import _start_claude, _tool_text, claude_bin  # noqa: F401 (fixture)
from tests.upstream import TEXT, TOOL, Script

WINDOW = 32768
ROUNDS = 40
SESSION_TIMEOUT_S = 420


@dataclass
class LongLoop:
    """Plays a model that runs ROUNDS commands printing ~12k characters each, then answers."""

    main_calls: list[dict] = field(default_factory=list)

    def __call__(self, body: dict) -> Script:
        names = {t["function"]["name"] for t in body.get("tools") or []}
        if "Bash" not in names:  # title generation and other side requests
            return TEXT('{"title": "Long session"}' if body.get("response_format") else "ok")
        self.main_calls.append(body)
        results = [m for m in body["messages"] if m["role"] == "tool"]
        if len(results) < ROUNDS:
            n = len(results)
            return TOOL("Bash", {"command": f"seq {n * 10000} {n * 10000 + 2000}",
                                 "description": f"Print batch {n}"}, call_id=f"call_{n}")
        return TEXT(f"All {ROUNDS} rounds done.")


async def test_forty_rounds_on_a_32k_window(claude_bin, start_upstream, start_gateway, tmp_path):  # noqa: F811
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    up = await start_upstream("vllm", context=WINDOW)
    up.enforce_context = True
    loop = LongLoop()
    up.default = loop
    log = tmp_path / "requests.jsonl"
    gw = await start_gateway(gateway_config(
        {"up": {"type": "vllm", "base_url": up.url, "model": "test-model", "context_edits": ["clear_tool_results"],
                "keep_tool_results": 2, "model_mapping": {"claude-*": "test-model"}}},
        default="up", log_path=str(log)))

    proc = await _start_claude(claude_bin, "Print the forty batches, one command each.", work, home, gw.url)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), SESSION_TIMEOUT_S)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    text = out.decode("utf-8", "replace").strip()
    result = json.loads(text.splitlines()[-1])
    assert proc.returncode == 0, (result, err.decode(errors="replace")[-2000:])
    assert result.get("is_error") is False and result["result"].strip() == f"All {ROUNDS} rounds done.", result

    assert len(loop.main_calls) == ROUNDS + 1
    last = loop.main_calls[-1]
    results = [_tool_text(m) for m in last["messages"] if m["role"] == "tool"]
    assert len(results) == ROUNDS
    assert str((ROUNDS - 1) * 10000 + 2000) in results[-1]  # the latest result reached the model whole
    assert max(up.prompt_sizes) <= WINDOW
    lines = [json.loads(x) for x in Path(log).read_text().splitlines()]
    api = [ln for ln in lines if ln["path"].endswith("/messages")]
    assert all(ln["status"] == 200 and ln["error"] is None for ln in api), [ln["status"] for ln in api]
    edited = [ln for ln in api if ln.get("context_edits")]
    kinds = {e["edit"] for ln in edited for e in ln["context_edits"]}
    assert "clear_tool_results" in kinds, kinds
    assert len(edited) >= ROUNDS // 2
    # Results are cleared on a grid: the prompt prefix changes every second or third turn, not every turn.
    breaks = prefix_breaks(loop.main_calls)
    assert len(breaks) <= ROUNDS // 2 + 2, breaks
