"""Retention on the source, Redis -> Kafka (issue #18, hole 1).

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
from eventbus.migration import Migration
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
