"""An append-only line file written by one background thread, with size-based rotation.

Callers hand over whole lines (bytes ending in a newline) and never wait on the disk. The
thread writes the lines queued so far with a single `os.write` on an O_APPEND descriptor, so
lines never interleave and a crash can cut at most the last line being written: every earlier
line is already whole in the file (the page cache survives a process crash).

Rotation (when `max_bytes` > 0): before a line would push the file past `max_bytes`, the file
becomes PATH.1 (PATH.1.gz when compressing), older ones shift to PATH.2 … PATH.keep, and the
oldest is dropped. log_replay reads the same names back, oldest first.

Shared (the workers of `serve --workers N` append to one file): each append holds a shared
flock on PATH.lock and first follows PATH to the file now there, a rotation holds it exclusively,
and the compression of PATH.1 holds it shared until done. So no process appends to a file another
one has rotated away, and no rotation shifts a PATH.1 that is still being compressed.
"""
from __future__ import annotations

import fcntl
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

    def __init__(self, path: str | Path, max_bytes: int = 0, keep: int = 5, compress: bool = False,
                 shared: bool = False):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self.compress = compress
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = self._open()
        self.size = os.fstat(self._fd).st_size
        self._compressor: threading.Thread | None = None
        self._lock_fd = self._open_lock() if shared else -1

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def _open_lock(self) -> int:
        return os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)

    def write(self, line: bytes) -> None:
        """Append whole lines (one or several), rotating first when they would overflow the size limit."""
        if self._lock_fd >= 0:
            self._write_shared(line)
            return
        if self.max_bytes and self.size and self.size + len(line) > self.max_bytes:
            self.rotate()
        self._append(line)
        self.size += len(line)

    def _append(self, line: bytes) -> None:
        view = memoryview(line)
        while view:  # a regular file writes everything at once; loop only for the odd short write
            n = os.write(self._fd, view)
            view = view[n:]

    def _over(self, incoming: int) -> bool:
        size = os.fstat(self._fd).st_size  # every process's lines, not only this one's
        return bool(self.max_bytes and size and size + incoming > self.max_bytes)

    def _write_shared(self, line: bytes) -> None:
        while True:
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)
            try:
                self._follow()
                if not self._over(len(line)):
                    self._append(line)
                    return
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            # Exclusive: waits for every append in flight and any compression of PATH.1, in any process.
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            self._follow()
            if self._over(len(line)):  # unless another process rotated meanwhile
                self.rotate()  # leaves the lock held shared when a compression starts, else exclusive
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _follow(self) -> None:
        """Reopen PATH when another process rotated it away (this descriptor then points at PATH.1)."""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            now = None
        mine = os.fstat(self._fd)
        if now is None or (now.st_ino, now.st_dev) != (mine.st_ino, mine.st_dev):
            os.close(self._fd)
            self._fd = self._open()

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
            lock = -1
            if self._lock_fd >= 0:  # the compression keeps the lock shared; appends go on with a new one
                lock, self._lock_fd = self._lock_fd, self._open_lock()
                fcntl.flock(lock, fcntl.LOCK_SH)
            self._compressor = threading.Thread(target=_gzip_file, args=(f"{base}.1", lock),
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
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _gzip_file(path: str, lock: int = -1) -> None:
    """path → path.gz, atomically (a reader never sees a half-written .gz under the final name);
    closes `lock` (a shared log's lock descriptor) when done, which releases it."""
    try:
        _gzip(path)
    finally:
        if lock >= 0:
            os.close(lock)


def _gzip(path: str) -> None:
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
