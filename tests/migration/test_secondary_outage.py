"""The secondary (Kafka) down during dual-write and back, on real servers.

Redis is the primary (``dual-source-primary``, history backfilled). Three producer threads
publish keyed events through ``migrate://`` while the test stops its own Kafka broker (SIGTERM,
then SIGKILL on the second round), keeps it down until the producers have published a few
hundred more events, and starts it again on the same ports and data.

Checked: publishing never failed and no call took longer than its bound
(``secondary_timeout``, plus at most 2 s while leaving the journal, plus slack) while Kafka
was down (the journal on Redis absorbed the copies); the services' own replayers empty the
journal while they keep publishing; then every event is on both sides exactly once, each
partition holds the same events, each key in the same order, and ``verify`` passes.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest

import eventbus
from eventbus._registry import open_transport
from eventbus.errors import EventBusError
from eventbus.migration import Migration
from eventbus.testing import servers
from eventbus.testing.conformance import wait_until
from eventbus.testing.fixtures import unavailable
from tests.migration.checks import held
from tests.migration.procs import migrate_url
from tests.migration.scenario import Tally, producing, wait_for_empty_journal
from tests.reliability.kafka_broker import start_again, stop_broker

pytestmark = [pytest.mark.redis, pytest.mark.kafka]

PARTITIONS = 3
SECONDARY_TIMEOUT = 1.0
OUTAGES = 2


@pytest.fixture
def own_kafka() -> Iterator[list[servers.ServerProcess]]:
    """A Kafka broker this test may stop; a one-item list so the test can swap in the
    restarted process. Stopped at the end whatever happens."""
    try:
        broker = servers.start_kafka()
    except servers.ServerError as exc:
        unavailable(f"no Kafka broker of its own for the outage test: {exc}")
    box = [broker]
    try:
        yield box
    finally:
        box[0].stop()


def _serves_reads(kafka_url: str, topic: str) -> bool:
    """True once a new client can read every partition of ``topic`` (after a restart the
    broker answers metadata before every partition has its leader back)."""

    async def read_all() -> None:
        transport = open_transport(kafka_url)
        try:
            await transport.connect()
            for p in range(PARTITIONS):
                await transport.read(topic, p, None, limit=1)
        finally:
            await transport.close()

    try:
        asyncio.run(read_all())
    except EventBusError:
        return False
    return True


@pytest.mark.timeout(240)
def test_kafka_down_during_dual_write_and_back(
    redis_url: str, own_kafka: list[servers.ServerProcess]
) -> None:
    kafka_url = own_kafka[0].url
    name, topic = f"out{uuid.uuid4().hex[:6]}", f"orders-{uuid.uuid4().hex[:6]}"
    with eventbus.connect(redis_url) as bus:
        bus.create_topic(topic, partitions=PARTITIONS)
        bus.publish_many(topic, [eventbus.Event(data={"seq": i}, key="history") for i in range(30)])

    async def prepare() -> None:
        m = await Migration.open(name, redis_url, kafka_url)
        try:
            await m.init([topic])
            await m.advance(topic)
            await m.backfill(topic)
        finally:
            await m.close()

    asyncio.run(prepare())
    url = migrate_url(name, redis_url, kafka_url) + f"&secondary_timeout={SECONDARY_TIMEOUT}"
    tally = Tally()

    def published_more(count: int, what: str) -> None:
        goal = len(tally.published) + count
        wait_until(lambda: len(tally.published) >= goal, 60, what)

    async def empty_journal() -> None:
        m = await Migration.open(name, redis_url, kafka_url)
        try:
            await wait_for_empty_journal(m, topic, timeout=90)
        finally:
            await m.close()

    during_outages = 0
    with producing(url, topic, tally):
        published_more(200, "publishes before the outage")
        for outage in range(OUTAGES):
            stop_broker(own_kafka[0], hard=outage % 2 == 1)
            before = len(tally.published)
            published_more(300, "publishes while Kafka is down")
            during_outages += len(tally.published) - before
            own_kafka[0] = start_again(own_kafka[0])
            wait_until(lambda: _serves_reads(own_kafka[0].url, topic), 60, "Kafka to serve reads")
            published_more(300, "publishes after Kafka is back")
        # the services' replayers move the journal while they keep publishing
        phase = time.monotonic()
        asyncio.run(empty_journal())
        replayed_in = time.monotonic() - phase

    async def settle() -> tuple[bool, str, int]:
        m = await Migration.open(name, redis_url, kafka_url)
        try:
            moved = await m.drain(topic)  # what the last publishes journaled, if anything
            await wait_for_empty_journal(m, topic)
            report = await m.verify(topic)
            return report.ok, report.summary(), moved
        finally:
            await m.close()

    ok, summary, moved = asyncio.run(settle())
    assert not tally.publish_errors, tally.publish_errors[:5]
    # the bound of a publish here: the secondary write (secondary_timeout), a pause of up to
    # 2 s while a member leaves the journal, the primary and journal writes; plus slack
    assert tally.slowest < SECONDARY_TIMEOUT + 2 + 3, f"a publish took {tally.slowest:.1f} s"
    both = held(name, redis_url, kafka_url, topic, PARTITIONS)
    assert sum(map(len, both.source.values())) == 30 + len(tally.published)
    both.assert_same_events()
    assert ok, summary
    print(
        f"\nsecondary outages: {OUTAGES}; published {len(tally.published)} "
        f"({during_outages} while Kafka was down), slowest publish {tally.slowest:.2f} s; "
        f"journal replayed by the services {replayed_in:.1f} s after the last restart; "
        f"drain moved {moved}; both sides identical"
    )
