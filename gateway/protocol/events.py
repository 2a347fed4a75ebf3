"""The internal event stream every backend yields; the SSE encoder and the aggregator consume it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from gateway.protocol.anthropic import StopReason


@dataclass(slots=True)
class Started:
    """The backend accepted the request; content may still take a while (prefill).

    `whole`: the answer then arrives in one piece (a server asked for a non-streamed answer), so
    there is no first token to time."""

    whole: bool = False


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ThinkingDelta:
    thinking: str


@dataclass(slots=True)
class ThinkingSignature:
    """A signature the backend issued for the current thinking block (else the gateway signs it)."""

    signature: str


@dataclass(slots=True)
class ToolCallStart:
    """A tool call begins. `id` is the backend's call id: /v1/chat/completions answers keep it when it is
    unique in the answer; Anthropic answers always get a fresh toolu_ id."""

    name: str
    id: str | None = None


@dataclass(slots=True)
class ToolCallDelta:
    partial_json: str


@dataclass(slots=True)
class ToolCallEnd:
    """The call is complete. A backend that checks calls may revise it here: `arguments` replaces the
    fragments sent (repaired JSON), or `as_text` withdraws the call and shows this text instead."""

    arguments: str | None = None
    as_text: str | None = None


@dataclass(slots=True)
class UsageReport:
    """Token counts as the backend reports them; None means 'not reported'."""

    input_tokens: int | None = None  # total prompt tokens, cached ones included
    output_tokens: int | None = None
    cache_read_tokens: int | None = None


@dataclass(slots=True)
class Stop:
    reason: StopReason
    stop_sequence: str | None = None


@dataclass(slots=True)
class EngineStats:
    """Measurements of an in-process engine for the request log; never sent to the client."""

    prefill_tps: float | None = None  # prompt tokens computed (not cached) per second
    decode_tps: float | None = None  # generated tokens per second after the first
    peak_memory_mb: float | None = None  # the engine's peak memory so far


Event = Union[Started, TextDelta, ThinkingDelta, ThinkingSignature, ToolCallStart, ToolCallDelta,
              ToolCallEnd, UsageReport, Stop, EngineStats]
