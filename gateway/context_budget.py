"""The context budget: a request that does not fit its backend's window is edited until it does.

Nothing happens to a request that fits: its prompt reaches the backend byte for byte, so the
backend's prefix cache works as if the gateway were not there. Only a request that would
otherwise fail is edited, in this order, each step only while the prompt still does not fit:

1. `shorten_tool_descriptions` — every tool description longer than DESCRIPTION_CHARS is cut at a
   paragraph or sentence end before it (the summary and first usage notes stay; the schema is
   untouched, so calls stay valid).
2. `drop_thinking` — thinking of every earlier assistant turn in the history is dropped (most
   chat templates drop it anyway). The latest turn's thinking goes too: kept, it would be dropped
   on the next turn, changing the prompt's tail every turn.
3. `clear_tool_results` — only where the backend opts in (`context_edits = ["clear_tool_results"]`):
   the oldest tool results become a short placeholder, keeping at least the latest
   `keep_tool_results`; this is the API's clear_tool_uses edit (gateway.context_edits does it).

Each edit is a fixed function of the conversation, never "just enough to fit", so the prompt's
prefix stays the same from one turn to the next: descriptions are cut the same way every turn
(the tool block a template renders first keeps its bytes), earlier thinking stays dropped, and
tool results are cleared on a grid: the cleared count is the smallest multiple of CLEAR_STEP
that fits (a smaller step when the window holds fewer results than that beyond the kept ones), so
it moves, and invalidates the cache from the first newly cleared result on, once every few turns
instead of on every turn. Clearing more than needed costs some history; clearing exactly enough
would re-prefill the latest results on every turn. Conversations only grow between compactions,
so a session that needed an edit keeps needing it: the edited prefix is the one that stays cached.

A request that still does not fit goes, unedited, to the backend named by `fallback_on_overflow`
when that one has a larger window (which applies its own budget), else on to gateway.max_tokens,
which answers the 400 "prompt is too long" that makes Claude Code compact.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import structlog

from gateway.protocol.backend import Backend, BackendRequest
from gateway.protocol.anthropic import ClearToolUsesEdit, MessagesRequest, ToolUseBlock
from gateway.context_edits import clear_thinking, clear_tool_uses
from gateway.max_tokens import ESTIMATE_MARGIN
from gateway.protocol.tokens import estimate_tokens

log = structlog.get_logger("gateway.context_budget")

DESCRIPTION_CHARS = 1200  # a tool description beyond this is shortened
SHORTENED = "\n[description shortened to fit the context window]"
CLEAR_STEP = 4  # tool results are cleared this many at a time
MIN_OUTPUT_TOKENS = 1024  # room kept for the answer: the smaller of max_tokens and max(this, window/8)
MAX_COUNTS = 3  # tokenizer calls per request while choosing edits
_SENTENCE_END = re.compile(r"[.!?:](?=\s)")


@dataclass(slots=True)
class Budget:
    """What the budget did to one request: the edits (for the log line) and where it is sent."""

    backend: Backend
    request: BackendRequest
    edits: list[dict]
    fallback: dict | None = None


async def fit_context(backend: Backend, breq: BackendRequest, backends: dict[str, Backend]) -> Budget:
    """`breq` edited to fit `backend`'s window (or moved to its overflow fallback); unchanged when it fits."""
    budget = await _fit(backend, breq)
    if budget is not None:
        return budget
    target = _fallback(backend, backends)
    if target is not None and (moved := await _move(backend, target, breq)) is not None:
        return moved
    return Budget(backend, breq, [])  # gateway.max_tokens answers "prompt is too long"


async def _fit(backend: Backend, breq: BackendRequest) -> Budget | None:
    """The request as it fits `backend` (edited only when needed), or None when no edit makes it fit."""
    context = await backend.context_window(breq.model)
    if context is None:
        return Budget(backend, breq, [])
    reserve = min(_max_tokens(backend, breq), max(MIN_OUTPUT_TOKENS, context // 8))
    estimate = estimate_tokens(breq.request)
    if estimate * ESTIMATE_MARGIN + reserve <= context:
        return Budget(backend, breq, [])
    counted = await _count(backend, breq)
    if counted + reserve <= context:
        return Budget(backend, breq, [])
    scale = counted / max(1, estimate)  # backend tokens per estimated token, for the edited versions
    counts = 1
    edits: list[dict] = []
    req, tokens = breq.request, estimate

    def fits(edited: MessagesRequest) -> bool:
        return estimate_tokens(edited) * scale + reserve <= context

    for name, candidates in _steps(backend):
        strongest = None  # this step at full strength, the base of the next step
        for edited, detail in candidates(req, fits):
            edited_tokens = estimate_tokens(edited)
            entry = {"edit": name, **detail, "tokens_saved": round((tokens - edited_tokens) * scale)}
            strongest = (edited, edited_tokens, entry)
            if edited_tokens * scale + reserve > context:
                continue
            candidate = dataclasses.replace(breq, request=edited)
            if counts < MAX_COUNTS:  # confirm with the backend's own tokenizer where it has one
                counts += 1
                exact = await _count(backend, candidate)
                if exact + reserve > context:
                    scale = exact / max(1, edited_tokens)
                    continue
            return Budget(backend, candidate, edits + [entry])
        if strongest is not None:
            req, tokens, entry = strongest
            edits.append(entry)
    log.info("context_budget_exhausted", backend=backend.name, prompt_tokens=counted, context_window=context,
             edits=[e["edit"] for e in edits])
    return None


def _steps(backend: Backend):
    """The edits in order: (name, candidates(req, fits) → [(edited request, log detail)], mildest first)."""
    steps = [("shorten_tool_descriptions", lambda req, fits: _shorten_descriptions(req)),
             ("drop_thinking", lambda req, fits: _drop_thinking(req))]
    if "clear_tool_results" in backend.config.context_edits:
        keep = backend.config.keep_tool_results
        steps.append(("clear_tool_results", lambda req, fits: _clear_results(req, keep, fits)))
    return steps


def _shorten_descriptions(req: MessagesRequest) -> list[tuple[MessagesRequest, dict]]:
    tools, shortened = [], 0
    for tool in req.tools:
        if len(tool.description) > DESCRIPTION_CHARS:
            tool = dataclasses.replace(tool, description=shorten_description(tool.description))
            shortened += 1
        tools.append(tool)
    return [(dataclasses.replace(req, tools=tools), {"tools": shortened})] if shortened else []


def shorten_description(text: str) -> str:
    """`text` cut to DESCRIPTION_CHARS at the last paragraph (else sentence) end in its second half."""
    head = text[:DESCRIPTION_CHARS]
    cut = head.rfind("\n\n")
    if cut < DESCRIPTION_CHARS // 2:
        ends = [m.end() for m in _SENTENCE_END.finditer(head)]
        cut = ends[-1] if ends and ends[-1] >= DESCRIPTION_CHARS // 2 else DESCRIPTION_CHARS
    return head[:cut].rstrip() + SHORTENED


def _drop_thinking(req: MessagesRequest) -> list[tuple[MessagesRequest, dict]]:
    messages, turns = clear_thinking(req.messages, keep_turns=0)
    return [(dataclasses.replace(req, messages=messages), {"turns": turns})] if turns else []


def _clear_results(req: MessagesRequest, keep: int, fits) -> list[tuple[MessagesRequest, dict]]:
    """Clearing the oldest results: the fewest that fit, rounded up to the clearing grid (see the
    module docstring); the most that may be cleared (all but `keep`) after it, in case that falls short."""
    uses = sum(1 for m in req.messages if m.role == "assistant" for b in m.content if type(b) is ToolUseBlock)
    most = uses - keep
    if most <= 0:
        return []

    def cleared(n: int) -> MessagesRequest:
        edited = clear_tool_uses(req, ClearToolUsesEdit(trigger_type="tool_uses", trigger_value=0, keep=uses - n))
        return edited[0] if edited is not None else req

    low, high = 1, most  # the fewest that fit, by bisection (the prompt shrinks as n grows)
    if not fits(cleared(high)):
        low = high
    while low < high:
        mid = (low + high) // 2
        if fits(cleared(mid)):
            high = mid
        else:
            low = mid + 1
    # Grid step: CLEAR_STEP, or less when the window holds fewer results beyond `keep` than that
    # (a grid point must fall between the fewest that fit and the most allowed).
    step = max(1, min(CLEAR_STEP, most - low + 1))
    counts = dict.fromkeys([min(most, -(-low // step) * step), most])
    out = []
    for n in counts:
        edited = cleared(n)
        if edited is not req:
            out.append((edited, {"tool_results": n, "kept": uses - n}))
    return out


def _max_tokens(backend: Backend, breq: BackendRequest) -> int:
    cap = backend.config.max_output_tokens
    return min(breq.max_tokens, cap) if cap else breq.max_tokens


async def _count(backend: Backend, breq: BackendRequest) -> int:
    """Prompt tokens as gateway.max_tokens judges them (an estimate gets its 25% margin)."""
    count = await backend.counted(breq)
    return count.tokens if count.exact else int(count.tokens * 1.25)


def _fallback(backend: Backend, backends: dict[str, Backend]) -> Backend | None:
    name = backend.config.fallback_on_overflow
    return backends.get(name) if name else None


async def _move(source: Backend, target: Backend, breq: BackendRequest) -> Budget | None:
    """`breq` on the overflow backend, when that one's window is larger and the prompt fits there."""
    model = target.config.model or next((m.id for m in await target.models()), None)
    if model is None:
        return None
    theirs, ours = await target.context_window(model), await source.context_window(breq.model)
    if ours is not None and theirs is not None and theirs <= ours:
        return None
    moved = dataclasses.replace(breq, model=model)
    budget = await _fit(target, moved)
    if budget is None:
        return None
    budget.fallback = {"from": source.name, "to": target.name, "reason": "context_overflow", "context_window": ours}
    return budget
