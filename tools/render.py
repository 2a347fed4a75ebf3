"""Terminal tables for log_replay (JSON output needs none of this)."""
from __future__ import annotations

import re
import shlex
import uuid
from urllib.parse import quote

import orjson

from gateway.terminal import escape_controls


def table(rows: list[list[object]], header: list[str]) -> str:
    """Left-aligned columns separated by two spaces."""
    cells = [[_cell(c) for c in row] for row in [header] + rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    text = escape_controls(str(value))  # a path or model name is the client's text
    return text if len(text) <= 60 else text[:57] + "..."


# What orjson leaves raw that a terminal acts on (it escapes C0 itself): C1, DEL, separators, bidi.
_JSON_CONTROL = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def terminal_json(value: object) -> str:
    """Indented JSON that is still valid JSON and safe to print on a terminal."""
    text = orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
    return _JSON_CONTROL.sub(lambda m: f"\\u{ord(m[0]):04x}", text)


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.2f}s" if value >= 10000 else f"{value:.0f}ms"


def summary_text(s: dict) -> str:
    """The summary as a few small tables."""
    head = (f"{s['records']} records ({s['requests']} requests, {s['unknown_routes']} unknown routes)"
            f"  {s['from'] or '-'} → {s['to'] or '-'}")
    speed = (f"latency p50 {ms(s['latency_ms']['p50'])}  p95 {ms(s['latency_ms']['p95'])}   "
             f"TTFT p50 {ms(s['ttft_ms']['p50'])}  p95 {ms(s['ttft_ms']['p95'])}   "
             f"tokens in {s['tokens']['input']}  out {s['tokens']['output']}")
    out = [escape_controls(head), speed]
    if s["status"]:
        out += ["", table([[k, v] for k, v in s["status"].items()], ["STATUS", "COUNT"])]
    if s["models"]:
        rows = [[m, g["count"], g["errors"], ms(g["p50_ms"]), ms(g["p95_ms"]), ms(g["ttft_p50_ms"]),
                 ms(g["ttft_p95_ms"]), g["output_tokens"]] for m, g in s["models"].items()]
        out += ["", table(rows, ["MODEL", "COUNT", "ERRORS", "P50", "P95", "TTFT P50", "TTFT P95", "TOKENS OUT"])]
    if s["backends"]:
        out += ["", table([[k, v] for k, v in s["backends"].items()], ["BACKEND", "COUNT"])]
    if s["errors"]:
        out += ["", table([[k, v] for k, v in s["errors"].items()], ["ERROR TYPE", "COUNT"])]
    if s["unknown"]:
        out += ["", table([[u["method"], u["path"], u["count"], u["last_ts"]] for u in s["unknown"]],
                          ["METHOD", "UNKNOWN PATH", "COUNT", "LAST SEEN"])]
    return "\n".join(out)


def records_table(recs: list[dict]) -> str:
    """One row per record."""
    rows = []
    for r in recs:
        err = r.get("error") or {}
        what = r.get("stop_reason") or err.get("type") or ""
        if r.get("tool_names"):
            what += " " + ",".join(r["tool_names"])
        rows.append([r.get("ts", "")[:23], r.get("request_id"), r.get("method"), r.get("path"), r.get("status"),
                     r.get("model"), r.get("backend"), ms(r.get("duration_ms")), ms(r.get("ttft_ms")),
                     f"{r.get('input_tokens') or 0}/{r.get('output_tokens') or 0}", what])
    return table(rows, ["TS", "REQUEST ID", "METHOD", "PATH", "STATUS", "MODEL", "BACKEND", "TIME", "TTFT",
                        "TOKENS", "STOP / ERROR"])


def request_target(rec: dict) -> str:
    """The path and query as they arrived: raw_path when the gateway saw them encoded, else path?query
    (quoted only where a character cannot travel raw, for records older than raw_path)."""
    if rec.get("raw_path"):
        return rec["raw_path"]
    target = quote(rec.get("path") or "/", safe=_RAW_OK)
    if rec.get("query"):
        target += "?" + quote(rec["query"], safe=_RAW_OK + "?%")
    return target


_RAW_OK = "/!$&'()*+,;=:@-._~[]{}|^"  # characters the gateway accepts unencoded in a request target


def curl_command(rec: dict, base_url: str) -> str:
    """A runnable curl command that re-sends the recorded request (body via a quoted heredoc)."""
    url = base_url.rstrip("/") + request_target(rec)
    # -g: a recorded path like /x[1-40] must not become 40 requests carrying the key.
    parts = ["curl", "-sS", "-g", "-X", rec.get("method") or "POST", shlex.quote(url),
             "-H", shlex.quote("anthropic-version: 2023-06-01"),
             # the token never went into the log: the command reads it from the environment
             "-H", '"x-api-key: ${ANTHROPIC_API_KEY:-$ANTHROPIC_AUTH_TOKEN}"']
    if rec.get("session_id"):
        parts += ["-H", shlex.quote(f"X-Claude-Code-Session-Id: {rec['session_id']}")]
    body = rec.get("body")
    if body is None:
        return " ".join(parts)
    data = body if isinstance(body, str) else orjson.dumps(body).decode()
    marker = "GATEWAY_BODY_" + uuid.uuid4().hex[:8]
    parts += ["-H", shlex.quote("content-type: application/json"), "--data-binary", "@-", f"<<'{marker}'"]
    # A heredoc, not an argument: bodies of Claude Code requests exceed the 128 KB argument limit.
    return " ".join(parts) + "\n" + data + "\n" + marker
