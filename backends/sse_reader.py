"""Server-sent-event lines from an upstream's byte stream, in linear time and bounded memory."""
from __future__ import annotations

import codecs
from collections.abc import AsyncIterator

import httpx2


class LineTooLong(Exception):
    """The upstream sent a line longer than the reader accepts (a broken or hostile server)."""

    def __init__(self, limit: int):
        super().__init__(f"a stream line longer than {limit} bytes")
        self.limit = limit


async def sse_reads(resp: httpx2.Response, max_line: int) -> AsyncIterator[list[bytes]]:
    """The complete lines of each network read, as bytes, cut where SSE cuts them (CRLF, LF or CR)
    and nowhere else; LineTooLong once a line grows past `max_line` bytes.

    httpx's aiter_lines uses str.splitlines, which also cuts at U+2028, U+2029 and U+0085: JSON
    carries those unescaped inside strings, so a chunk holding one arrived in two pieces. Bytes also
    skip a text-decoding pass per chunk; a body declared in another charset is transcoded to UTF-8.
    The unfinished line is kept as a list of reads and joined once when it ends: gluing each read
    onto it would copy it again per read, quadratic in its length.
    """
    charset = resp.encoding or "utf-8"
    transcode = codecs.lookup(charset).name != "utf-8"
    pending: list[bytes] = []  # reads of the unfinished line; none holds a line break
    held = 0  # their total length
    skip_lf = False  # the last read ended in CR: an LF opening the next one completes that CRLF
    async for data in resp.aiter_bytes():
        if skip_lf:
            skip_lf = False
            if data[:1] == b"\n":
                data = data[1:]
                if not data:
                    continue
        cut = max(data.rfind(b"\n"), data.rfind(b"\r"))
        if cut < 0:
            held += len(data)
            if held > max_line:
                raise LineTooLong(max_line)
            pending.append(data)
            continue
        end = cut - 1 if data[cut] == 0x0A and cut > 0 and data[cut - 1] == 0x0D else cut
        block, rest = data[:end], data[cut + 1:]
        if data[cut] == 0x0D and not rest:
            skip_lf = True
        if b"\r" in block:
            block = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if pending:
            first_break = block.find(b"\n")
            if held + (first_break if first_break >= 0 else len(block)) > max_line:
                raise LineTooLong(max_line)
            pending.append(block)
            block = b"".join(pending)
        lines = block.split(b"\n")
        if len(block) > max_line and max(map(len, lines)) > max_line:  # one read holding a whole long line
            raise LineTooLong(max_line)
        held = len(rest)
        if held > max_line:
            raise LineTooLong(max_line)
        pending = [rest] if rest else []
        yield [line.decode(charset, "replace").encode() for line in lines] if transcode else lines
    if pending:
        line = b"".join(pending)
        yield [line.decode(charset, "replace").encode() if transcode else line]
