"""Terminal tables for log_replay (JSON output needs none of this)."""
from __future__ import annotations

import shlex
import uuid
from collections.abc import Sequence
from urllib.parse import quote

import orjson

from gateway.terminal import escape_controls, escape_controls_in_json


def table(rows: Sequence[Sequence[object]], header: list[str], width: int | None = None,
          flexible: dict[str, int] | None = None, clip: tuple[str, ...] = ()) -> str:
    """Left-aligned columns separated by two spaces. With `width`, the `flexible` columns (name →
    narrowest width), widest first, are cut short with "…" until every line fits; `clip` columns
    are cut without the mark (an id prefix still works as an id)."""
    cells = [[_cell(c) for c in row] for row in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    if width and flexible:
        floor = {i: max(len(h), flexible[h]) for i, h in enumerate(header) if h in flexible}
        while sum(widths) + 2 * (len(widths) - 1) > width:
            i = max((j for j in floor if widths[j] > floor[j]), key=lambda j: widths[j], default=None)
            if i is None:
                break  # nothing left to cut: let the terminal wrap
            widths[i] -= 1
        cells = [cells[0]] + [[_fit(c, w, header[j] in clip) for j, (c, w) in enumerate(zip(row, widths))]
                              for row in cells[1:]]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _fit(text: str, width: int, clip: bool) -> str:
    if len(text) <= width:
        return text
    return text[:width] if clip else text[:width - 1] + "…"


def _cell(value: object) -> str:
    if value is None:
        return "-"
    text = escape_controls(str(value))  # a path or model name is the client's text
    return text if len(text) <= 80 else text[:79] + "…"


def terminal_json(value: object) -> str:
    """Indented JSON that is still valid JSON and safe to print on a terminal."""
    return escape_controls_in_json(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


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


def error_text(err: object) -> str:
    """`type: message` of a logged error ("" for none)."""
    if not isinstance(err, dict):
        return ""
    kind, message = err.get("type") or "error", err.get("message")
    return f"{kind}: {message}" if message else kind


def records_table(recs: list[dict], width: int | None = None) -> str:
    """One row per record; errors with their message. Times of day only when all fall on one day."""
    one_day = len({str(r.get("ts", ""))[:10] for r in recs}) <= 1
    rows = []
    for r in recs:
        what = r.get("stop_reason") or error_text(r.get("error"))
        if r.get("tool_names"):
            what += " " + ",".join(r["tool_names"])
        ts = str(r.get("ts", ""))
        rows.append([ts[11:23] if one_day else ts[5:10] + " " + ts[11:19], r.get("request_id"),
                     f"{r.get('method')} {r.get('path')}", r.get("status"), r.get("model"), r.get("backend"),
                     ms(r.get("duration_ms")), ms(r.get("ttft_ms")),
                     f"{r.get('input_tokens') or 0}/{r.get('output_tokens') or 0}", what])
    return table(rows, ["TIME (UTC)" if one_day else "DATE TIME (UTC)", "REQUEST ID", "REQUEST", "STATUS", "MODEL",
                        "BACKEND", "TOTAL", "TTFT", "TOKENS", "RESULT"], width,
                 flexible={"REQUEST ID": 12, "REQUEST": 10, "MODEL": 8, "BACKEND": 7, "RESULT": 10},
                 clip=("REQUEST ID",))


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
    body = rec.get("body")
    parts = ["curl", "-sS", "-g", "-X", rec.get("method") or "POST", shlex.quote(url),
             "-H", shlex.quote("anthropic-version: 2023-06-01"),
             # the token never went into the log: the command reads it from the environment
             "-H", '"x-api-key: ${ANTHROPIC_API_KEY:-$ANTHROPIC_AUTH_TOKEN}"']
    if rec.get("session_id"):
        parts += ["-H", shlex.quote(f"X-Claude-Code-Session-Id: {rec['session_id']}")]
    if isinstance(body, dict) and body.get("stream") is True:
        parts.insert(1, "-N")  # print each event as it arrives, not when curl's buffer fills
    if body is None:
        return " ".join(parts)
    data = body if isinstance(body, str) else orjson.dumps(body).decode()
    marker = "GATEWAY_BODY_" + uuid.uuid4().hex[:8]
    parts += ["-H", shlex.quote("content-type: application/json"), "--data-binary", "@-", f"<<'{marker}'"]
    # A heredoc, not an argument: bodies of Claude Code requests exceed the 128 KB argument limit.
    return " ".join(parts) + "\n" + data + "\n" + marker


def brief(rec: dict) -> str:
    """One record for a person: what was asked, what was offered, what came back, how fast."""
    raw_body = rec.get("body")
    body: dict = raw_body if isinstance(raw_body, dict) else {}
    raw_messages = body.get("messages")
    messages: list = raw_messages if isinstance(raw_messages, list) else []
    tools = [t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)]
    system = body.get("system")
    system_chars = len(system) if isinstance(system, str) else len(_text_of(system))
    out = [(f"{rec.get('request_id')}  {rec.get('ts', '')}  {rec.get('method')} {rec.get('path')}  "
           f"status {rec.get('status')}  session {rec.get('session_id') or '-'}"),
           (f"model      {rec.get('model') or '-'} → {rec.get('backend') or '-'} ({rec.get('backend_model') or '-'})"
           f"{'  stream' if rec.get('stream') else ''}"),
           f"timing     total {ms(rec.get('duration_ms'))}  ttft {ms(rec.get('ttft_ms'))}"
           + (f"  prefill {rec['prefill_tps']:.0f} tok/s" if rec.get("prefill_tps") else "")
           + (f"  decode {rec['decode_tps']:.0f} tok/s" if rec.get("decode_tps") else ""),
           (f"tokens     in {rec.get('input_tokens') or 0}  out {rec.get('output_tokens') or 0}"
           f"  cache read {rec.get('cache_read_tokens') or 0}"),
           f"request    messages {len(messages)}, system {system_chars} chars, body {rec.get('body_bytes') or 0} bytes"]
    out.append(f"tools      {len(tools)} offered" + (": " + ", ".join(map(str, tools)) if tools else ""))
    last_user = next((m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None)
    if last_user is not None:
        out += ["", "last user message:", _indent(_text_of(last_user.get("content")) or "(no text)")]
    if rec.get("error"):
        out += ["", "error: " + error_text(rec["error"])]
    response = rec.get("response")
    if isinstance(response, list):
        out += ["", f"answer ({rec.get('stop_reason') or 'cut short'}):"]
        for block in response:
            out.append(_indent(_block_text(block)))
    elif "response" not in rec:
        out += ["", "answer: not in the log (log.bodies was false, or the gateway predates answers in the log)"]
    return "\n".join(escape_controls(part) for line in out for part in line.split("\n"))


def _text_of(content: object) -> str:
    """The text in a message content or system value (a string or a list of blocks)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts = []
    for b in content:
        if not isinstance(b, dict):
            continue
        if b.get("type") == "text":
            parts.append(str(b.get("text") or ""))
        elif b.get("type") == "tool_result":
            inner = b.get("content")
            parts.append(f"[tool_result {b.get('tool_use_id', '')}] " + (_text_of(inner) if inner else ""))
        elif b.get("type"):
            parts.append(f"[{b['type']}]")
    return "\n".join(parts)


def _block_text(block: object) -> str:
    if not isinstance(block, dict):
        return str(block)
    kind = block.get("type")
    cut = " (cut short)" if block.get("incomplete") else ""
    if kind == "text":
        return str(block.get("text") or "") + cut
    if kind == "thinking":
        return "[thinking] " + str(block.get("thinking") or "") + cut
    if kind == "tool_use":
        args = block["partial_json"] if block.get("incomplete") else orjson.dumps(block.get("input")).decode()
        return f"[tool_use {block.get('name')}] {args}{cut}"
    return f"[{kind}]"


def _indent(text: str, limit: int = 2000) -> str:
    if len(text) > limit:
        text = text[:limit] + f"… ({len(text) - limit} more characters)"
    return "\n".join("  " + line for line in text.splitlines() or [""])
