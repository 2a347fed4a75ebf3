"""Comparing two answers (lists of Anthropic content blocks): how similar the text is, whether the
same tools were called with the same arguments, and a diff a person can read."""
from __future__ import annotations

import difflib
import textwrap
from dataclasses import asdict, dataclass, field

import orjson

# SequenceMatcher is quadratic in the worst case: compare at most this much text per answer.
_MAX_COMPARED = 20_000
_WRAP = 100


@dataclass
class AnswerDiff:
    """How the new answer differs from the recorded one."""

    text_similarity: float | None = None  # 0..1; None when neither answer has text
    tool_calls: str = "same"  # same | changed_tools | changed_arguments
    changed: bool = False
    diff: list[str] = field(default_factory=list)  # unified-diff lines, without the file header

    def to_dict(self) -> dict:
        return asdict(self)


def answer_text(blocks: list[dict] | None) -> str:
    """The text blocks of an answer, joined."""
    return "".join(b.get("text") or "" for b in blocks or [] if isinstance(b, dict) and b.get("type") == "text")


def tool_calls(blocks: list[dict] | None) -> list[tuple[str, object]]:
    """(name, arguments) of each tool call, in order; a cut call's arguments are its partial text."""
    out = []
    for b in blocks or []:
        if isinstance(b, dict) and b.get("type") == "tool_use":
            out.append((b.get("name") or "?", b["partial_json"] if b.get("incomplete") else b.get("input")))
    return out


def _lines(blocks: list[dict] | None) -> list[str]:
    """An answer as lines to diff: its text wrapped, then one line per tool call."""
    out: list[str] = []
    for para in answer_text(blocks).splitlines() or [""]:
        out += textwrap.wrap(para, _WRAP, drop_whitespace=False, replace_whitespace=False) or [""]
    if out == [""]:
        out = []
    for name, args in tool_calls(blocks):
        shown = args if isinstance(args, str) else orjson.dumps(args, option=orjson.OPT_SORT_KEYS).decode()
        out.append(f"[tool_use {name}] {shown}")
    return out


def compare(recorded: list[dict] | None, new: list[dict] | None) -> AnswerDiff:
    """Compare two answers; `changed` means any difference in text or tool calls."""
    d = AnswerDiff()
    a, b = answer_text(recorded), answer_text(new)
    if a or b:
        d.text_similarity = round(difflib.SequenceMatcher(None, a[:_MAX_COMPARED], b[:_MAX_COMPARED],
                                                          autojunk=False).ratio(), 3)
    ta, tb = tool_calls(recorded), tool_calls(new)
    if [n for n, _ in ta] != [n for n, _ in tb]:
        d.tool_calls = "changed_tools"
    elif ta != tb:
        d.tool_calls = "changed_arguments"
    d.changed = a != b or d.tool_calls != "same"
    if d.changed:
        lines = list(difflib.unified_diff(_lines(recorded), _lines(new), n=1, lineterm=""))[2:]  # no ---/+++
        # Hunk headers number wrapped lines nobody sees: a "…" between hunks says enough.
        d.diff = [("…" if line.startswith("@@") else line) for line in lines][1:]
    return d
