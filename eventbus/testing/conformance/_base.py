"""What every part of the conformance suite stands on: the name, polling and draining helpers,
the ``Task`` model of the typed tests, and :class:`SuiteBase` with the ``bus`` and
``make_topic`` fixtures, the timing knobs and the subscribe and run helpers."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import BaseModel

import eventbus
from eventbus.sync import Delivery, EventBus, Subscription


def unique(prefix: str) -> str:
    """A name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)  # polling interval of a condition wait, not a fixed settle time


def drain(
    sub: Subscription, count: int, timeout: float, *, ack: bool = True, exact: bool = True
) -> list[Delivery]:
    """Fetch until ``count`` deliveries arrived (acking them unless told not to)."""
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"received {len(got)} of {count} events within {timeout}s")
        batch = sub.fetch(count - len(got), timeout=0.5)
        for delivery in batch:
            if ack:
                delivery.ack()
        got.extend(batch)
    if exact:
        assert len(got) == count, f"expected {count} deliveries, got {len(got)}"
    return got


class Task(BaseModel):
    """A typed payload for the typed-consumption tests."""

    task_id: int
    title: str


class SuiteBase:
    """Fixtures and helpers shared by the suite's parts. Subclasses provide the ``url`` fixture."""

    session_timeout: float = 6.0
    visibility_timeout: float = 2.0
    deadline: float = 60.0

    @pytest.fixture
    def bus(self, url: str) -> Iterator[EventBus]:
        with eventbus.connect(url) as bus:
            yield bus

    @pytest.fixture
    def make_topic(self, bus: EventBus) -> Callable[..., str]:
        def make(partitions: int = 3, **fields: Any) -> str:
            name = unique("conf")
            bus.create_topic(name, partitions=partitions, **fields)
            return name

        return make

    def subscribe(self, bus: EventBus, topic: str, group: str, **kw: Any) -> Subscription:
        kw.setdefault("session_timeout", self.session_timeout)
        kw.setdefault("visibility_timeout", self.visibility_timeout)
        return bus.subscribe(topic, group=group, **kw)

    def _run_until(self, runner: eventbus.Runner, done: Callable[[], bool]) -> None:
        thread = threading.Thread(target=runner.run)
        thread.start()
        try:
            wait_until(done, self.deadline, "the runner to finish its work")
        finally:
            runner.stop()
            thread.join(self.deadline)
        assert not thread.is_alive()

    def _raw_headers(self, bus: EventBus, topic: str) -> dict[str, str]:
        async def read() -> dict[str, str]:
            records = await bus.aio.transport.read(topic, 0, None, limit=1)
            return {k: v.decode() for k, v in records[0].headers.items()}

        return asyncio.run_coroutine_threadsafe(read(), bus._portal.loop).result(self.deadline)
