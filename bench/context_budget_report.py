"""Tokens each context-budget edit saves on a Claude Code prompt: `uv run python bench/context_budget_report.py
[--log requests.jsonl] [--quick]`.

Without --log the prompt is bench/claude_code_request.py's Claude-Code-shaped request; with --log,
the largest /v1/messages body of a request log written with `log.bodies = true` (a real session).
Each edit runs at full strength on top of the ones before it, in the budget's order (deferred tools
first, as the gateway leaves them out before any budget). Figures are the gateway's token estimate
(gateway.protocol.tokens), the figure the budget reasons with before it asks a tokenizer.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.claude_code_request import build_request
from gateway.protocol.anthropic import parse_messages_request
from gateway.context_budget import _clear_results, _drop_thinking, _shorten_descriptions
from gateway.normalize import normalize
from gateway.protocol.tokens import estimate_tokens
from gateway.tool_search import apply_tool_search


def largest_body(log: Path) -> dict:
    """The biggest /v1/messages request body in a request log."""
    best: dict | None = None
    for line in log.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        body = rec.get("body")
        usable = rec.get("path") == "/v1/messages" and isinstance(body, dict) and body.get("messages")
        if usable and (best is None or len(json.dumps(body)) > len(json.dumps(best))):
            best = body
    if best is None:
        raise SystemExit(f"{log}: no /v1/messages body (was it written with log.bodies = true?)")
    return best


def report(body: dict, keep: int) -> list[tuple[str, int, int]]:
    """(edit, tokens before, tokens saved) in the budget's order."""
    req = normalize(parse_messages_request(body))
    rows = []
    before = estimate_tokens(req)
    deferred = apply_tool_search(req)
    rows.append(("defer_loading tools not sent", before, before - estimate_tokens(deferred)))
    req = deferred
    steps = [("shorten_tool_descriptions", _shorten_descriptions), ("drop_thinking", _drop_thinking),
             (f"clear_tool_results (keep {keep})", lambda r: _clear_results(r, keep, lambda _: False))]
    for name, step in steps:
        tokens = estimate_tokens(req)
        candidates = step(req)
        edited = candidates[-1][0] if candidates else req
        rows.append((name, tokens, tokens - estimate_tokens(edited)))
        req = edited
    rows.append(("left", estimate_tokens(req), 0))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log", type=Path, help="a request log with bodies (a recorded session)")
    ap.add_argument("--keep", type=int, default=3, help="keep_tool_results")
    ap.add_argument("--quick", action="store_true", help="accepted for the bench runner; this bench is quick")
    args = ap.parse_args()
    body = largest_body(args.log) if args.log else build_request()
    source = str(args.log) if args.log else "bench/claude_code_request.py"
    print(f"prompt: {source} ({len(body.get('tools') or [])} tools, {len(body['messages'])} messages)")
    for name, before, saved in report(body, args.keep):
        share = f"{100 * saved / before:5.1f}%" if before else "     "
        print(f"  {name:34} {before:7d} tokens  saved {saved:7d}  {share}")


if __name__ == "__main__":
    main()
