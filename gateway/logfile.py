"""An append-only line file written by one background thread, with size-based rotation.

Callers hand over whole lines (bytes ending in a newline) and never wait on the disk. The
thread writes each line with a single `os.write` on an O_APPEND descriptor, so lines never
interleave and a crash can cut at most the line being written: every earlier line is already
whole in the file (the page cache survives a process crash).

Rotation (when `max_bytes` > 0): before a line would push the file past `max_bytes`, the file
becomes PATH.1 (PATH.1.gz when compressing), older ones shift to PATH.2 … PATH.keep, and the
oldest is dropped. log_replay reads the same names back, oldest first.
"""
from __future__ import annotations

import gzip
import os
import queue
import re
import shutil
import sys
import threading
from pathlib import Path

_STOP = object()


class RotatingFile:
    """The file itself: size tracking, appends, rotation. Used from one thread only."""

    def __init__(self, path: str | Path, max_bytes: int = 0, keep: int = 5, compress: bool = False):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self.compress = compress
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = self._open()
        self.size = os.fstat(self._fd).st_size

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(self, line: bytes) -> None:
        """Append one whole line, rotating first when it would overflow the size limit."""
        if self.max_bytes and self.size and self.size + len(line) > self.max_bytes:
            self.rotate()
        view = memoryview(line)
        while view:  # a regular file writes everything at once; loop only for the odd short write
            n = os.write(self._fd, view)
            view = view[n:]
        self.size += len(line)

    def rotate(self) -> None:
        """PATH → PATH.1[.gz], PATH.i → PATH.i+1, dropping anything beyond `keep`."""
        os.close(self._fd)
        base = str(self.path)
        for suffix in ("", ".gz"):
            _remove(f"{base}.{self.keep}{suffix}")
        for i in range(self.keep - 1, 0, -1):
            for suffix in ("", ".gz"):
                if os.path.exists(f"{base}.{i}{suffix}"):
                    os.replace(f"{base}.{i}{suffix}", f"{base}.{i + 1}{suffix}")
        if self.keep >= 1:
            os.replace(base, f"{base}.1")
            if self.compress:
                _gzip_file(f"{base}.1")
        else:
            _remove(base)
        self._drop_beyond_keep()
        self._fd = self._open()
        self.size = os.fstat(self._fd).st_size

    def _drop_beyond_keep(self) -> None:
        # Left over from a run with a larger `keep`, or a compression a crash interrupted
        # (PATH.N.gz.tmp; its PATH.N is still there): they would otherwise never go away.
        pattern = re.compile(re.escape(self.path.name) + r"\.(\d+)(\.gz|\.gz\.tmp)?$")
        for entry in self.path.parent.iterdir():
            m = pattern.match(entry.name)
            if m and (int(m.group(1)) > self.keep or m.group(2) == ".gz.tmp"):
                _remove(str(entry))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _gzip_file(path: str) -> None:
    """path → path.gz, atomically (a reader never sees a half-written .gz under the final name)."""
    tmp = path + ".gz.tmp"
    # Level 1: JSON logs still shrink several-fold at a third of level 6's CPU, which the gateway
    # process shares with serving (bench/run.py: 1.1 → 0.4 ms per Claude Code request).
    with open(path, "rb") as src, gzip.open(tmp, "wb", compresslevel=1) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(tmp, path + ".gz")
    os.remove(path)


class LineWriter:
    """Queues lines for a RotatingFile and writes them from a daemon thread, in order."""

    def __init__(self, file: RotatingFile):
        self.file = file
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._failed = False

    def put(self, line: bytes) -> None:
        """Hand over one line; returns at once."""
        if self._closed:
            return
        if self._thread is None:
            with self._lock:  # started on first use: `check` and `models` never start a thread
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
                    self._thread.start()
        self._queue.put(line)

    def _run(self) -> None:
        while True:
            line = self._queue.get()
            if line is _STOP:
                return
            try:
                self.file.write(line)
            except OSError as exc:  # disk full, permissions: report once, keep serving requests
                if not self._failed:
                    self._failed = True
                    print(f"claude-gateway: cannot write the request log {self.file.path}: {exc}", file=sys.stderr)

    def close(self) -> None:
        """Write everything queued, then close the file."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
        self.file.close()
