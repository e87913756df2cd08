"""The rollback drill on real servers, Redis -> Kafka, from every stage, under live traffic.

Two producer threads publish keyed events through ``migrate://`` and a consumer group of two
members handles them, while the operator moves the topic up to a stage (backfill, verify and
the group's cutover on the way) and then all the way back to ``source-only``, as the runbook
says: from ``target-only`` back to ``dual-target-primary`` and a reverse backfill of what was
written meanwhile; back to ``dual-source-primary``; the group cut over to the source; back to
``source-only``.

Checked: every published event was handled, none twice, per-key order held; and once back at
``source-only`` the source (Redis) holds every published event exactly once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest

import eventbus
from eventbus.migration import Migration
from eventbus.testing.conformance import wait_until
from tests.migration.checks import partition_events
from tests.migration.procs import migrate_url
from tests.migration.scenario import (
    HISTORY,
    Tally,
    ThreadWorkers,
    check,
    producing,
    wait_for_empty_journal,
)

pytestmark = [pytest.mark.redis, pytest.mark.kafka]

PARTITIONS = 2


async def _drill(
    m: Migration,
    topic: str,
    group: str,
    top: str,
    traffic: Callable[[], Awaitable[None]],
    seen: list[str],
) -> None:
    """Up to ``top``, then back down to source-only, as the runbook says."""

    async def then() -> None:
        await traffic()
        seen.append((await m.control.require()).topics[topic].stage)

    await m.init([topic])
    await m.advance(topic)  # dual-source-primary
    await then()
    await m.backfill(topic)
    await wait_for_empty_journal(m, topic)
    assert (await m.verify(topic)).ok
    if top != "dual-source-primary":
        await m.advance(topic)  # dual-target-primary
        await then()
        await m.cutover(group, topic)  # the group moves to the target while it is primary
        await then()
        if top == "target-only":
            await m.advance(topic)
            await then()
            await m.rollback(topic)  # back to dual-target-primary ...
            await then()
            await m.backfill(topic)  # ... and the target-only events copied back
            await then()
        await wait_for_empty_journal(m, topic)
        await m.rollback(topic)  # back to dual-source-primary, the group still on the target
        await then()
    await m.cutover(group, topic, to="source")  # moves back while the source is primary
    await then()
    await m.rollback(topic)  # back to source-only
    await then()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("top", ["dual-source-primary", "dual-target-primary", "target-only"])
def test_rollback_drill_from_every_stage(redis_url: str, kafka_url: str, top: str) -> None:
    name, topic = f"rb{uuid.uuid4().hex[:6]}", f"orders-{uuid.uuid4().hex[:6]}"
    group = f"workers-{uuid.uuid4().hex[:6]}"
    url = migrate_url(name, redis_url, kafka_url)
    with eventbus.connect(redis_url) as bus:
        bus.create_topic(topic, partitions=PARTITIONS)
        bus.publish_many(
            topic, [eventbus.Event(data={"seq": i}, key="history") for i in range(HISTORY)]
        )
        history = [r.event.id for r in bus.replay(topic)]
    tally = Tally()
    seen: list[str] = []

    async def traffic(more: int = 100) -> None:
        goal = len(tally.published) + more
        limit = time.monotonic() + 30
        while len(tally.published) < goal:
            assert time.monotonic() < limit, "the producers stopped publishing"
            await asyncio.sleep(0.02)  # allowed: polling interval of a condition wait

    async def operate() -> None:
        m = await Migration.open(name, redis_url, kafka_url)
        try:
            await _drill(m, topic, group, top, traffic, seen)
        finally:
            await m.close()

    with ThreadWorkers(url, topic, group) as workers:
        workers.start()
        with producing(url, topic, tally, count=2):
            asyncio.run(asyncio.wait_for(operate(), 150))
        expected = set(history) | set(tally.published)
        wait_until(lambda: {h.id for h in workers.handled()} >= expected, 60, "every event handled")
        workers.stop()
        tally.handled = workers.handled()
    tally.published = history + tally.published

    async def source_entries() -> list[tuple[str, str, str]]:
        m = await Migration.open(name, redis_url, kafka_url)
        try:
            held = await partition_events(m.source, topic, PARTITIONS)
            return [e for entries in held.values() for e in entries]
        finally:
            await m.close()

    entries = asyncio.run(source_entries())
    on_source = Counter(e[0] for e in entries)
    assert seen[-1] == "source-only", seen
    check(tally)
    missing = set(tally.published) - set(on_source)
    assert not missing, f"{len(missing)} published events are not on the source after rollback"
    twice = [i for i, n in on_source.items() if n > 1]
    assert not twice, f"{len(twice)} events twice on the source"
    # per key, the source holds the events in the order they were published
    rank = {eid: n for n, eid in enumerate(tally.published)}
    by_key: dict[str, list[int]] = {}
    for eid, key, _ in entries:
        by_key.setdefault(key, []).append(rank[eid])
    wrong = [k for k, ranks in by_key.items() if ranks != sorted(ranks)]
    assert not wrong, f"keys out of publish order on the source: {wrong[:5]}"
