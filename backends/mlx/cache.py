"""Prompt (KV) cache for the MLX engine: per-session entries plus shared prefixes.

Each entry is the KV cache of one token sequence of one model. A session keeps its latest
sequence (the conversation so far, plus a few unrelated side requests); a shared entry holds a
prefix that many sessions start with (system prompt + tools). A session reuses the longest
common prefix with its own entries; another session's content is never read, because the
reported cache_read count would tell a guesser how much of it they got right. A shared entry
serves another session only whole, and only inside that session's own system + tools prefix, so
the count it reports is a length the reader computed from its own request. Entries are evicted
least-recently-used past a byte budget, and dropped after a TTL.

Only the engine thread touches this object (no locking): entries hold mlx arrays.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from mlx_lm.models.cache import KVCache, can_trim_prompt_cache

PER_SESSION = 4  # sequences kept per session: the conversation and a few side requests


@dataclass
class CacheEntry:
    model: str
    tokens: np.ndarray  # int32, the tokens whose keys/values `layers` hold
    layers: list[Any]  # one mlx_lm cache object per layer
    nbytes: int
    session: str | None  # the conversation's owner (None: a request without a session)
    shared: bool = False  # a system + tools prefix, readable by every session
    last_used: float = 0.0  # the cache's clock reading when the entry was stored or last read


@dataclass(slots=True)
class CacheHit:
    layers: list[Any] | None  # fresh cache objects for the generator (None: nothing reusable)
    tokens: int  # prompt tokens covered by `layers`


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the common prefix of two int arrays."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


def _view(layers: list[Any], n: int) -> list[Any] | None:
    """New cache objects over the first `n` positions, sharing the stored arrays (no copy).

    The batch generator copies what it reads into its own batched cache, so the stored
    entry is never written through these views.
    """
    out = []
    for c in layers:
        if type(c) is not KVCache or c.keys is None:
            return None
        v = KVCache()
        v.keys, v.values, v.offset = c.keys, c.values, n
        out.append(v)
    return out


class PromptCache:
    """Per-session and shared-prefix KV entries with a byte budget, LRU order and a TTL.

    `across_sessions` (opt-in, for a gateway with one user) lets any request reuse any entry.
    `clock` measures the TTL; a test swaps in one it advances by hand instead of sleeping past it.
    """

    def __init__(self, max_bytes: int, ttl_s: float, across_sessions: bool = False,
                 clock: Callable[[], float] = time.monotonic):
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.across_sessions = across_sessions
        self.clock = clock
        self.entries: list[CacheEntry] = []

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries)

    def lookup(self, model: str, tokens: list[int], session: str | None, shared_len: int = 0) -> CacheHit:
        """The longest cached prefix of `tokens` this session may read (at most len-1: the last is computed).

        `shared_len` is where the request's own system + tools prefix ends.
        """
        self._expire()
        arr = np.asarray(tokens, dtype=np.int32)
        best, best_n = None, 0
        for e in self.entries:
            if e.model != model:
                continue
            n = self._readable(e, arr, session, shared_len)
            # Prefer the session's own entry on ties: it is the one that will be replaced.
            if n > best_n or (n == best_n and n and e.session == session and best is not None
                              and best.session != session):
                best, best_n = e, n
        limit = min(best_n, len(tokens) - 1)
        if best is None or limit <= 0:
            return CacheHit(None, 0)
        if limit < len(best.tokens) and not _trimmable(best.layers):
            return CacheHit(None, 0)
        layers = _view(best.layers, limit)
        if layers is None:
            return CacheHit(None, 0)
        best.last_used = self.clock()
        return CacheHit(layers, limit)

    def _readable(self, e: CacheEntry, arr: np.ndarray, session: str | None, shared_len: int) -> int:
        """How many leading tokens of `arr` this session may take from `e`."""
        if self.across_sessions or (session is not None and e.session == session and not e.shared):
            return common_prefix(e.tokens, arr)
        if e.shared and len(e.tokens) <= shared_len and common_prefix(e.tokens, arr) == len(e.tokens):
            return len(e.tokens)  # all or nothing: a partial match would measure someone's prompt
        return 0

    def insert(self, model: str, tokens: list[int], layers: list[Any], session: str | None,
               shared: bool = False) -> None:
        """Store the cache of `tokens`; the entry of the same conversation that it extends is replaced."""
        if not tokens or not layers:
            return
        if session is None and not shared and not self.across_sessions:
            return  # no one could read it: a request without a session shares only the shared prefix
        arr = np.asarray(tokens, dtype=np.int32)
        nbytes = sum(int(c.nbytes) for c in layers)
        if nbytes > self.max_bytes:
            return
        keep = []
        mine = 0
        for e in reversed(self.entries):  # newest first
            if e.model == model and e.session == session and e.shared == shared:
                # The same conversation moved on (most of the old sequence is the new one's
                # prefix): the old entry is superseded. A side request of the same session (Claude
                # Code's title or command-prefix calls, with their own system prompt) shares
                # little and lives beside it.
                if 2 * common_prefix(e.tokens, arr) > len(e.tokens):
                    continue
                mine += 1
                if session is not None and mine >= PER_SESSION:
                    continue
            keep.append(e)
        keep.reverse()
        self.entries = keep
        self.entries.append(CacheEntry(model, arr, layers, nbytes, session, shared, self.clock()))
        self._evict()

    def drop_model(self, model: str) -> None:
        """Forget every entry of an unloaded model."""
        self.entries = [e for e in self.entries if e.model != model]

    def _expire(self) -> None:
        if self.ttl_s > 0:
            now = self.clock()
            self.entries = [e for e in self.entries if now - e.last_used <= self.ttl_s]

    def _evict(self) -> None:
        self._expire()
        total = self.nbytes
        if total <= self.max_bytes:
            return
        for e in sorted(self.entries, key=lambda e: e.last_used):
            if total <= self.max_bytes:
                break
            self.entries.remove(e)
            total -= e.nbytes


def _trimmable(layers: list[Any]) -> bool:
    return can_trim_prompt_cache(layers)
