"""HTTP requests written byte for byte (what no client library would send: raw header bytes, a
request target sent unquoted), for tests that attack the gateway's parser and middleware."""
from __future__ import annotations

import asyncio


def hostport(url: str) -> tuple[str, int]:
    """(host, port) of an http://host:port URL."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


async def raw_request(url: str, data: bytes, timeout: float = 10) -> tuple[int, dict, bytes]:
    """Send raw bytes, read until the server closes: (status, lowercased headers, body)."""
    reader, writer = await asyncio.open_connection(*hostport(url))
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
    return int(lines[0].split()[1]), headers, rest


def get_request(target: str, host: str = "127.0.0.1") -> bytes:
    """A GET of `target` exactly as written (no re-quoting), closing the connection after."""
    return f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode("latin-1")


def post_request(path: str, payload: bytes, header: bytes = b"", host: str = "127.0.0.1") -> bytes:
    """A JSON POST carrying `header` (one raw header line, or none) as given."""
    extra = header + b"\r\n" if header else b""
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n".encode("latin-1") + extra
            + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(payload) + payload)
