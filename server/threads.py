"""Blocking work off the event loop, safe against a caller that is cancelled meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def in_thread(fn: Callable[..., T], *args: Any, stop: threading.Event | None = None) -> T:
    """`fn(*args)` in a worker thread, off the event loop (where it would hold up every other request).

    fn may use something that must outlive it (a loaded model, a database): a caller cancelled
    meanwhile (its client went away) sets `stop`, for an fn that checks it, and waits for fn before it
    lets the cancellation go on. Errors fn raises come through unchanged.
    """
    future = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if stop is not None:
            stop.set()
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({future})
        if not future.cancelled():
            future.exception()  # retrieved: whatever fn ended with, the caller is gone
        raise
