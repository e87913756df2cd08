"""Retention on the source, Redis -> Kafka (issue #18, hole 1), and a cutover that fails
after the pause (never a group left half-moved).

Redis trims the topic on every write (5 s retention here) while the Kafka copies keep their
timestamps and expire by segment, so Kafka holds more. With producers publishing and two
worker processes handling the topic through ``migrate://``: ``verify`` compares what both
sides retain and passes, saying how many older events only the target holds; the cutover
leaves those behind the group's start (nothing handled again, a short skip list); every
event is handled once, in per-key order.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

import eventbus
from eventbus.errors import ConfigurationError, ConnectionFailedError
from eventbus.migration import Migration, MigrationState, cutover
from eventbus.migration.ops import event_id
from tests.migration.procs import migrate_url
from tests.migration.scenario import ProcessWorkers, Tally, producing, wait_for_empty_journal
from tests.migration.test_topologies import _finish, _traffic

pytestmark = [pytest.mark.redis, pytest.mark.kafka]


async def _source_trimmed_copies(m: Migration, topic: str, timeout: float = 40) -> None:
    """Wait until the source has trimmed events the target still holds (partition 0)."""
    deadline = time.monotonic() + timeout
    while True:
        src = await m.source.read(topic, 0, None, limit=1)
        tgt = await m.target.read(topic, 0, None, limit=1)
        if src and tgt and event_id(src[0]) != event_id(tgt[0]):
            return
        assert time.monotonic() < deadline, "the source did not trim within the deadline"
        await asyncio.sleep(0.2)  # allowed: polling interval of a condition wait


@pytest.mark.timeout(120)
def test_verify_and_cutover_compare_what_both_sides_retain(
    redis_url: str, kafka_url: str, tmp_path: Path
) -> None:
    name, group, topic = (f"{p}-{uuid.uuid4().hex[:6]}" for p in ("m", "g", "t"))
    with eventbus.connect(redis_url) as admin:
        admin.create_topic(topic, partitions=2, retention_ms=5000)
    url = migrate_url(name, redis_url, kafka_url)
    tally = Tally()
    traffic = _traffic(tally)

    async def operate() -> None:
        m = await Migration.open(name, redis_url, kafka_url)
        try:
            await m.init([topic])
            await m.advance(topic)
            await traffic()
            await m.backfill(topic)
            await wait_for_empty_journal(m, topic)
            await _source_trimmed_copies(m, topic)
            report = await m.verify(topic)
            assert report.ok, report.summary()
            aged = sum(p.beyond_source_retention for p in report.partitions.values())
            assert aged > 0, report.summary()
            assert "compared what both sides retain" in report.summary()
            await m.advance(topic)
            moved = await m.cutover(group, topic)
            ranges = sum(len(r) for r in moved.positions[topic].skip.values())
            assert ranges <= 10, f"a short skip list, not the trimmed history: {ranges}"
            await traffic()
            await m.advance(topic)
            await traffic()
        finally:
            await m.close()

    with ProcessWorkers(url, topic, group, tmp_path) as workers:
        workers.start()
        with producing(url, topic, tally, count=2):
            asyncio.run(asyncio.wait_for(operate(), 100))
        _finish(workers, tally, [])


@pytest.mark.timeout(60)
def test_failed_cutover_save_leaves_the_group_on_its_old_side(
    redis_url: str, kafka_url: str
) -> None:
    """The control record cannot be saved after the positions were set on Kafka: cutover
    fails saying so and the group is back on the source (its members resume there; the
    source's positions were never touched), not left paused half-way; a second cutover then
    completes. Likewise when translation is refused (too many skip ranges)."""
    name, group, topic = (f"{p}-{uuid.uuid4().hex[:6]}" for p in ("m", "g", "t"))
    with eventbus.connect(redis_url) as admin:
        admin.create_topic(topic, partitions=2)
        admin.publish_many(topic, [eventbus.Event(data={"seq": i}, key=f"k{i}") for i in range(40)])
        with admin.subscribe(topic, group=group) as sub:
            sub.ack(sub.fetch(10, timeout=5.0))

    async def operate() -> None:
        m = await Migration.open(name, redis_url, kafka_url)
        try:
            await m.init([topic])
            await m.advance(topic)
            await m.backfill(topic)
            assert (await m.verify(topic)).ok
            await m.advance(topic)
            save = m.control.save

            async def failing(
                state: MigrationState, *, expected_version: int | None
            ) -> MigrationState:
                gm = state.groups.get(group)
                if gm is not None and gm.status == "target":
                    raise ConnectionFailedError("the source went away")
                return await save(state, expected_version=expected_version)

            m.control.save = failing  # type: ignore[method-assign]
            with pytest.raises(ConfigurationError, match="stays on the source"):
                await m.cutover(group, topic)
            m.control.save = save  # type: ignore[method-assign]
            assert (await m.control.require()).groups[group].status == "source"
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(cutover, "MAX_SKIP_RANGES", -1)
                with pytest.raises(ConfigurationError, match="skip ranges"):
                    await m.cutover(group, topic)
            assert (await m.control.require()).groups[group].status == "source"
            moved = await m.cutover(group, topic)
            assert moved.status == "target"
            assert sum(len(s) for s in moved.positions[topic].skip.values()) <= 2
        finally:
            await m.close()

    asyncio.run(asyncio.wait_for(operate(), 50))
