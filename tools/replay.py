"""Re-send recorded requests to another gateway (or the same one, now serving a new model) and
compare each answer with what the log recorded: status, stop_reason, tools called and their
arguments, the answer's text, tokens, time."""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import asdict, dataclass, field

import aiohttp
import orjson
from yarl import URL

from tools.answers import AnswerDiff, compare
from tools.render import request_target


@dataclass
class Outcome:
    """What one request produced: the recorded one (from the log) or the new one."""

    status: int | None = None
    stop_reason: str | None = None
    tool_names: list[str] = field(default_factory=list)
    input_tokens: int | None = None
    output_tokens: int | None = None
    duration_ms: float | None = None
    ttft_ms: float | None = None
    error: str | None = None  # error type (or a transport failure)
    error_message: str | None = None
    content: list[dict] | None = None  # the answer's content blocks (None: not known)

    @classmethod
    def recorded(cls, rec: dict) -> Outcome:
        """What the client of a logged request got, comparable with what a replay gets."""
        raw_err = rec.get("error")
        err: dict = raw_err if isinstance(raw_err, dict) else {}
        response = rec.get("response")
        content = response if isinstance(response, list) else None
        tool_names = list(rec.get("tool_names") or [])
        if content is not None:
            # The gateway sends a tool call whole or not at all: one the log marks incomplete (cut by
            # a length stop or a dropped stream) never reached the client, so a replay cannot get it.
            held = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_use" and b.get("incomplete")]
            content = [b for b in content if not any(b is h for h in held)]
            for block in held:
                if block.get("name") in tool_names:
                    del tool_names[len(tool_names) - 1 - tool_names[::-1].index(block["name"])]
        return cls(status=rec.get("status"), stop_reason=rec.get("stop_reason"),
                   tool_names=tool_names, input_tokens=rec.get("input_tokens"),
                   output_tokens=rec.get("output_tokens"), duration_ms=rec.get("duration_ms"),
                   ttft_ms=rec.get("ttft_ms"), error=err.get("type"), error_message=err.get("message"),
                   content=content)


@dataclass
class Result:
    """One replayed request."""

    request_id: str
    method: str
    path: str
    model: str | None
    recorded: Outcome
    new: Outcome | None = None
    regressions: list[str] = field(default_factory=list)
    skipped: str | None = None  # why it was not re-sent
    answer: AnswerDiff | None = None  # None when either answer is unknown (no response in the log)
    other_request_id: str | None = None  # diff: the same request in LOG_B

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def stops_replay(self) -> bool:
        """A 401 or a connection failure: every further request would fail the same way."""
        return self.new is not None and (self.new.status == 401 or (self.new.error or "").startswith("connection"))


def compare_outcomes(rec: Outcome, new: Outcome, strict: bool = False,
                     min_similarity: float | None = None) -> tuple[list[str], AnswerDiff | None]:
    """(regressions, answer comparison) of a new outcome against the recorded one."""
    answer = compare(rec.content, new.content) if rec.content is not None and new.content is not None else None
    found = regressions(rec, new, strict)
    if answer is not None and "failed" not in found:
        low = min_similarity is not None and answer.text_similarity is not None and answer.text_similarity < min_similarity
        if low or (strict and answer.changed):
            found.append("answer_changed")
        if (strict or min_similarity is not None) and answer.tool_calls == "changed_arguments":
            found.append("tool_arguments_changed")
    return found, answer


def regressions(rec: Outcome, new: Outcome, strict: bool = False) -> list[str]:
    """What got worse: a success that now fails, an error mid-stream, tool calls lost, an answer cut short."""
    out = []
    ok_before = rec.status is not None and rec.status < 400 and not rec.error
    if ok_before and (new.status is None or new.status >= 400):
        out.append("failed")
    elif ok_before and new.error:
        out.append("stream_error")
    if ok_before and rec.tool_names and not new.tool_names and "failed" not in out:
        out.append("tools_lost")
    if new.stop_reason == "max_tokens" and rec.stop_reason not in (None, "max_tokens"):
        out.append("truncated")
    if strict:
        if new.status != rec.status:
            out.append("status_changed")
        if new.stop_reason != rec.stop_reason:
            out.append("stop_reason_changed")
        if new.tool_names != rec.tool_names:
            out.append("tools_changed")
    return out


def _headers(rec: dict, token: str | None) -> dict[str, str]:
    h = {"anthropic-version": "2023-06-01", "content-type": "application/json",
         "user-agent": "claude-gateway-replay"}
    if token:
        h["x-api-key"] = token
    if rec.get("session_id"):
        h["X-Claude-Code-Session-Id"] = rec["session_id"]
    return h


def _body(rec: dict, model: str | None) -> bytes | None:
    body = rec.get("body")
    if body is None:
        return None
    if isinstance(body, str):  # recorded as text: it was not JSON, send it as it was
        return body.encode()
    if model and isinstance(body, dict) and "model" in body:
        body = {**body, "model": model}
    return orjson.dumps(body)


async def _send(session: aiohttp.ClientSession, base: str, rec: dict, body: bytes | None,
                token: str | None) -> Outcome:
    # encoded=True: the target goes out byte for byte as it was recorded, not re-quoted by yarl.
    url = URL(base.rstrip("/") + request_target(rec), encoded=True)
    out = Outcome()
    start = time.perf_counter()
    try:
        async with session.request(rec.get("method") or "POST", url, data=body,
                                   headers=_headers(rec, token)) as resp:
            out.status = resp.status
            if resp.content_type == "text/event-stream":
                await _read_sse(resp, out, start)
            else:
                _read_json(await resp.read(), out)
    except asyncio.TimeoutError as exc:  # before ClientConnectionError: a slow answer is not a dead server
        out.error, out.error_message = "timeout", f"no answer within the timeout ({type(exc).__name__})"
    except (aiohttp.ClientConnectionError, OSError) as exc:
        out.error, out.error_message = "connection", f"{type(exc).__name__}: {exc}".strip()
    except aiohttp.ClientError as exc:
        out.error, out.error_message = "client_error", f"{type(exc).__name__}: {exc}".strip()
    out.duration_ms = round((time.perf_counter() - start) * 1000, 2)
    return out


def _read_json(raw: bytes, out: Outcome) -> None:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        if out.status and out.status >= 400:
            out.error = f"http_{out.status}"
        return
    if not isinstance(data, dict):
        return
    if data.get("type") == "error":
        raw_err = data.get("error")
        err: dict = raw_err if isinstance(raw_err, dict) else {}
        out.error = err.get("type") or f"http_{out.status}"
        out.error_message = err.get("message")
        return
    if data.get("object") == "chat.completion" or (isinstance(data.get("error"), dict) and "type" not in data):
        _openai_json(data, out)
        return
    if data.get("type") == "message":
        out.stop_reason = data.get("stop_reason")
        out.content = [b for b in data.get("content") or [] if isinstance(b, dict)]
        out.tool_names = [b.get("name") or "" for b in out.content if b.get("type") == "tool_use"]
        usage = data.get("usage") or {}
        out.input_tokens, out.output_tokens = usage.get("input_tokens"), usage.get("output_tokens")
    elif "input_tokens" in data:  # count_tokens
        out.input_tokens = data["input_tokens"]


async def _read_sse(resp: aiohttp.ClientResponse, out: Outcome, start: float) -> None:
    out.content = []
    partial: dict[int, str] = {}  # tool arguments as they stream
    calls: dict[int, str] = {}  # the same for an OpenAI stream, by tool call index
    buf = b""
    async for chunk in resp.content.iter_any():
        buf += chunk
        while b"\n\n" in buf:
            frame, buf = buf.split(b"\n\n", 1)
            for line in frame.split(b"\n"):
                if line.startswith(b"data:"):
                    if line[5:].strip() == b"[DONE]":  # the end of an OpenAI stream
                        continue
                    try:
                        ev = orjson.loads(line[5:])
                    except orjson.JSONDecodeError:
                        out.error = "malformed_sse"
                        continue
                    if isinstance(ev, dict) and "type" not in ev:  # an OpenAI chunk (or its error)
                        _openai_chunk(ev, out, start, calls)
                    elif isinstance(ev, dict):
                        _sse_event(ev, out, start, partial)
    for index, raw in partial.items():  # a call the stream never closed
        if index < len(out.content):
            out.content[index].update(partial_json=raw, incomplete=True)
    for block in out.content:  # an OpenAI call the stream never finished
        if block.get("type") == "tool_use" and "call" in block:
            block.update(partial_json=calls.get(block.pop("call"), ""), incomplete=True)


def _sse_event(ev: dict, out: Outcome, start: float, partial: dict[int, str]) -> None:
    kind = ev.get("type")
    blocks = out.content if out.content is not None else []
    if kind == "message_start":
        out.input_tokens = ((ev.get("message") or {}).get("usage") or {}).get("input_tokens")
    elif kind == "content_block_start":
        if out.ttft_ms is None:
            out.ttft_ms = round((time.perf_counter() - start) * 1000, 2)
        block = dict(ev.get("content_block") or {})
        blocks.append(block)
        if block.get("type") == "tool_use":
            out.tool_names.append(block.get("name") or "")
            partial[len(blocks) - 1] = ""
    elif kind == "content_block_delta":
        index, delta = ev.get("index"), ev.get("delta") or {}
        if not isinstance(index, int) or not 0 <= index < len(blocks):
            return
        block, dtype = blocks[index], delta.get("type")
        if dtype == "text_delta":
            block["text"] = (block.get("text") or "") + str(delta.get("text") or "")
        elif dtype == "thinking_delta":
            block["thinking"] = (block.get("thinking") or "") + str(delta.get("thinking") or "")
        elif dtype == "input_json_delta" and index in partial:
            partial[index] += str(delta.get("partial_json") or "")
    elif kind == "content_block_stop":
        index = ev.get("index")
        if isinstance(index, int) and index in partial and index < len(blocks):
            raw = partial.pop(index)
            try:
                blocks[index]["input"] = orjson.loads(raw) if raw.strip() else {}
            except orjson.JSONDecodeError:
                blocks[index].update(partial_json=raw, incomplete=True)
    elif kind == "message_delta":
        out.stop_reason = (ev.get("delta") or {}).get("stop_reason")
        usage = ev.get("usage") or {}
        out.output_tokens = usage.get("output_tokens", out.output_tokens)
        if usage.get("input_tokens") is not None:
            out.input_tokens = usage["input_tokens"]
    elif kind == "error":
        raw_err = ev.get("error")
        err: dict = raw_err if isinstance(raw_err, dict) else {}
        out.error = err.get("type") or "error"
        out.error_message = err.get("message")


# OpenAI finish_reason → the stop_reason the log records for every API.
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "end_turn"}


def _openai_json(data: dict, out: Outcome) -> None:
    """A chat.completion (or an OpenAI error body) as an Outcome with Anthropic-style content blocks."""
    if isinstance(data.get("error"), dict):
        out.error = data["error"].get("type") or f"http_{out.status}"
        out.error_message = data["error"].get("message")
        return
    choice = (data.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    out.stop_reason = _STOP_REASONS.get(choice.get("finish_reason") or "", choice.get("finish_reason"))
    out.content = []
    if message.get("reasoning_content"):
        out.content.append({"type": "thinking", "thinking": message["reasoning_content"]})
    if message.get("content"):
        out.content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        out.content.append(_tool_block(call.get("id"), fn.get("name"), fn.get("arguments") or ""))
    out.tool_names = [b["name"] for b in out.content if b["type"] == "tool_use"]
    usage = data.get("usage") or {}
    _openai_usage(usage, out)


def _tool_block(call_id: object, name: object, raw: str) -> dict:
    block: dict = {"type": "tool_use", "id": call_id, "name": name}
    try:
        block["input"] = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        block.update(partial_json=raw, incomplete=True)
    return block


def _openai_usage(usage: dict, out: Outcome) -> None:
    if not usage:
        return
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    if usage.get("prompt_tokens") is not None:
        out.input_tokens = usage["prompt_tokens"] - cached  # the log counts input without cache reads
    out.output_tokens = usage.get("completion_tokens", out.output_tokens)


def _openai_chunk(ev: dict, out: Outcome, start: float, partial: dict[int, str]) -> None:
    """One chat.completion.chunk folded into the Outcome; `partial` holds tool arguments by call index."""
    if isinstance(ev.get("error"), dict):
        out.error = ev["error"].get("type") or "error"
        out.error_message = ev["error"].get("message")
        return
    blocks = out.content if out.content is not None else []
    _openai_usage(ev.get("usage") or {}, out)
    for choice in ev.get("choices") or []:
        delta = choice.get("delta") or {}
        for key, kind in (("reasoning_content", "thinking"), ("content", "text")):
            piece = delta.get(key)
            if not piece:
                continue
            if out.ttft_ms is None:
                out.ttft_ms = round((time.perf_counter() - start) * 1000, 2)
            if not blocks or blocks[-1]["type"] != kind:
                blocks.append({"type": kind, kind: ""})
            blocks[-1][kind] += str(piece)
        for call in delta.get("tool_calls") or []:
            index = call.get("index")
            fn = call.get("function") or {}
            if index not in partial:
                if out.ttft_ms is None:
                    out.ttft_ms = round((time.perf_counter() - start) * 1000, 2)
                partial[index] = ""
                blocks.append({"type": "tool_use", "id": call.get("id"), "name": fn.get("name"), "call": index})
                out.tool_names.append(fn.get("name") or "")
            partial[index] += str(fn.get("arguments") or "")
        if choice.get("finish_reason"):
            reason = choice["finish_reason"]
            out.stop_reason = _STOP_REASONS.get(reason, reason)
            for i, block in enumerate(blocks):  # the calls are complete: their arguments are JSON now
                if block.get("type") == "tool_use" and block.get("call") in partial:
                    raw = partial.pop(block.pop("call"))
                    blocks[i] = _tool_block(block["id"], block["name"], raw)


async def _one(session: aiohttp.ClientSession, base: str, rec: dict, model: str | None, token: str | None,
               strict: bool, min_similarity: float | None) -> Result:
    res = Result(request_id=rec.get("request_id") or "?", method=rec.get("method") or "POST",
                 path=rec.get("path") or "/", model=model or rec.get("model"), recorded=Outcome.recorded(rec))
    body = _body(rec, model)
    if body is None and res.method != "GET":
        res.skipped = "no body in the log (log.bodies was false)"
        return res
    res.new = await _send(session, base, rec, body, token)
    res.regressions, res.answer = compare_outcomes(res.recorded, res.new, strict, min_similarity)
    return res


async def replay(records: Iterable[dict], base: str, *, model: str | None = None, concurrency: int = 1,
                 token: str | None = None, strict: bool = False, timeout_s: float = 600,
                 min_similarity: float | None = None) -> AsyncIterator[Result]:
    """Re-send each record to `base`; results come back in log order, `concurrency` requests in flight.
    Ends after the first result that `stops_replay` (a 401, a connection failure)."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    pending: deque[asyncio.Task] = deque()
    async with aiohttp.ClientSession(timeout=timeout) as session:
        try:
            for rec in records:
                pending.append(asyncio.create_task(_one(session, base, rec, model, token, strict, min_similarity)))
                if len(pending) >= concurrency:
                    res = await pending.popleft()
                    yield res
                    if res.stops_replay:
                        return
            while pending:
                res = await pending.popleft()
                yield res
                if res.stops_replay:
                    return
        finally:
            for task in pending:
                task.cancel()
