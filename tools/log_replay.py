"""log_replay: read the gateway's request log — summaries, filters, one record, a curl command,
and replay of recorded requests against another gateway (A/B a new model on your own traffic).

    python tools/log_replay.py [--file PATH ...] [filters] [--json]
        [summary | list | show ID [--brief] | curl ID | replay --to URL | diff LOG_A LOG_B]

Tables on a terminal; JSON lines when piped or with --json. Also installed as `claude-gateway-replay`.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
from collections import deque
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson

from gateway.terminal import escape_controls
from tools.logread import (
    Filter,
    LogError,
    decode,
    find_records,
    iter_lines,
    log_files,
    parse_time,
    records,
)
from tools.logstats import Summary, percentile
from tools.render import (
    brief,
    curl_command,
    error_text,
    ms,
    records_table,
    summary_text,
    table,
    terminal_json,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_LOG = "logs/requests.jsonl"


def _config(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LogError(f"cannot read {path}: {exc}") from None


def _common(parser: argparse.ArgumentParser, suppress: bool, model_filter: bool = True) -> None:
    """Options accepted before and after the command (defaults filled in once, in main)."""
    d: dict[str, Any] = {"default": argparse.SUPPRESS} if suppress else {}
    g = parser.add_argument_group("input and output")
    g.add_argument("--file", action="append", metavar="PATH", help="log file (repeatable); rotated PATH.N[.gz] "
                   "siblings are read too. Default: [log].requests of ./config.toml", **d)
    g.add_argument("--config", metavar="PATH", help="config.toml to take the defaults from", **d)
    g.add_argument("--no-rotated", action="store_true", help="read only the named files, not their rotations", **d)
    g.add_argument("--json", action="store_true", help="JSON lines (the default when stdout is not a terminal)", **d)
    g.add_argument("--limit", type=int, metavar="N", help="records shown in a terminal listing (default 20)", **d)
    f = parser.add_argument_group("filters (all must match)")
    f.add_argument("--errors-only", action="store_true", help="failed requests (status >= 400 or an error)", **d)
    f.add_argument("--unknown-routes", action="store_true", help="requests to paths the gateway does not serve", **d)
    f.add_argument("--unknown-blocks", action="store_true", help="requests with block types the gateway does not "
                   "know (passed on as text or dropped; the line's unknown_blocks says which and where)", **d)
    f.add_argument("--status", action="append", metavar="CODE", help="404, 5xx, … (repeatable)", **d)
    if model_filter:  # after `replay`, --model names the model to send instead
        f.add_argument("--model", action="append", metavar="GLOB", help="requested or backend model (repeatable)",
                       **d)
    f.add_argument("--backend", action="append", metavar="NAME", help="backend name (repeatable)", **d)
    f.add_argument("--session", action="append", metavar="ID", help="session id (repeatable)", **d)
    f.add_argument("--path", action="append", metavar="GLOB", help="request path, e.g. /v1/messages (repeatable)", **d)
    f.add_argument("--since", metavar="TIME", help="ISO time (UTC unless it says) or an age: 30m, 2h, 7d", **d)
    f.add_argument("--until", metavar="TIME", help="same forms as --since; exclusive", **d)


_DEFAULTS = {"file": None, "config": "config.toml", "no_rotated": False, "json": False, "limit": 20,
             "errors_only": False, "unknown_routes": False, "unknown_blocks": False, "status": None, "model": None,
             "backend": None, "session": None, "path": None, "since": None, "until": None}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="log_replay", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p, suppress=True)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    _common(sub.add_parser("summary", help="counts, latency and TTFT percentiles, errors, unknown routes"), True)
    _common(sub.add_parser("list", help="the matching records"), True)
    show = sub.add_parser("show", help="one whole record")
    show.add_argument("id", metavar="ID", help="request_id (req_…), or its first characters")
    show.add_argument("--brief", action="store_true",
                      help="last user message, tools offered, sizes, answer, timings (instead of the whole record)")
    _common(show, True)
    curl = sub.add_parser("curl", help="a curl command that re-sends one recorded request")
    curl.add_argument("id", metavar="ID")
    curl.add_argument("--url", help="gateway base URL (default: [server] host and port of the config)")
    _common(curl, True)
    rp = sub.add_parser("replay", help="re-send the matching requests and compare the answers")
    rp.add_argument("--to", required=True, metavar="URL", help="base URL of the gateway to test")
    rp.add_argument("--model", dest="replay_model", metavar="NAME", help="send this model name instead")
    rp.add_argument("--concurrency", type=int, default=1, metavar="N", help="requests in flight (default 1)")
    rp.add_argument("--token", help="API key for --to (default: $ANTHROPIC_API_KEY or $ANTHROPIC_AUTH_TOKEN)")
    rp.add_argument("--strict", action="store_true",
                    help="any change of status, stop_reason, tools, tool arguments or answer text regresses")
    rp.add_argument("--timeout", type=float, default=600, metavar="S", help="per-request timeout (default 600)")
    _answer_options(rp)
    _common(rp, True, model_filter=False)
    diff = sub.add_parser("diff", help="compare two logs of the same prompts (two models, two gateway versions)")
    diff.add_argument("log_a", metavar="LOG_A", help="the reference log")
    diff.add_argument("log_b", metavar="LOG_B", help="the log to compare with it")
    diff.add_argument("--strict", action="store_true", help="as for replay")
    _answer_options(diff)
    _common(diff, True)
    return p


def _answer_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-similarity", type=float, metavar="X",
                   help="answers whose text is less similar than X (0..1) regress, as do changed tool arguments")
    p.add_argument("--diff-lines", type=int, default=12, metavar="N",
                   help="answer diff lines shown per request on a terminal (default 12; JSON has all)")


def _filter(args: argparse.Namespace) -> Filter:
    return Filter(errors_only=args.errors_only, unknown_routes=args.unknown_routes,
                  unknown_blocks=args.unknown_blocks, statuses=args.status or [],
                  models=args.model or [], backends=args.backend or [], sessions=args.session or [],
                  paths=args.path or [], since=parse_time(args.since) if args.since else None,
                  until=parse_time(args.until) if args.until else None)


def _terminal_width() -> int:
    return shutil.get_terminal_size((120, 24)).columns


def _out(data: bytes | str) -> None:
    sys.stdout.buffer.write(data if isinstance(data, bytes) else data.encode())


def cmd_records(args, files, flt, as_json: bool, command: str | None) -> int:
    """No command, `summary` or `list`."""
    if as_json and command in (None, "list"):
        # The whole record, exactly as logged; with no filter, lines are not even decoded.
        lines = iter_lines(files) if flt.empty else (line for line, _ in records(files, flt))
        for line in lines:
            _out(line)
        return 0
    summary = Summary()
    last: deque = deque(maxlen=max(0, args.limit))
    for _, rec in records(files, flt):
        summary.add(rec)
        last.append(rec)
    if as_json:
        _out(orjson.dumps(summary.to_dict()) + b"\n")
        return 0
    parts = []
    if command in (None, "summary"):
        parts.append(summary_text(summary.to_dict()))
    if command in (None, "list") and last:
        title = f"last {len(last)} of {summary.records} matching records:" if summary.records > len(last) else ""
        parts.append((title + "\n" if title else "") + records_table(list(last), _terminal_width()))
    _out("\n\n".join(parts) + "\n")
    return 0


def _find(files, request_id: str):
    """(line, record) for `request_id` or a prefix of it, or None after saying on stderr why not."""
    found = find_records(files, request_id)
    if len(found) == 1:
        return found[0]
    if found:
        ids = ", ".join(rec["request_id"] for _, rec in found)
        print(f"log_replay: {request_id} is ambiguous: it starts {ids}{' …' if len(found) >= 5 else ''}; "
              "give more characters", file=sys.stderr)
    else:
        print(f"log_replay: no record with request_id {request_id} in {', '.join(map(str, files))}", file=sys.stderr)
    return None


def cmd_show(args, files, as_json: bool) -> int:
    found = _find(files, args.id)
    if found is None:
        return 1
    line, rec = found
    if args.brief:
        _out(brief(rec) + "\n")
    else:
        _out(line if as_json else terminal_json(rec) + "\n")
    return 0


def cmd_curl(args, files, cfg: dict) -> int:
    found = _find(files, args.id)
    if found is None:
        return 1
    rec = found[1]
    if rec.get("body") is None and rec.get("method") not in ("GET", "HEAD"):
        print(f"log_replay: {args.id} has no body in the log (log.bodies was false); cannot rebuild it",
              file=sys.stderr)
        return 1
    server = cfg.get("server", {})
    host = server.get("host", "127.0.0.1")
    url = args.url or f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{server.get('port', 8082)}"
    _out(curl_command(rec, url) + "\n")
    return 0


def _arrow(a: object, b: object) -> str:
    a, b = ("-" if a is None else a), ("-" if b is None else b)
    return f"{a}" if a == b else f"{a}→{b}"


def _result_line(r, diff_lines: int = 12) -> str:
    """One result for a terminal: the numbers on a line, then the answer diff indented under it."""
    if r.skipped:
        return escape_controls(f"{r.request_id}  {r.path}  skipped: {r.skipped}")
    rec, new = r.recorded, r.new
    tools = _arrow(",".join(rec.tool_names) or "-", ",".join(new.tool_names) or "-")
    rid = f"{r.request_id}↔{r.other_request_id}" if r.other_request_id else r.request_id
    line = (f"{rid}  {r.model or '-'}  status {_arrow(rec.status, new.status)}  "
            f"stop {_arrow(rec.stop_reason, new.stop_reason)}  tools {tools}  "
            f"tokens {rec.input_tokens or 0}/{rec.output_tokens or 0}→{new.input_tokens or 0}/{new.output_tokens or 0}  "
            f"time {ms(rec.duration_ms)}→{ms(new.duration_ms)}")
    if new.ttft_ms is not None:  # streamed answers only
        line += f"  ttft {ms(rec.ttft_ms)}→{ms(new.ttft_ms)}"
    if r.answer is not None:
        a = r.answer
        if not a.changed:
            line += "  answer same"
        else:
            if a.text_similarity is not None:
                line += f"  answer {a.text_similarity:.0%} similar"
            if a.tool_calls != "same":
                line += "  " + a.tool_calls.replace("_", " ")
    if new.error:
        line += "  error " + error_text({"type": new.error, "message": new.error_message})
    if r.regressions:
        line += "  REGRESSION: " + ",".join(r.regressions)
    out = [escape_controls(line)]
    if r.answer is not None and r.answer.changed:
        shown = r.answer.diff[:max(0, diff_lines)]
        out += ["    " + escape_controls(d) for d in shown]
        if len(r.answer.diff) > len(shown):
            out.append(f"    … {len(r.answer.diff) - len(shown)} more diff lines (--diff-lines N, or --json)")
    return "\n".join(out)


def _report(results: list, as_json: bool, what: str) -> int:
    """The closing summary on stderr; exit code 1 when anything regressed."""
    done = [r for r in results if r.new is not None]
    bad = [r for r in done if r.regressions]
    changed = sum(1 for r in done if r.answer is not None and r.answer.changed)
    kinds: dict[str, int] = {}
    for r in bad:
        for k in r.regressions:
            kinds[k] = kinds.get(k, 0) + 1
    rows = [["recorded" if what == "replayed" else "A",
             ms(percentile([r.recorded.duration_ms for r in done if r.recorded.duration_ms is not None], 50)),
             ms(percentile([r.recorded.ttft_ms for r in done if r.recorded.ttft_ms is not None], 50))],
            ["new" if what == "replayed" else "B",
             ms(percentile([r.new.duration_ms for r in done if r.new.duration_ms is not None], 50)),
             ms(percentile([r.new.ttft_ms for r in done if r.new.ttft_ms is not None], 50))]]
    detail = ", ".join(f"{k} {n}" for k, n in kinds.items())
    print(f"\n{what} {len(done)}, skipped {len(results) - len(done)}, answers changed {changed}, "
          f"regressions {len(bad)}" + (f" ({detail})" if detail else ""), file=sys.stderr)
    if not as_json:
        print(table(rows, ["", "TIME P50", "TTFT P50"]), file=sys.stderr)
    return 1 if bad else 0


def _emit(r, as_json: bool, diff_lines: int) -> None:
    _out(orjson.dumps(r.to_dict()) + b"\n" if as_json else _result_line(r, diff_lines) + "\n")
    sys.stdout.flush()


def _stop_hint(r, url: str) -> str:
    if r.new.status == 401:
        return (f"replay stopped: {url} answered 401 ({r.new.error_message or 'unauthorized'}); the other "
                "requests would fail the same way. Pass --token KEY or set $ANTHROPIC_API_KEY / "
                "$ANTHROPIC_AUTH_TOKEN to the gateway's server.auth_token.")
    return (f"replay stopped: cannot reach {url} ({r.new.error_message}); is the gateway running there? "
            "Check --to.")


def cmd_replay(args, files, flt: Filter, as_json: bool) -> int:
    # aiohttp is imported only when replaying, so the other commands start fast.
    from tools.replay import replay

    token = args.token or os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_AUTH_TOKEN")
    # frozen: replaying to the gateway that writes this log appends to it; those records are not replayed.
    recs = (rec for line, head in records(files, flt, frozen=True) if head.get("event") == "request"
            for rec in [decode(line)] if rec is not None)
    results: list = []

    async def run() -> None:
        async for r in replay(recs, args.to, model=args.replay_model, concurrency=max(1, args.concurrency),
                              token=token, strict=args.strict, timeout_s=args.timeout,
                              min_similarity=args.min_similarity):
            results.append(r)
            _emit(r, as_json, args.diff_lines)

    asyncio.run(run())
    if results and results[-1].stops_replay:
        print(_stop_hint(results[-1], args.to), file=sys.stderr)
        return 2
    return _report(results, as_json, "replayed")


def cmd_diff(args, flt: Filter, as_json: bool) -> int:
    from tools.logdiff import pair_logs

    files_a = log_files([args.log_a], rotated=not args.no_rotated)
    files_b = log_files([args.log_b], rotated=not args.no_rotated)
    results, only_a, only_b = [], 0, 0
    for r in pair_logs(records(files_a, flt, with_body=True), records(files_b, flt, with_body=True),
                       strict=args.strict, min_similarity=args.min_similarity):
        if r.new is None:
            if as_json:
                _out(orjson.dumps(r.to_dict()) + b"\n")
            only_a += r.skipped == "only in LOG_A"
            only_b += r.skipped == "only in LOG_B"
            continue
        results.append(r)
        _emit(r, as_json, args.diff_lines)
    if only_a or only_b:
        print(f"\nunmatched: {only_a} only in {args.log_a}, {only_b} only in {args.log_b} "
              "(requests are paired by method, path and body, the model name aside)", file=sys.stderr)
    return _report(results, as_json, "compared")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `claude-gateway-replay` and `python tools/log_replay.py`."""
    args = _parser().parse_args(argv)
    for key, value in _DEFAULTS.items():
        if not hasattr(args, key):
            setattr(args, key, value)
    try:
        cfg = _config(args.config)
        paths = args.file or [cfg.get("log", {}).get("requests") or DEFAULT_LOG]
        files = log_files(paths, rotated=not args.no_rotated) if args.command != "diff" else []
        as_json = args.json or not sys.stdout.isatty()
        if args.command == "show":
            return cmd_show(args, files, as_json)
        if args.command == "curl":
            return cmd_curl(args, files, cfg)
        if args.command == "diff":
            return cmd_diff(args, _filter(args), as_json)
        flt = _filter(args)
        if args.command == "replay":
            return cmd_replay(args, files, flt, as_json)
        return cmd_records(args, files, flt, as_json, args.command)
    except LogError as exc:
        print(f"log_replay: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `| head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
