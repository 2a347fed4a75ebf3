"""Generated text → internal events for the MLX backend: thinking, tool calls, stop sequences."""
from __future__ import annotations

from backends.text_filters import StopSequenceMatcher
from backends.tool_parsers import ModelOutputParser, ParserFactory, PassthroughParser
from gateway.protocol.anthropic import MessagesRequest
from gateway.protocol.events import Event, TextDelta, ToolCallStart


class OutputPipeline:
    """Per-response state: `<think>` split, tool-call parsing, then stop sequences on visible text."""

    # The same parsers as text tool calls from remote servers (not mlx-lm's, see backends.tool_parsers):
    # an embedded and a remote model writing the same text give the client the same events.

    def __init__(self, req: MessagesRequest, parser_factory: ParserFactory, *, tools: bool,
                 start_in_thinking: bool):
        schemas = {t.name: t.input_schema for t in req.tools}
        calls = parser_factory(schemas) if tools else PassthroughParser()
        self.parser = ModelOutputParser(calls, start_in_thinking=start_in_thinking)
        self.stops = StopSequenceMatcher(req.stop_sequences) if req.stop_sequences else None

    @property
    def matched(self) -> str | None:
        """The stop sequence that ended the answer, if one did."""
        return self.stops.matched if self.stops is not None else None

    def feed(self, text: str) -> list[Event]:
        """Events for one detokenized fragment (nothing once a stop sequence fired)."""
        if self.matched is not None:
            return []
        return self._filter(self.parser.feed(text))

    def finish(self, *, cut: bool) -> list[Event]:
        """Everything still held back; `cut`: generation ended early (max_tokens, stop sequence)."""
        out = self._filter(self.parser.finish(cut=cut)) if self.matched is None else []
        if self.stops is not None and self.matched is None:
            tail = self.stops.flush()
            if tail:
                out.append(TextDelta(tail))
        return out

    def _filter(self, events: list[Event]) -> list[Event]:
        if self.stops is None:
            return events
        out: list[Event] = []
        for ev in events:
            if self.matched is not None:
                break
            if type(ev) is TextDelta:
                safe = self.stops.feed(ev.text)
                if safe:
                    out.append(TextDelta(safe))
            else:
                if type(ev) is ToolCallStart:
                    tail = self.stops.flush()  # a call interrupts the text: held characters are final
                    if tail:
                        out.append(TextDelta(tail))
                out.append(ev)
        return out
