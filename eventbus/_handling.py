"""What the runner does around a handler call, outside its scheduling: calling a sync or
async handler, the retry backoff, the structured log fields of a failure, and waiting on
either of two events. Kept apart from ``runner.py`` so that module holds the scheduling."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from eventbus.transport import Record

__all__ = ["backoff_delay", "call_handler", "log_fields", "wait_any"]


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Delay before retry number ``attempt`` (1-based): base * 2**(attempt-1), capped."""
    return float(min(cap, base * (2 ** max(attempt - 1, 0))))


def log_fields(record: Record, group: str, event_id: str, attempt: int) -> dict[str, object]:
    """Structured log fields (``extra=``): where the event is and which attempt failed."""
    return {
        "topic": record.topic,
        "partition": record.partition,
        "position": str(record.position),
        "event_id": event_id,
        "group": group,
        "attempt": attempt,
    }


async def wait_any(a: asyncio.Event, b: asyncio.Event, timeout: float) -> None:
    """Return once ``a`` or ``b`` is set, or after ``timeout`` s (never raises on timeout)."""
    waiters = {asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())}
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def call_handler(
    handler: Callable[[Any], Any],
    delivery: Any,
    run_sync: Callable[..., Awaitable[Any]],
    is_async: bool | None = None,
) -> None:
    """Call a sync or async handler with a delivery; sync ones run via ``run_sync``.
    ``is_async`` saves the per-call check when the caller knows it."""
    if is_async if is_async is not None else asyncio.iscoroutinefunction(handler):
        await handler(delivery)
    else:
        result = await run_sync(handler, delivery)
        if asyncio.iscoroutine(result):
            await result
