"""Anthropic Messages ⇄ OpenAI chat completions, for every OpenAI-style backend.

`to_openai` builds the chat-completions body; `ChunkTranslator` turns streamed chunks (decoded
JSON) into internal events. Tool-call argument fragments pass through untouched.
"""
from __future__ import annotations

from dataclasses import dataclass

import orjson

from gateway.protocol.backend import BackendRequest
from backends.text_filters import StopSequenceMatcher, ThinkTagParser
from gateway.protocol.anthropic import (
    ImageBlock, Message, MessagesRequest, StopReason, TextBlock, ThinkingBlock, ToolResultBlock, ToolUseBlock,
)
from gateway.protocol.backend_config import images_hint
from gateway.protocol.errors import invalid
from gateway.protocol.events import (
    Event, Stop, TextDelta, ThinkingDelta, ToolCallDelta, ToolCallEnd, ToolCallStart, UsageReport,
)
from gateway.protocol.tool_text import loaded_text

# Anthropic effort levels → the low / medium / high that reasoning_effort and chat templates know.
EFFORT = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}

FINISH_REASONS: dict[str, StopReason] = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                  "function_call": "tool_use", "content_filter": "end_turn"}


@dataclass(slots=True)
class Dialect:
    """What an OpenAI-style server accepts beyond the common core."""

    top_k: bool = False  # vLLM and llama.cpp take top_k; OpenAI proper rejects it
    vision: bool = False
    # What to tell a client whose images this backend refuses: the remedy differs by backend type.
    no_images: str = images_hint("openai")
    thinking_switch: bool = False  # chat_template_kwargs.enable_thinking (Qwen3-style templates)
    # Thinking of the current tool loop goes back as the assistant's `reasoning_content`, which
    # servers that render the chat template themselves (vLLM, llama.cpp) hand to the template.
    reasoning_history: bool = False
    # The server says which stop string ended generation (vLLM's `stop_reason`, llama.cpp's
    # `__verbose.stopping_word`), so `stop` is forwarded. Other servers stop before the string and
    # do not say which one matched: they are not sent `stop`, and the gateway matches the strings.
    reports_stop_string: bool = False


SYSTEM_MESSAGE_MODES = ("auto", "keep", "merge", "as_user")
# A conversation with a system message after the first turn, as Claude Code sends every request:
# rendered once per server (or model) to learn whether its chat template accepts one (`auto`).
LATE_SYSTEM_PROBE = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                     {"role": "system", "content": "s"}, {"role": "user", "content": "u"}]


def _image_part(block: ImageBlock) -> dict:
    url = block.url if block.url else f"data:{block.media_type};base64,{block.data}"
    return {"type": "image_url", "image_url": {"url": url}}


def _user_content(blocks: list, dialect: Dialect, model: str) -> str | list[dict]:
    """A user message body: one string when it is all text, content parts when images come along."""
    if all(type(b) is TextBlock for b in blocks):
        return "\n".join(b.text for b in blocks)
    if not dialect.vision:
        raise invalid(f"model '{model}' does not accept images on this backend; {dialect.no_images}")
    return [_image_part(b) if type(b) is ImageBlock else {"type": "text", "text": b.text} for b in blocks]


def _tool_message(block: ToolResultBlock) -> tuple[dict, list[ImageBlock]]:
    # A tool_reference is one short line here: the loaded tool is in the tool list (the embedded
    # MLX backend writes its definition in place instead, backends.mlx.messages).
    texts = [b.text if isinstance(b, TextBlock) else loaded_text(b.tool_name, b.available)
             for b in block.content if not isinstance(b, ImageBlock)]
    images = [b for b in block.content if type(b) is ImageBlock]
    text = "\n".join(texts)
    if block.is_error:
        text = "Error: " + text if text else "Error"
    return {"role": "tool", "tool_call_id": block.tool_use_id, "content": text}, images


def _assistant(msg: Message, keep_reasoning: bool) -> dict:
    texts: list[str] = []
    calls: list[dict] = []
    reasoning: list[str] = []
    for b in msg.content:
        if type(b) is TextBlock:
            texts.append(b.text)
        elif type(b) is ToolUseBlock:
            calls.append({"id": b.id, "type": "function",
                          "function": {"name": b.name, "arguments": orjson.dumps(b.input or {}).decode()}})
        elif type(b) is ThinkingBlock and not b.redacted and b.thinking:
            reasoning.append(b.thinking)
        # Thinking never goes into `content`: the backend must not see earlier reasoning as visible text.
    out: dict = {"role": "assistant", "content": "".join(texts)}
    if reasoning and keep_reasoning:
        out["reasoning_content"] = "\n\n".join(reasoning)
    if calls:
        out["tool_calls"] = calls
    return out


def place_system_messages(msgs: list[dict], mode: str) -> list[dict]:
    """Apply a backend's `system_messages` mode to system messages after the first message.

    keep: as they are. merge: their text joins the leading system message. as_user: each becomes
    user text where it stands (joined to a neighbouring user turn), so everything before it, the
    cached prefix, stays byte-identical; for templates that allow a system message only first.
    """
    if mode in ("keep", "auto") or not any(m["role"] == "system" for m in msgs[1:]):
        return msgs
    if mode == "merge":
        late = [m["content"] for m in msgs[1:] if m["role"] == "system"]
        rest = [m for m in msgs[1:] if m["role"] != "system"]
        if msgs[0]["role"] == "system":
            return [{"role": "system", "content": "\n\n".join([msgs[0]["content"], *late])}, *rest]
        return [{"role": "system", "content": "\n\n".join(late)}, msgs[0], *rest]
    out: list[dict] = []
    for i, m in enumerate(msgs):
        if m["role"] == "system" and i > 0:
            m = {"role": "user", "content": m["content"]}
        if out and m["role"] == "user" and out[-1]["role"] == "user" \
                and isinstance(out[-1]["content"], str) and isinstance(m["content"], str):
            out[-1] = {"role": "user", "content": out[-1]["content"] + "\n\n" + m["content"]}
            continue
        out.append(m)
    return out


def to_openai_messages(req: MessagesRequest, dialect: Dialect, model: str, system_messages: str = "keep") -> list[dict]:
    """The chat `messages` array: system first, tool results right after the call they answer."""
    out: list[dict] = []
    if req.system:
        out.append({"role": "system", "content": "\n\n".join(b.text for b in req.system)})
    # Like Anthropic (and Qwen3-style templates), reasoning counts only within the current tool
    # loop: the assistant turns after the last user message that is not just tool results.
    loop_start = 0
    if dialect.reasoning_history:
        for i, msg in enumerate(req.messages):
            if msg.role == "user" and not any(type(b) is ToolResultBlock for b in msg.content):
                loop_start = i + 1
    for i, msg in enumerate(req.messages):
        if msg.role == "assistant":
            out.append(_assistant(msg, dialect.reasoning_history and i >= loop_start))
            continue
        if msg.role == "system":
            out.append({"role": "system", "content": "\n".join(b.text for b in msg.content if type(b) is TextBlock)})
            continue
        rest: list = []
        images: list[ImageBlock] = []
        for b in msg.content:
            if type(b) is ToolResultBlock:
                tool_msg, tool_images = _tool_message(b)
                out.append(tool_msg)
                images.extend(tool_images)
            elif type(b) is not ThinkingBlock:
                rest.append(b)
        rest = images + rest  # images a tool returned go to the model right after the results
        if rest or not any(type(b) is ToolResultBlock for b in msg.content):
            out.append({"role": "user", "content": _user_content(rest, dialect, req.model)})
    return place_system_messages(out, system_messages)


def thinking_on(req: MessagesRequest) -> bool:
    """The template's thinking switch: thinking requested, except adaptive thinking at low effort,
    where Claude models mostly answer without thinking too."""
    thinking = req.thinking
    if thinking is None or not thinking.enabled:  # req.thinking_enabled, spelled out for the narrowing
        return False
    return not (thinking.type == "adaptive" and req.effort == "low")


def template_kwargs(req: MessagesRequest) -> dict:
    """Chat-template variables for the request: the thinking switch and, when given, the effort
    (templates such as gpt-oss read `reasoning_effort`; others ignore it)."""
    kwargs: dict = {"enable_thinking": thinking_on(req)}
    effort = EFFORT.get(req.effort or "")
    if effort:
        kwargs["reasoning_effort"] = effort
    return kwargs


def to_openai_tools(req: MessagesRequest) -> list[dict]:
    return [{"type": "function", "function": {"name": t.name, "description": t.description,
                                              "parameters": t.input_schema}} for t in req.tools]


def to_openai(breq: BackendRequest, dialect: Dialect, extra_body: dict | None = None,
              system_messages: str = "keep") -> dict:
    """The full chat-completions body, streamed (backends.chat_completion.whole_body asks for one piece)."""
    req = breq.request
    body: dict = {
        "model": breq.model,
        "messages": to_openai_messages(req, dialect, breq.model, system_messages),
        "max_tokens": breq.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if req.tools:
        body["tools"] = to_openai_tools(req)
    if req.tool_choice is not None and req.tools:
        tc = req.tool_choice
        body["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}.get(tc.type) or \
            {"type": "function", "function": {"name": tc.name}}
        if tc.disable_parallel_tool_use:
            body["parallel_tool_calls"] = False
    if req.stop_sequences and dialect.reports_stop_string:
        body["stop"] = req.stop_sequences
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if req.top_k is not None and dialect.top_k:
        body["top_k"] = req.top_k
    if req.json_schema is not None:
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "output", "schema": req.json_schema, "strict": True}}
    if dialect.thinking_switch:
        # Servers that render the template (vLLM, llama.cpp) take the effort both ways: vLLM
        # passes `reasoning_effort` to reasoning models, templates read the kwarg.
        body["chat_template_kwargs"] = template_kwargs(req)
        if "reasoning_effort" in body["chat_template_kwargs"]:
            body["reasoning_effort"] = body["chat_template_kwargs"]["reasoning_effort"]
    if extra_body:
        body.update(extra_body)
    return body


class UpstreamStreamError(Exception):
    """An error object that arrived inside the upstream's event stream."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class ChunkTranslator:
    """Per-request state turning OpenAI stream chunks into internal events."""

    def __init__(self, req: MessagesRequest):
        self.think = ThinkTagParser()
        self.stops = StopSequenceMatcher(req.stop_sequences) if req.stop_sequences else None
        self.stop_sequences = req.stop_sequences
        self._tool_index: int | None = None
        self._finish: str | None = None
        self._upstream_stop: str | None = None
        self.done = False  # a stop sequence fired: read no further

    def feed(self, chunk: dict) -> list[Event]:
        """Events for one decoded chunk."""
        if "error" in chunk and not chunk.get("choices"):
            err = chunk["error"]
            message = err.get("message") if isinstance(err, dict) else str(err)
            status = err.get("code") if isinstance(err, dict) and isinstance(err.get("code"), int) else None
            raise UpstreamStreamError(message or "upstream error", status)
        out: list[Event] = []
        choices = chunk.get("choices")
        if choices:
            choice = choices[0]
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning:
                out.append(ThinkingDelta(reasoning))
            content = delta.get("content")
            if content:
                self._text(content, out)
            calls = delta.get("tool_calls")
            if calls:
                self._tool_calls(calls, out)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
                # vLLM's stop_reason, SGLang's matched_stop: the stop string that ended generation.
                for stop in (choice.get("stop_reason"), choice.get("matched_stop")):
                    if isinstance(stop, str) and stop in self.stop_sequences:
                        self._upstream_stop = stop
        verbose = chunk.get("__verbose")  # llama.cpp with `verbose`: the final result says why it stopped
        if isinstance(verbose, dict) and verbose.get("stop_type") == "word":
            word = verbose.get("stopping_word")
            if isinstance(word, str) and word in self.stop_sequences:
                self._upstream_stop = word
        usage = chunk.get("usage")
        if usage:
            details = usage.get("prompt_tokens_details") or {}
            out.append(UsageReport(input_tokens=usage.get("prompt_tokens"),
                                   output_tokens=usage.get("completion_tokens"),
                                   cache_read_tokens=details.get("cached_tokens")))
        return out

    def _text(self, content: str, out: list[Event]) -> None:
        # Whitespace some servers send alongside tool-call fragments must not end the open call
        # (its next fragment would start a nameless one); MessageStream holds that whitespace.
        if self._tool_index is not None and not content.isspace():
            out.append(ToolCallEnd())
            self._tool_index = None
        for ev in self.think.feed(content):
            if type(ev) is TextDelta and self.stops is not None:
                self._stop_filtered(self.stops, ev.text, out)
            else:
                out.append(ev)

    def _stop_filtered(self, stops: StopSequenceMatcher, text: str, out: list[Event]) -> None:
        if self.done:
            return
        safe = stops.feed(text)
        if safe:
            out.append(TextDelta(safe))
        if stops.matched is not None:
            self.done = True

    def _tool_calls(self, calls: list[dict], out: list[Event]) -> None:
        for call in calls:
            index = call.get("index", 0)
            fn = call.get("function") or {}
            if index != self._tool_index and (fn.get("name") or self._tool_index is None):
                if self._tool_index is not None:
                    out.append(ToolCallEnd())
                self._tool_index = index
                out.append(ToolCallStart(name=fn.get("name") or "", id=call.get("id")))
            args = fn.get("arguments")
            if args:
                out.append(ToolCallDelta(args))

    def finish(self) -> list[Event]:
        """Trailing events once the upstream stream ended (or a stop sequence cut it)."""
        out: list[Event] = []
        for ev in self.think.flush():
            if type(ev) is TextDelta and self.stops is not None:
                self._stop_filtered(self.stops, ev.text, out)
            else:
                out.append(ev)
        if self.stops is not None and not self.done:
            tail = self.stops.flush()
            if tail:
                out.append(TextDelta(tail))
        if self._tool_index is not None and self._finish != "length":
            # A call still open at a length stop is unfinished: it stays open, so it is not
            # presented as a complete call.
            out.append(ToolCallEnd())
            self._tool_index = None
        matched = (self.stops.matched if self.stops else None) or self._upstream_stop
        if matched is not None:
            out.append(Stop("stop_sequence", matched))
        else:
            out.append(Stop(FINISH_REASONS.get(self._finish or "stop", "end_turn")))
        return out
