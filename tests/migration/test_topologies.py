"""Migration on real topologies, Redis -> Kafka, with live producers and worker processes:
a group that reads several topics (issue #18, hole 2) and groups nobody cut over (hole 3).

Every test checks, besides its own point, that each published event was handled by the
migrated group exactly once and in per-key order.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import eventbus
from eventbus.errors import ConfigurationError
from eventbus.migration import Migration
from eventbus.partitioning import partition_for_key
from eventbus.testing.conformance import wait_until
from tests.migration.procs import migrate_url
from tests.migration.scenario import (
    HISTORY,
    ProcessWorkers,
    Tally,
    ThreadWorkers,
    check,
    producing,
    wait_for_empty_journal,
)

pytestmark = [pytest.mark.redis, pytest.mark.kafka]


def _uid() -> str:
    return uuid.uuid4().hex[:6]


def _with_history(source_url: str, topics: list[str], partitions: int = 2) -> list[str]:
    """Create ``topics`` on the source with some history each; returns the history's ids."""
    ids: list[str] = []
    with eventbus.connect(source_url) as admin:
        for t in topics:
            admin.create_topic(t, partitions=partitions)
            events = [eventbus.Event(data={"seq": i}, key=f"{t}-h") for i in range(HISTORY)]
            admin.publish_many(t, events)
            ids += [r.event.id for r in admin.replay(t)]
    return ids


def _traffic(tally: Tally) -> Callable[..., Awaitable[None]]:
    async def traffic(more: int = 150) -> None:
        """Wait until the producers have published ``more`` events since the call."""
        goal = len(tally.published) + more
        limit = time.monotonic() + 30
        while len(tally.published) < goal:
            assert time.monotonic() < limit, "the producers stopped publishing"
            await asyncio.sleep(0.02)  # allowed: polling interval of a condition wait

    return traffic


async def _to_dual_verified(
    m: Migration, topics: list[str], traffic: Callable[[], Awaitable[None]]
) -> None:
    """init, dual-source-primary, backfill and a passing verify for each topic."""
    await m.init(topics)
    for t in topics:
        await m.advance(t)
    await traffic()
    for t in topics:
        await m.backfill(t)
    for t in topics:
        await wait_for_empty_journal(m, t)
        report = await m.verify(t)
        assert report.ok, report.summary()


def _finish(workers: ProcessWorkers, tally: Tally, history: list[str]) -> None:
    expected = set(history) | set(tally.published)
    wait_until(lambda: {h.id for h in workers.handled()} >= expected, 60, "every event handled")
    workers.stop()
    tally.handled = workers.handled()
    tally.published = history + tally.published
    check(tally)


@pytest.mark.timeout(150)
def test_group_reading_two_topics_moves_with_both(
    redis_url: str, kafka_url: str, tmp_path: Path
) -> None:
    """A group reading topics A and B: cutover refuses while B is not ready (naming it) and
    changes nothing; once both are, one cutover moves the group with both, translating each
    (skip ranges keyed by topic: B's records at A's offsets are not skipped); a second
    cutover naming B finds it already moved and changes nothing."""
    name, group = f"m{_uid()}", f"g-{_uid()}"
    a, b = f"ta-{_uid()}", f"tb-{_uid()}"
    history = _with_history(redis_url, [a, b])
    url = migrate_url(name, redis_url, kafka_url)
    tally = Tally()
    traffic = _traffic(tally)

    async def operate() -> None:
        m = await Migration.open(name, redis_url, kafka_url)
        try:
            await _to_dual_verified(m, [a, b], traffic)
            await m.advance(a)  # a: dual-target-primary; b stays dual-source-primary
            await traffic()
            with pytest.raises(ConfigurationError, match=rf"not ready: {b} \(dual-source-primary"):
                await m.cutover(group, a)
            state = await m.control.require()
            assert group not in state.groups, "a refused cutover changed nothing"
            await m.advance(b)
            await traffic()
            moved = await m.cutover(group, a)
            assert moved.status == "target"
            assert moved.topics == sorted([a, b])
            assert set(moved.positions) == {a, b}
            again = await m.cutover(group, b)
            assert again.switched_at == moved.switched_at, "already moved with b: unchanged"
            await traffic()
            await m.advance(a)
            await m.advance(b)
            await traffic()
        finally:
            await m.close()

    with ProcessWorkers(url, [a, b], group, tmp_path) as workers:
        workers.start()
        with producing(url, a, tally, count=2, prefix="a"), producing(url, b, tally, 2, "b"):
            asyncio.run(asyncio.wait_for(operate(), 100))
        _finish(workers, tally, history)


@pytest.mark.timeout(150)
def test_target_only_refuses_groups_not_cut_over(
    redis_url: str, kafka_url: str, tmp_path: Path
) -> None:
    """advance to target-only is refused, naming them, while a group that reads the topic
    was not cut over: one seen only on the source's server (it read there directly), one
    seen only in a live migrate:// member's heartbeat. Nothing changes. With both abandoned
    explicitly it goes on."""
    name, group = f"m{_uid()}", f"g-{_uid()}"
    audit, watch = f"audit-{_uid()}", f"watch-{_uid()}"
    topic = f"t-{_uid()}"
    history = _with_history(redis_url, [topic])
    with eventbus.connect(redis_url) as bus, bus.subscribe(topic, group=audit) as sub:
        sub.ack(sub.fetch(5, timeout=5.0))  # positions of `audit` on the source's server
    url = migrate_url(name, redis_url, kafka_url)
    tally = Tally()
    traffic = _traffic(tally)

    async def operate() -> None:
        m = await Migration.open(name, redis_url, kafka_url)
        try:
            await _to_dual_verified(m, [topic], traffic)
            await m.advance(topic)  # dual-target-primary
            await m.cutover(group, topic)
            await traffic()
            with pytest.raises(ConfigurationError) as refused:
                await m.advance(topic)
            text = str(refused.value)
            assert audit in text and "positions on the source" in text, text
            assert watch in text and "live member" in text, text
            assert group not in text, text
            assert (await m.control.require()).topics[topic].stage == "dual-target-primary"
            with pytest.raises(ConfigurationError, match=watch):
                await m.advance(topic, abandon=[audit])
            state = await m.advance(topic, abandon=[audit, watch])
            assert state.topics[topic].stage == "target-only"
            await traffic()
        finally:
            await m.close()

    with (
        ProcessWorkers(url, topic, group, tmp_path) as workers,
        ThreadWorkers(url, topic, watch) as watchers,
    ):
        workers.start()
        watchers.start()
        with producing(url, topic, tally, count=2):
            asyncio.run(asyncio.wait_for(operate(), 100))
        watchers.stop()
        _finish(workers, tally, history)


def _keys_on(partitions: set[int], count: int, n: int) -> list[str]:
    """``n`` keys that land on ``partitions`` of a topic with ``count`` partitions."""
    found = (f"k{i}" for i in range(10_000))
    return [k for k in found if partition_for_key(k.encode(), count) in partitions][:n]


@pytest.mark.timeout(120)
def test_cutover_gives_every_partition_a_position(
    redis_url: str, kafka_url: str, tmp_path: Path
) -> None:
    """A group whose members start at "latest" (their setting) and a partition that is empty
    when the group is cut over (its worker processes are down meanwhile, as after a
    deploy): events published there after the cutover, before the members join on Kafka,
    are handled, because the partition got an explicit position, not the members' "latest"."""
    name, group, topic = f"m{_uid()}", f"g-{_uid()}", f"t-{_uid()}"
    with eventbus.connect(redis_url) as admin:
        admin.create_topic(topic, partitions=3)
        with admin.subscribe(topic, group=group, start="latest") as sub:
            assert sub.fetch(1, timeout=0.5) == []  # the group exists, at the end
    url = migrate_url(name, redis_url, kafka_url)
    early = _keys_on({0, 1}, 3, 8)
    late = _keys_on({2}, 3, 2)
    tally = Tally()
    traffic = _traffic(tally)
    workers = ProcessWorkers(url, topic, group, tmp_path, extra=("--start", "latest"))

    def publish_late() -> None:
        with eventbus.connect(url) as bus:
            for seq in range(20):
                event = eventbus.Event(data={"seq": seq}, key=late[seq % 2])
                bus.publish(topic, event)
                with tally.lock:
                    tally.published.append(event.id)

    async def operate() -> None:
        m = await Migration.open(name, redis_url, kafka_url)
        try:
            await _to_dual_verified(m, [topic], traffic)
            await m.advance(topic)
            await asyncio.to_thread(workers.stop)
            moved = await m.cutover(group, topic)
            assert 2 not in moved.positions[topic].start, "partition 2 was empty"
            await asyncio.to_thread(publish_late)  # before the members join on Kafka
            await asyncio.to_thread(workers.start)
            await traffic()
            await m.advance(topic)
        finally:
            await m.close()

    def keys(n: int, seq: int) -> str:
        return early[(n * 4 + seq % 4) % len(early)]

    with workers:
        workers.start()
        with producing(url, topic, tally, count=2, keys=keys):
            asyncio.run(asyncio.wait_for(operate(), 90))
        _finish(workers, tally, [])
