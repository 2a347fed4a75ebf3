"""Waiting for a condition by polling: the one loop the tests and bench scripts use.

Both variants probe once more when the deadline has passed, so a condition that became true during
the last sleep still counts, and both return the last value probed, so the caller can assert on it
(or print it) instead of on a bare False.
"""
from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def wait_for(probe: Callable[[], Any | Awaitable[Any]], timeout: float = 2.0, *,
                   until: Callable[[Any], bool] = bool, interval: float = 0.02) -> Any:
    """Call `probe` (plain or async) every `interval` s until `until(value)` holds or `timeout` s
    pass; returns the last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if until(value) or loop.time() >= deadline:
            return value
        await asyncio.sleep(interval)


def wait_for_sync(probe: Callable[[], Any], timeout: float = 2.0, *, until: Callable[[Any], bool] = bool,
                  interval: float = 0.02) -> Any:
    """`wait_for` for code without an event loop (it blocks the calling thread)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if until(value) or time.monotonic() >= deadline:
            return value
        time.sleep(interval)
