"""An append-only line file written by one background thread, with size-based rotation.

Callers hand over whole lines (bytes ending in a newline) and never wait on the disk. The
thread writes the lines queued so far with a single `os.write` on an O_APPEND descriptor, so
lines never interleave and a crash can cut at most the last line being written: every earlier
line is already whole in the file (the page cache survives a process crash).

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
_BATCH_BYTES = 4 << 20  # one write takes at most this much (and whatever line crosses the mark)


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
        self._compressor: threading.Thread | None = None

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(self, line: bytes) -> None:
        """Append whole lines (one or several), rotating first when they would overflow the size limit."""
        if self.max_bytes and self.size and self.size + len(line) > self.max_bytes:
            self.rotate()
        view = memoryview(line)
        while view:  # a regular file writes everything at once; loop only for the odd short write
            n = os.write(self._fd, view)
            view = view[n:]
        self.size += len(line)

    def rotate(self) -> None:
        """PATH → PATH.1[.gz], PATH.i → PATH.i+1, dropping anything beyond `keep`."""
        self._wait_compressor()  # the previous PATH.1 must be PATH.1.gz before it moves on
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
        else:
            _remove(base)
        self._drop_beyond_keep()  # before the compressor's PATH.1.gz.tmp exists
        if self.keep >= 1 and self.compress:
            # Compressing 64 MB takes about a second; meanwhile the writer keeps appending to
            # the new file instead of letting queued lines pile up in memory.
            self._compressor = threading.Thread(target=_gzip_file, args=(f"{base}.1",),
                                                name="request-log-gzip", daemon=True)
            self._compressor.start()
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

    def _wait_compressor(self) -> None:
        if self._compressor is not None:
            self._compressor.join()
            self._compressor = None

    def close(self) -> None:
        self._wait_compressor()
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
    with open(path, "rb") as src:
        # Same permissions as the live log (0600 by default): the copy holds the same prompts.
        # gzip.open would create it under the umask, readable by everyone.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, os.fstat(src.fileno()).st_mode & 0o777)
        with open(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as dst:
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
        stop = False
        while not stop:
            batch = [self._queue.get()]
            # Take everything queued meanwhile and write it in one go: this thread gets the GIL
            # only every few milliseconds while the event loop is busy, and one line per turn
            # let the queue (≈85 KB per Claude Code line) grow without bound under load.
            size = len(batch[0]) if batch[0] is not _STOP else 0
            while size < _BATCH_BYTES:
                try:
                    line = self._queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(line)
                if line is _STOP:
                    break
                size += len(line)
            if batch[-1] is _STOP:
                stop = True
                batch.pop()
            if not batch:
                continue
            try:
                self.file.write(b"".join(batch))
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
