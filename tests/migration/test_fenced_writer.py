"""The Kafka transactional writer of the backfill and the journal replay, on a real broker:
the last record's position comes back, and a batch with one record the broker refuses is
aborted whole and fails at once (the transaction holds back the records after a failed one,
so waiting for all reports would take the whole timeout: 31 s here before the fix)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

import eventbus
from eventbus.errors import EventBusError
from eventbus.migration._fenced import open_fenced_writer, transactional_id
from eventbus.transport import Outgoing, Position

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]


def _records(count: int, start: int = 0) -> list[Outgoing]:
    return [
        Outgoing(b'{"n": %d}' % i, headers={"eb-id": str(uuid.uuid4()).encode()}, partition=0)
        for i in range(start, start + count)
    ]


def test_last_position_and_a_refused_record_aborts_its_batch(kafka_url: str) -> None:
    async def main() -> None:
        topic = f"fenced-{uuid.uuid4().hex[:8]}"
        async with eventbus.connect_async(kafka_url) as bus:
            await bus.create_topic(topic, partitions=1, max_event_bytes=4096)
            tid = transactional_id("test", uuid.uuid4().hex[:8], topic)
            writer = await open_fenced_writer(bus.transport, tid, topic=topic, timeout=30.0)
            try:
                assert await writer.write(topic, [], timeout=30.0) is None
                assert await writer.write(topic, _records(10), timeout=30.0) == Position(0, 9)
                batch = _records(5, 10)
                # bigger than the topic's max.message.bytes: the broker refuses it
                batch[2] = Outgoing(b"x" * 20_000, partition=0)
                with pytest.raises(EventBusError):
                    await writer.write(topic, batch, timeout=30.0)
            finally:
                await writer.close()
            seen = [item.event.data async for item in bus.replay(topic)]
            assert seen == [{"n": i} for i in range(10)]  # nothing of the refused batch
            await bus.delete_topic(topic)

    asyncio.run(asyncio.wait_for(main(), 100))
