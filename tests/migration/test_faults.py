"""Migration faults: the backfill killed at random points and resumed; the secondary down
during dual-write and back (nothing lost, nothing doubled)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any
from unittest import mock

import eventbus
from eventbus.adapters.memory import MemoryTransport
from eventbus.errors import ConnectionFailedError
from eventbus.migration import Migration, MigrationTransport, copying
from eventbus.migration.ops import event_id, scan
from eventbus.transport import Outgoing, Position


async def _target_ids(m: Migration, topic: str, partitions: int) -> Counter[str]:
    ids: Counter[str] = Counter()
    for p in range(partitions):
        async for record in scan(m.target, topic, p):
            ids[event_id(record)] += 1
    return ids


class CrashAfterWrite(MemoryTransport):
    """A memory target whose client 'dies' right after its n-th write has landed (the worst
    moment for a backfill: the copy is there, the checkpoint is not)."""

    crash_at = 0

    async def publish(
        self, topic: str, records: Sequence[Outgoing], *, timeout: float = 10.0
    ) -> list[Position]:
        positions = await super().publish(topic, records, timeout=timeout)
        self.crash_at -= 1
        if self.crash_at == 0:
            raise RuntimeError("killed after the write (test)")
        return positions


async def _crashing_backfill(trials: int) -> tuple[int, Counter[str]]:
    with mock.patch.object(copying, "COPY_BATCH_RECORDS", 500):
        return await _crashing_backfill_batches(trials)


async def _crashing_backfill_batches(trials: int) -> tuple[int, Counter[str]]:
    src, dst = f"bs-{uuid.uuid4().hex[:6]}", f"bt-{uuid.uuid4().hex[:6]}"
    topic, name = f"bf-{uuid.uuid4().hex[:6]}", f"m{uuid.uuid4().hex[:6]}"
    async with eventbus.connect_async(f"memory://{src}") as bus:
        await bus.create_topic(topic, partitions=3)
        await bus.publish_many(topic, [eventbus.Event(data=i, key=f"k{i}") for i in range(4500)])
    # 3 partitions of ~1500 events in batches of 500: 9 writes, more than the kills
    target = CrashAfterWrite(dst)
    m = Migration(name, MemoryTransport(src), target)
    await m.init([topic])
    await m.advance(topic)
    kills = 0
    for _ in range(trials):
        target.crash_at = 1  # each run dies right after its first write lands
        try:
            await m.backfill(topic)
        except RuntimeError:
            kills += 1
    target.crash_at = 0
    await m.backfill(topic)
    assert (await m.verify(topic)).ok
    return kills, await _target_ids(m, topic, 3)


def test_backfill_killed_after_writes_leaves_each_event_once() -> None:
    kills, ids = asyncio.run(_crashing_backfill(trials=4))
    assert kills == 4
    assert len(ids) == 4500
    assert set(ids.values()) == {1}, "every event exactly once on the target"


class FlakyTarget(MemoryTransport):
    """A memory broker that can be made unreachable, as a stopped server would be."""

    down = False

    async def publish(
        self, topic: str, records: Sequence[Outgoing], *, timeout: float = 10.0
    ) -> list[Position]:
        if self.down:
            raise ConnectionFailedError("target is down (test)")
        return await super().publish(topic, records, timeout=timeout)


def test_secondary_outage_during_dual_write_loses_nothing() -> None:
    async def main() -> tuple[int, Any]:
        src_name, dst_name = f"os-{uuid.uuid4().hex[:6]}", f"ot-{uuid.uuid4().hex[:6]}"
        topic, name = f"o-{uuid.uuid4().hex[:6]}", f"m{uuid.uuid4().hex[:6]}"
        async with eventbus.connect_async(f"memory://{src_name}") as bus:
            await bus.create_topic(topic, partitions=2)
        m = await Migration.open(name, f"memory://{src_name}", f"memory://{dst_name}")
        await m.init([topic])
        target = FlakyTarget(dst_name)
        mt = MigrationTransport(name, MemoryTransport(src_name), target, poll_interval=0.05)
        published = 0
        async with eventbus.AsyncEventBus(mt) as bus:
            await m.advance(topic)
            await m.backfill(topic)
            await mt.refresh()
            for i in range(50):
                await bus.publish(topic, i, key=f"k{i % 5}")
            target.down = True  # the secondary goes away: publishes still succeed
            for i in range(50, 120):
                await bus.publish(topic, i, key=f"k{i % 5}")
            published = 120
            target.down = False  # ... and comes back: the journal is replayed in order
            for i in range(120, 150):
                await bus.publish(topic, i, key=f"k{i % 5}")
            published = 150
            for _ in range(200):
                report = await m.verify(topic, grace=0.5)
                if report.ok:
                    break
            ids = await _target_ids(m, topic, 2)
        await m.close()
        return published, (report, ids)

    published, (report, ids) = asyncio.run(asyncio.wait_for(main(), 60))
    assert report.ok, report.summary()
    assert len(ids) == published and set(ids.values()) == {1}
