"""Prompt-cache reuse around a deferred-tool load: `uv run python bench/tool_load_cache.py [--quick]`.

A Claude-Code-2.1.328-shaped session (bench/claude_code_request.py with the rarely used tools marked
`defer_loading` and a ToolSearch tool) loads NotebookEdit with a `tool_reference`. For the turn
after the load, the prompt is rendered with the demo model's chat template (tools at the top, as
Qwen-style templates put them) and compared token by token with the turn before it: the common
prefix is what a prefix cache can reuse. Rows: where the loaded tool enters the prompt.

- baseline: the tool inserted at its place in the client's list (what resending all tools does);
- remote backends (llama.cpp, vLLM): appended to the tool list;
- embedded MLX: written where the reference is, the tool list unchanged.

Without --quick the embedded-MLX row is also measured over HTTP (cache_read_input_tokens of the
turn after the load, through a gateway with the generated bench model).
"""
from __future__ import annotations

import argparse
import asyncio
import copy
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.claude_code_request import build_request

EAGER = {"Agent", "Bash", "Edit", "Glob", "Grep", "Read", "Skill", "Write", "ToolSearch"}
TOOL_SEARCH = {"name": "ToolSearch", "description": "Fetches full schema definitions for deferred tools.",
               "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}


def session(turns: int, target_bytes: int) -> tuple[dict, dict]:
    """(turn before the load, turn after it)."""
    before = build_request(turns=turns, target_bytes=target_bytes)
    before["tools"].append(TOOL_SEARCH)
    for tool in before["tools"]:
        if tool["name"] not in EAGER:
            tool["defer_loading"] = True
    after = copy.deepcopy(before)
    after["messages"] += [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_search", "name": "ToolSearch",
                                           "input": {"query": "select:NotebookEdit"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_search",
                                      "content": [{"type": "tool_reference", "tool_name": "NotebookEdit"}]},
                                     {"type": "text", "text": "Tool loaded."}]}]
    return before, after


def reuse(model_dir: Path, before: dict, after: dict) -> dict:
    """Prompt tokens and reusable prefix of the turn after the load, per strategy."""
    from mlx_lm.utils import load_tokenizer

    from backends.mlx.cache import common_prefix
    from backends.mlx.prompt import PromptRenderer
    from backends.translate import (
        Dialect,
        template_kwargs,
        to_openai_messages,
        to_openai_tools,
    )
    from gateway.protocol.anthropic import parse_messages_request
    from gateway.normalize import normalize
    from gateway.tool_search import apply_tool_search

    renderer = PromptRenderer(load_tokenizer(model_dir), str(model_dir))

    def req(body: dict):
        return apply_tool_search(normalize(parse_messages_request(body)))

    def mlx(body: dict) -> np.ndarray:
        return np.asarray(renderer.render(req(body)).tokens, dtype=np.int32)

    def remote(body: dict) -> np.ndarray:  # what a server rendering the template itself receives
        r = req(body)
        msgs = to_openai_messages(r, Dialect(), "m")
        for m in msgs:
            for call in m.get("tool_calls") or ():
                call["function"]["arguments"] = json.loads(call["function"]["arguments"])
        text = renderer._apply(msgs, to_openai_tools(r), template_kwargs(r), True)
        return np.asarray(renderer.encode(text), dtype=np.int32)

    in_place = copy.deepcopy(after)
    for tool in in_place["tools"]:
        if tool["name"] == "NotebookEdit":
            tool.pop("defer_loading")
    out = {}
    for name, render, body in (("baseline: inserted in place", remote, in_place),
                               ("remote backends: appended", remote, after),
                               ("embedded MLX: at the reference", mlx, after)):
        first, second = render(before), render(body)
        out[name] = {"prompt_before": len(first), "prompt_after": len(second),
                     "reusable": int(common_prefix(first, second))}
    return out


async def measured_cache_read(model_dir: Path, before: dict, after: dict) -> dict:
    """cache_read_input_tokens of the turn after the load, through a gateway with the embedded model."""
    import aiohttp
    from aiohttp import web

    from gateway.config import parse_config
    from gateway.server import create_app
    from gateway.app_state import Gateway

    toml = (f'[log]\nrequests = ""\n[routing]\ndefault = "m"\n[backends.m]\ntype = "mlx"\n'
            f'model = "{model_dir}"\n')
    gw = Gateway(parse_config(toml))
    runner = web.AppRunner(create_app(gw))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1/messages"
    headers = {"anthropic-version": "2023-06-01", "X-Claude-Code-Session-Id": "bench-tool-load"}
    usage = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600)) as s:
            for body in (before, after):
                body = dict(body, stream=False, max_tokens=1, temperature=0)
                async with s.post(url, json=body, headers=headers) as resp:
                    data = await resp.json()
                    assert resp.status == 200, data
                    usage.append(data["usage"])
    finally:
        await runner.cleanup()
    u = usage[1]
    return {"prompt_after": u["input_tokens"] + u["cache_read_input_tokens"], "cache_read": u["cache_read_input_tokens"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a shorter session, render comparison only")
    args = parser.parse_args()
    from demo_model.generate import BENCH, ensure_demo_model

    model_dir = ensure_demo_model(BENCH)
    before, after = session(*((3, 0) if args.quick else (12, 40_000)))
    rows = reuse(model_dir, before, after)
    base = rows["baseline: inserted in place"]["reusable"]
    print(f"{'where the loaded tool goes':34} {'prompt before':>13} {'after':>7} {'reusable':>9} {'vs baseline':>11}")
    for name, r in rows.items():
        print(f"{name:34} {r['prompt_before']:>13} {r['prompt_after']:>7} {r['reusable']:>9} "
              f"{r['reusable'] / max(1, base):>10.2f}x")
    if not args.quick:
        m = asyncio.run(measured_cache_read(model_dir, before, after))
        print(f"embedded MLX over HTTP: cache_read {m['cache_read']} of {m['prompt_after']} prompt tokens")


if __name__ == "__main__":
    main()
