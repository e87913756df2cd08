"""Coalescing of concurrent single publishes (eventbus._coalesce): how many transport calls,
what cancellation and failures do to the others. Semantics per transport are in the
conformance suite (positions, an oversize event failing alone)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import pytest

import eventbus
from eventbus.errors import ConnectionFailedError
from eventbus.transport import Outgoing, Position


class Counting:
    """A transport wrapper that counts publish calls and can hold or fail them."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[int] = []
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def publish(
        self, topic: str, records: Sequence[Outgoing], *, timeout: float
    ) -> list[Position]:
        self.calls.append(len(records))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        result: list[Position] = await self.inner.publish(topic, records, timeout=timeout)
        return result


async def _bus() -> tuple[eventbus.AsyncEventBus, Counting]:
    inner = eventbus.connect_async(f"memory://coalesce-{uuid.uuid4().hex[:8]}").transport
    counting = Counting(inner)
    bus = eventbus.AsyncEventBus(counting)  # type: ignore[arg-type]
    await bus.connect()
    await bus.create_topic("t", partitions=1)
    return bus, counting


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))  # the deadline of every wait below


async def _held_at_transport(
    bus: eventbus.AsyncEventBus, counting: Counting, count: int
) -> list[asyncio.Future[Position]]:
    """``count`` concurrent publishes whose batch the transport holds until the gate opens."""
    counting.gate = asyncio.Event()
    tasks = [asyncio.ensure_future(bus.publish("t", i)) for i in range(count)]
    while not counting.calls:
        await _turn()
    return tasks


async def _turn() -> None:
    """Let the event loop run the tasks that are ready (no time passes)."""
    await asyncio.sleep(0)  # allowed: one event-loop turn, not a wait for time


def test_one_loop_turn_of_publishes_is_one_transport_call() -> None:
    async def main() -> None:
        bus, counting = await _bus()
        positions = await asyncio.gather(*(bus.publish("t", i) for i in range(100)))
        assert counting.calls == [100]
        assert [p.offset for p in positions] == list(range(100))  # each its own, in order
        data = [item.event.data async for item in bus.replay("t")]
        assert data == list(range(100))
        await bus.close()

    _run(main())


def test_publishes_awaited_one_by_one_go_out_one_by_one() -> None:
    async def main() -> None:
        bus, counting = await _bus()
        for i in range(5):
            await bus.publish("t", i)
        assert counting.calls == [1, 1, 1, 1, 1]
        await bus.close()

    _run(main())


def test_topics_and_timeouts_are_batched_apart() -> None:
    async def main() -> None:
        bus, counting = await _bus()
        await bus.create_topic("u", partitions=1)
        await asyncio.gather(
            bus.publish("t", 1),
            bus.publish("u", 2),
            bus.publish("t", 3),
            bus.publish("t", 4, timeout=5.0),
        )
        assert sorted(counting.calls) == [1, 1, 2]
        await bus.close()

    _run(main())


def test_a_failure_reaches_every_publish_of_the_batch() -> None:
    async def main() -> None:
        bus, counting = await _bus()
        counting.fail = ConnectionFailedError("server gone")
        results = await asyncio.gather(
            *(bus.publish("t", i) for i in range(10)), return_exceptions=True
        )
        assert all(isinstance(r, ConnectionFailedError) for r in results)
        assert len({id(r) for r in results}) == 10  # one error object per publish
        await bus.close()

    _run(main())


def test_cancelled_leader_does_not_stop_the_others() -> None:
    async def main() -> None:
        bus, counting = await _bus()
        tasks = await _held_at_transport(bus, counting, 5)
        tasks[0].cancel()  # the leader
        assert counting.gate is not None
        counting.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError)
        assert [p.offset for p in results[1:]] == [1, 2, 3, 4]
        await bus.close()

    _run(main())


def test_publish_cancelled_before_its_batch_is_sent_is_not_written() -> None:
    async def main() -> None:
        bus, _ = await _bus()
        tasks = [asyncio.ensure_future(bus.publish("t", i)) for i in range(4)]
        await _turn()  # every task has joined; the leader sends next turn
        tasks[0].cancel()  # the leader, before it sends
        tasks[2].cancel()  # a follower, before the send
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError)
        assert isinstance(results[2], asyncio.CancelledError)
        data = [item.event.data async for item in bus.replay("t")]
        assert data == [1, 3]
        await bus.close()

    _run(main())


def test_close_waits_for_a_batch_being_sent() -> None:
    async def main() -> None:
        bus, counting = await _bus()
        tasks = await _held_at_transport(bus, counting, 3)
        tasks[0].cancel()
        closing = asyncio.ensure_future(bus.close())
        await _turn()
        assert not closing.done()
        assert counting.gate is not None
        counting.gate.set()
        await closing
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert [p.offset for p in results[1:]] == [1, 2]

    _run(main())


@pytest.mark.parametrize("count", [1, 3])
def test_sync_api_publishes_still_return_positions(count: int) -> None:
    with eventbus.connect(f"memory://coalesce-{uuid.uuid4().hex[:8]}") as bus:
        bus.create_topic("t", partitions=1)
        assert [bus.publish("t", i).offset for i in range(count)] == list(range(count))
