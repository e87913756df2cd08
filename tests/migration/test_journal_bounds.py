"""The dual-write journal, Redis -> Kafka (issue #18, hole 8): a restarted producer keeps
journaling behind its earlier copies, and a journal that reaches its limit refuses publishes
loudly instead of growing without bound.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

import eventbus
from eventbus.migration import Migration
from eventbus.migration.transport import JournalFullError, journal_topic
from tests.migration.procs import migrate_url
from tests.migration.scenario import ProcessWorkers, Tally, producing, wait_for_empty_journal
from tests.migration.test_topologies import _finish, _traffic, _with_history

pytestmark = [pytest.mark.redis, pytest.mark.kafka]


@pytest.mark.timeout(120)
def test_restarted_producer_journals_behind_its_earlier_copies(
    redis_url: str, kafka_url: str, tmp_path: Path
) -> None:
    """Producers publish while the backfill has not run (their copies wait in the journal),
    stop, and start again right after the backfill with the same keys (a restart): their new
    copies go to the journal behind the old ones, not directly to Kafka ahead of them, so
    every key is in the same order on both sides and verify passes."""
    name, group, topic = (f"{p}-{uuid.uuid4().hex[:6]}" for p in ("m", "g", "t"))
    history = _with_history(redis_url, [topic])
    url = migrate_url(name, redis_url, kafka_url)
    tally = Tally()
    traffic = _traffic(tally)

    def restart() -> None:
        with producing(url, topic, tally, count=2, first_seq=100_000):
            asyncio.run(asyncio.wait_for(after_restart(), 90))

    async def after_restart() -> None:
        m = await Migration.open(name, redis_url, kafka_url)
        try:
            await traffic()
            await wait_for_empty_journal(m, topic)
            report = await m.verify(topic)  # per-key order on both sides included
            assert report.ok, report.summary()
            await m.advance(topic)
            await m.cutover(group, topic)
            await traffic()
            await m.advance(topic)
            await traffic()
        finally:
            await m.close()

    async def before_restart() -> None:
        m = await Migration.open(name, redis_url, kafka_url)
        try:
            await m.init([topic])
            await m.advance(topic)  # dual-source-primary: copies wait for the backfill
            await traffic(300)
        finally:
            await m.close()

    async def backfill() -> None:
        m = await Migration.open(name, redis_url, kafka_url)
        try:
            await m.backfill(topic)
        finally:
            await m.close()

    with ProcessWorkers(url, topic, group, tmp_path) as workers:
        workers.start()
        with producing(url, topic, tally, 2):
            asyncio.run(asyncio.wait_for(before_restart(), 60))
        asyncio.run(asyncio.wait_for(backfill(), 60))
        restart()
        _finish(workers, tally, history)


@pytest.mark.timeout(60)
def test_full_journal_refuses_publishes(redis_url: str, kafka_url: str) -> None:
    """With ``journal_limit=50`` and copies waiting for the backfill, publishes are refused
    once 50 wait, saying why and what to do; after the backfill the journal drains,
    publishing works again, and the replayed copies are deleted from the journal."""
    name, topic = f"m-{uuid.uuid4().hex[:6]}", f"t-{uuid.uuid4().hex[:6]}"
    with eventbus.connect(redis_url) as admin:
        admin.create_topic(topic, partitions=2)
    url = migrate_url(name, redis_url, kafka_url) + "&journal_limit=50"

    async def operate() -> None:
        m = await Migration.open(name, redis_url, kafka_url)
        try:
            await m.init([topic])
            await m.advance(topic)
            published, refused = 0, None
            deadline = time.monotonic() + 30
            with eventbus.connect(url) as bus:
                while refused is None:
                    assert time.monotonic() < deadline, "never refused"
                    try:
                        await asyncio.to_thread(bus.publish, topic, {"n": published})
                        published += 1
                    except JournalFullError as exc:
                        refused = exc
                assert published >= 50
                assert "journal_limit" in str(refused) and "drain" in str(refused)
                await m.backfill(topic)
                await wait_for_empty_journal(m, topic)
                deadline = time.monotonic() + 30
                while True:  # the limit is measured each poll: refused until then
                    try:
                        await asyncio.to_thread(bus.publish, topic, {"n": published})
                        break
                    except JournalFullError:
                        assert time.monotonic() < deadline, "still refused after the drain"
                        await asyncio.sleep(0.1)  # allowed: polling interval of a condition
                journal = journal_topic(name, topic)
                deadline = time.monotonic() + 30
                while (await m.source.describe_topic(journal)).count:
                    assert time.monotonic() < deadline, "replayed copies stay in the journal"
                    await asyncio.sleep(0.1)  # allowed: polling interval of a condition
        finally:
            await m.close()

    asyncio.run(asyncio.wait_for(operate(), 50))
