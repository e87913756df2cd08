"""Dead letters under ``migrate://``, Redis -> Kafka (issue #18, hole 4).

Two worker processes handle a topic through ``migrate://`` while producers publish; now and
then a poisoned event (its handler always raises) is published, so the runner dead-letters it
to ``<topic>.dlq``, in every stage: before ``init``, in dual-source-primary, after the group's
cutover to Kafka, and in target-only. The dead-letter topic is part of the migration: created
on both sides, dual-written, backfilled and verified with its topic. At the end Kafka's
``<topic>.dlq`` holds every dead letter exactly once, Redis's every one written before
target-only exactly once, and the normal events were each handled once, in per-key order.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path

import pytest

import eventbus
from eventbus.migration import Migration
from eventbus.testing.conformance import wait_until
from tests.migration.checks import held
from tests.migration.procs import migrate_url
from tests.migration.scenario import ProcessWorkers, Tally, producing, wait_for_empty_journal
from tests.migration.test_topologies import _finish, _traffic, _with_history

pytestmark = [pytest.mark.redis, pytest.mark.kafka]


@pytest.mark.timeout(120)
def test_dead_letters_are_migrated_with_their_topic(
    redis_url: str, kafka_url: str, tmp_path: Path
) -> None:
    name, group, topic = (f"{p}-{uuid.uuid4().hex[:6]}" for p in ("m", "g", "t"))
    dlq = f"{topic}.dlq"
    history = _with_history(redis_url, [topic])
    url = migrate_url(name, redis_url, kafka_url)
    tally = Tally()
    traffic = _traffic(tally)
    poisoned: list[str] = []
    workers = ProcessWorkers(url, topic, group, tmp_path, extra=("--max-attempts", "2"))

    def poison(n: int = 3) -> None:
        with eventbus.connect(url) as bus:
            for _ in range(n):
                event = eventbus.Event(data={"seq": -1, "poison": True}, key="poison")
                bus.publish(topic, event)
                poisoned.append(event.id)

    def dead_lettered(side: str) -> list[str]:
        both = held(name, redis_url, kafka_url, dlq, 1)
        entries = both.source if side == "source" else both.target
        return [e[0] for e in entries[0]]

    def lettered(count: int) -> None:
        """Wait until the workers have dead-lettered ``count`` events (the source's view
        while it is the primary; the target's after)."""
        wait_until(lambda: len(set(_dead_letters_seen())) >= count, 60, "dead letters")

    def _dead_letters_seen() -> list[str]:
        with eventbus.connect(url) as bus:
            try:
                return [r.event.id for r in bus.replay(dlq)]
            except eventbus.errors.TopicNotFoundError:  # no dead letter yet
                return []

    async def operate() -> None:
        m = await Migration.open(name, redis_url, kafka_url)
        try:
            await asyncio.to_thread(poison)  # source-only, before init: Redis only
            await asyncio.to_thread(lettered, 3)
            state = await m.init([topic])
            assert dlq in state.topics, "the dead-letter topic joins its topic"
            await m.advance(topic)
            assert (await m.control.require()).topics[dlq].stage == "dual-source-primary"
            await asyncio.to_thread(poison)  # dual-written
            await asyncio.to_thread(lettered, 6)
            await traffic()
            await m.backfill(topic)
            for t in (topic, dlq):
                await wait_for_empty_journal(m, t)
            report = await m.verify(topic)
            assert report.ok, report.summary()
            assert [r.topic for r in report.related] == [dlq]
            assert sum(p.source_count for p in report.related[0].partitions.values()) == 6
            await m.advance(topic)
            await m.cutover(group, topic)
            await asyncio.to_thread(poison)  # written by members reading Kafka
            await asyncio.to_thread(lettered, 9)
            await traffic()
            await m.advance(topic)
            assert (await m.control.require()).topics[dlq].stage == "target-only"
            await asyncio.to_thread(poison)  # Kafka only
            await asyncio.to_thread(lettered, 12)
            await traffic()
        finally:
            await m.close()

    with workers:
        workers.start()
        with producing(url, topic, tally, count=2):
            asyncio.run(asyncio.wait_for(operate(), 100))
        _finish(workers, tally, history)
    on_kafka, on_redis = Counter(dead_lettered("target")), Counter(dead_lettered("source"))
    assert set(on_kafka) == set(poisoned), "every dead letter is on Kafka"
    assert max(on_kafka.values()) == 1, "once each"
    assert set(on_redis) == set(poisoned[:9]), "every one before target-only is on Redis"
    assert max(on_redis.values()) == 1, "once each"
