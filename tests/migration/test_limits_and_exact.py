"""Redis -> Kafka (issue #18, hole 10): ``cutover --exact`` sees a Kafka group's un-acked
records, and events near the topic's size limit next to the migration's headers.

Both run with producers publishing through ``migrate://`` and two worker processes handling
the topic; every normal event is handled once, in per-key order.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

import eventbus
from eventbus.errors import ConfigurationError, EventTooLargeError
from eventbus.migration import Migration
from eventbus.transport import offset_key
from tests.migration.procs import migrate_url
from tests.migration.scenario import ProcessWorkers, Tally, producing
from tests.migration.test_topologies import _finish, _to_dual_verified, _traffic, _with_history

pytestmark = [pytest.mark.redis, pytest.mark.kafka]


def _uid() -> str:
    return uuid.uuid4().hex[:6]


@pytest.mark.timeout(120)
def test_exact_cutover_back_from_kafka_sees_unacked_records(
    redis_url: str, kafka_url: str, tmp_path: Path
) -> None:
    """A group on Kafka that acked a record above one it did not (Kafka counts no pending;
    its commit says so): moving it back to the source with ``--exact`` is refused naming
    the partition, and nothing changes; without ``--exact`` it moves and starts at or
    before the un-acked record, which is not in its skip ranges."""
    name, group, audit, topic = f"m{_uid()}", f"g-{_uid()}", f"audit-{_uid()}", f"t-{_uid()}"
    history = _with_history(redis_url, [topic], partitions=1)
    url = migrate_url(name, redis_url, kafka_url)
    tally = Tally()
    traffic = _traffic(tally)

    def ack_out_of_order() -> str:
        """On Kafka, ``audit`` takes two records, acks the second only, and leaves."""
        with eventbus.connect(kafka_url) as bus, bus.subscribe(topic, group=audit) as sub:
            got: list[eventbus.Delivery] = []
            while len(got) < 2:
                got += sub.fetch(2 - len(got), timeout=5.0)
            sub.ack([got[1]])
            return got[0].event.id

    async def operate() -> None:
        m = await Migration.open(name, redis_url, kafka_url)
        try:
            await _to_dual_verified(m, [topic], traffic)
            await m.advance(topic)  # dual-target-primary
            await m.cutover(group, topic)
            await m.cutover(audit, topic)
            unacked = await asyncio.to_thread(ack_out_of_order)
            await traffic()
            await m.rollback(topic)  # dual-source-primary: groups may move back
            with pytest.raises(
                ConfigurationError, match=rf"pending events on the target .*{topic}/0"
            ):
                await m.cutover(audit, topic, to="source", exact=True)
            assert (await m.control.require()).groups[audit].status == "target"
            moved = await m.cutover(audit, topic, to="source")
            assert moved.status == "source"
            pos = moved.positions[topic]
            start = offset_key(pos.start[0])
            at = next(
                r.offset
                for r in await m.source.read(topic, 0, None, limit=100_000)
                if r.headers.get("eb-id", b"").decode() == unacked
            )
            assert start <= offset_key(at), "starts at or before the un-acked record"
            skipped = [(offset_key(a), offset_key(b)) for a, b in pos.skip.get(0, [])]
            assert not any(a <= offset_key(at) <= b for a, b in skipped)
            await traffic()
        finally:
            await m.close()

    with ProcessWorkers(url, topic, group, tmp_path) as workers:
        workers.start()
        with producing(url, topic, tally, count=2):
            asyncio.run(asyncio.wait_for(operate(), 90))
        _finish(workers, tally, history)


def _largest_that_fits(url: str, topic: str, limit: int) -> tuple[str, int]:
    """Publish the largest event ``topic`` accepts (found by bisection): its id and padding."""
    with eventbus.connect(url) as bus:
        low, high, best = 0, limit, ("", 0)
        while low <= high:
            size = (low + high) // 2
            event = eventbus.Event(data={"seq": 0, "pad": "x" * size}, key="big")
            try:
                bus.publish(topic, event)
            except EventTooLargeError:
                high = size - 1
                continue
            low, best = size + 1, (event.id, size)
        return best


@pytest.mark.timeout(120)
def test_events_at_the_size_limit_migrate(redis_url: str, kafka_url: str, tmp_path: Path) -> None:
    """The source topic holds events right at its max event bytes (bisection leaves smaller
    ones too, all keyed "big"). The target topic is created with room for the migration's
    headers, so the backfill copies them all and verify passes. Publishing such an event
    through migrate:// in dual-target-primary (its copy to the source would not fit there)
    is refused before anything is written, naming the event and the way out."""
    name, group, topic = f"m{_uid()}", f"g-{_uid()}", f"t-{_uid()}"
    limit = 4000
    with eventbus.connect(redis_url) as admin:
        admin.create_topic(topic, partitions=2, max_event_bytes=limit)
    big, pad = _largest_that_fits(redis_url, topic, limit)
    url = migrate_url(name, redis_url, kafka_url)
    tally = Tally()
    traffic = _traffic(tally)

    async def operate() -> None:
        m = await Migration.open(name, redis_url, kafka_url)
        try:
            await _to_dual_verified(m, [topic], traffic)
            await m.advance(topic)  # dual-target-primary: copies go to the source
            event = eventbus.Event(data={"seq": 0, "pad": "x" * pad}, key="big")
            refused = pytest.raises(EventTooLargeError, match=rf"{event.id}.*max_event_bytes")
            with eventbus.connect(url) as bus, refused:
                await asyncio.to_thread(bus.publish, topic, event)
            for side in (m.source, m.target):
                ids = {
                    r.headers.get("eb-id", b"").decode()
                    for p in (0, 1)
                    for r in await side.read(topic, p, None, limit=100_000)
                }
                assert event.id not in ids, "a refused event is written nowhere"
            await m.cutover(group, topic)
            await traffic()
            await m.advance(topic)
        finally:
            await m.close()

    with eventbus.connect(redis_url) as admin:
        history = [r.event.id for r in admin.replay(topic)]
    assert big in history
    with ProcessWorkers(url, topic, group, tmp_path) as workers:
        workers.start()
        with producing(url, topic, tally, count=2):
            asyncio.run(asyncio.wait_for(operate(), 90))
        _finish(workers, tally, history)  # the bisection's events: key "big", seq 0
