"""Incremental filters over generated text: inline <think> tags and stop sequences.

Both see text in arbitrary fragments (a tag or a stop string can be split across chunks at any
character) and hold back only the few characters that could still turn out to be a match.
"""
from __future__ import annotations

from gateway.protocol.events import TextDelta, ThinkingDelta

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"


def _partial_suffix(buf: str, tag: str) -> int:
    """Length of the longest suffix of `buf` that is a proper prefix of `tag`."""
    # Only a suffix opening with the tag's first character can match: find those (in C) instead of
    # trying every length, since this runs on every streamed text fragment.
    first = tag[:1]
    i = buf.find(first, max(0, len(buf) - len(tag) + 1)) if first else -1
    while i >= 0:
        if tag.startswith(buf[i:]):
            return len(buf) - i
        i = buf.find(first, i + 1)
    return 0


class ThinkTagParser:
    """Splits text containing <think>…</think> into ThinkingDelta and TextDelta events."""

    # Not mlx_lm.generate.TextStateMachine: remote backends split with this too (no mlx there), and
    # it drops the template's whitespace after a tag, which that machine passes on.

    def __init__(self, start_in_thinking: bool = False):
        self.thinking = start_in_thinking
        # Held back: whitespace inside thinking (in pieces, joined once: a stream of nothing but
        # whitespace must not copy all of it again per chunk), then a possible partial tag.
        self._ws: list[str] = []
        self._tag = ""
        self._strip_leading = start_in_thinking  # whitespace right after a tag is template noise

    def feed(self, text: str) -> list[TextDelta | ThinkingDelta]:
        """Events for one fragment of generated text."""
        if not self._tag:
            if not self.thinking and "<" not in text and not self._strip_leading:
                return [TextDelta(text)] if text else []
            if self.thinking and text.isspace():
                self._ws.append(text)
                return []
        buf = "".join(self._ws) + self._tag + text
        self._ws, self._tag = [], ""
        out: list[TextDelta | ThinkingDelta] = []
        while buf:
            tag = CLOSE_TAG if self.thinking else OPEN_TAG
            pos = buf.find(tag)
            if pos < 0:
                keep = _partial_suffix(buf, tag)
                body, self._tag = (buf[:-keep], buf[-keep:]) if keep else (buf, "")
                if self.thinking:
                    # Trailing whitespace before </think> is template noise: hold it until
                    # more thinking shows it was inside the reasoning after all.
                    stripped = body.rstrip()
                    if len(stripped) < len(body):
                        self._ws = [body[len(stripped):]]
                    body = stripped
                self._emit(body, out)
                break
            self._emit(buf[:pos] if not self.thinking else buf[:pos].rstrip(), out)
            buf = buf[pos + len(tag):]
            self.thinking = not self.thinking
            self._strip_leading = True
        return out

    def flush(self) -> list[TextDelta | ThinkingDelta]:
        """Whatever was held back, at the end of generation."""
        held = "".join(self._ws) + self._tag
        self._ws, self._tag = [], ""
        out: list[TextDelta | ThinkingDelta] = []
        if held and not (self.thinking and held.isspace()):
            self._emit(held, out)
        return out

    def _emit(self, body: str, out: list) -> None:
        if self._strip_leading:
            body = body.lstrip()
            if not body:
                return
            self._strip_leading = False
        if body:
            out.append(ThinkingDelta(body) if self.thinking else TextDelta(body))


class StopSequenceMatcher:
    """Cuts generated text at the first requested stop sequence, even one split across chunks."""

    # Not mlx-lm's: its StopSequences match token ids (a string tokenized another way slips past)
    # and its TextStateMachine strips stop words and goes on, where the API must stop and say which.

    def __init__(self, stop_sequences: list[str]):
        self.stops = [s for s in stop_sequences if s]
        self._buf = ""
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        """The text that is safe to emit now; sets `matched` when a stop sequence fired."""
        if self.matched is not None:
            return ""
        buf = self._buf + text
        first, which = -1, None
        for s in self.stops:
            pos = buf.find(s)
            if pos >= 0 and (first < 0 or pos < first):
                first, which = pos, s
        if which is not None:
            self.matched = which
            self._buf = ""
            return buf[:first]
        keep = max(_partial_suffix(buf, s) for s in self.stops) if self.stops else 0
        if keep:
            self._buf = buf[-keep:]
            return buf[:-keep]
        self._buf = ""
        return buf

    def flush(self) -> str:
        """Held-back text once generation ended without a match."""
        out, self._buf = self._buf, ""
        return out if self.matched is None else ""
