"""Helpers for the Kafka adapter tests: a connected transport and topics that clean up.

The ``kafka_url`` / ``kafka_bootstrap`` fixtures come from ``eventbus.testing.fixtures``
(loaded by ``tests/conftest.py``); ``EVENTBUS_TEST_KAFKA_URL`` points them at a running broker.
Every topic and group name is unique, and only topics these tests created are deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from eventbus.adapters.kafka import KafkaTransport
from eventbus.topics import TopicSpec
from eventbus.transport import ConsumerOptions, Record, TransportConsumer

T = TypeVar("T")
SESSION = 6.0
"""Session timeout: at least the broker's default group.min.session.timeout.ms."""


def unique(prefix: str) -> str:
    return f"kt-{prefix}-{uuid.uuid4().hex[:10]}"


def run(coro: Awaitable[T], timeout: float = 90.0) -> T:
    """Run a coroutine to completion in a fresh event loop, with a deadline."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


@contextlib.asynccontextmanager
async def connected(url: str, **options: Any) -> AsyncIterator[KafkaTransport]:
    transport = KafkaTransport.from_url(url, options)
    await transport.connect()
    try:
        yield transport
    finally:
        await transport.close()


async def make_topic(t: KafkaTransport, partitions: int = 1, **fields: Any) -> str:
    name = unique(fields.pop("prefix", "topic"))
    await t.create_topic(TopicSpec(name=name, partitions=partitions, **fields))
    _CREATED.append(name)
    return name


async def fetch_until(
    consumer: TransportConsumer,
    count: int,
    timeout: float = 30.0,
    *,
    ack: bool = True,
) -> list[Record]:
    """Fetch until ``count`` records arrived (acking them unless told not to)."""
    got: list[Record] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"got {len(got)} of {count} records in {timeout}s"
        batch = await consumer.fetch(count - len(got), 0.5)
        if ack and batch:
            await consumer.ack(batch)
        got.extend(batch)
    return got


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll an async condition until true, failing after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.05)  # allowed: poll interval of a deadline wait


def options(**changes: Any) -> ConsumerOptions:
    return ConsumerOptions(session_timeout=SESSION).replace(**changes)


_CREATED: list[str] = []


@pytest.fixture(autouse=True)
def _delete_created_topics(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test, delete the topics it created (and only those)."""
    yield
    if not _CREATED:
        return
    names, _CREATED[:] = list(_CREATED), []
    url = request.getfixturevalue("kafka_url")

    async def cleanup() -> None:
        async with connected(url) as t:
            for name in names:
                with contextlib.suppress(Exception):
                    await t.delete_topic(name)

    with contextlib.suppress(Exception):
        run(cleanup(), 60)
