"""How the OpenAI-style backends cut the upstream's SSE body into lines.

SSE lines end at CRLF, LF or CR and nowhere else. JSON strings carry U+2028, U+2029 and U+0085
unescaped, so a splitter that also breaks there (str.splitlines) would cut such a chunk in two.
"""
from __future__ import annotations

import pytest

from tests.compat_helpers import body
from tests.sse_checks import open_stream
from tests.upstream import Script

FINISH = 'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}'


def _chunk(text: str) -> str:
    return 'data: {"choices":[{"index":0,"delta":{"content":"%s"},"finish_reason":null}]}' % text


@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\u0085"], ids=["LS", "PS", "NEL"])
async def test_unicode_line_separators_inside_json_stay_text(stack, sep):
    """A raw U+2028/U+2029/U+0085 inside a chunk's JSON string reaches the client as text."""
    up, gw = stack
    up.push(Script(raw_lines=[_chunk(f"before{sep}after"), _chunk(" end"), FINISH, "data: [DONE]"]))
    s = await open_stream(gw, body())
    assert s.text == f"before{sep}after end"
    assert s.error is None


async def test_crlf_and_cr_line_endings(stack):
    """Upstreams that end SSE lines with CRLF or a bare CR are read like LF ones."""
    up, gw = stack
    crlf = _chunk("one ") + "\r"  # the upstream appends "\n\n": "\r\n" ends the line, "\n" the event
    cr_only = _chunk("two ") + "\r\r" + _chunk("three") + "\r\r" + FINISH + "\r\rdata: [DONE]"
    up.push(Script(raw_lines=[crlf, cr_only]))
    s = await open_stream(gw, body())
    assert s.text == "one two three"
    assert s.error is None
