"""Configured secrets (the gateway token, backend keys, URL passwords) cut out of any text that
leaves the process: error messages, /health, console lines."""
from __future__ import annotations

REDACTED = "[REDACTED]"
# A secret cut short where a message truncates what it quotes (aiohttp shows the first 100 bytes
# of an over-long header, then "..."): its first characters alone are still worth hiding.
_MIN_PREFIX = 8
_CUT_MARKS = ("...", "…")


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """`text` with every secret, and any leading part of one cut off by an ellipsis, made [REDACTED]."""
    for s in secrets:
        if s and s in text:
            text = text.replace(s, REDACTED)
    if any(mark in text for mark in _CUT_MARKS):
        for s in secrets:
            for n in range(len(s) - 1, _MIN_PREFIX - 1, -1):
                for mark in _CUT_MARKS:
                    if s[:n] + mark in text:
                        text = text.replace(s[:n] + mark, REDACTED + mark)
    return text
