"""A publish interrupted between the primary write and its copy, Redis -> Kafka (issue #18,
hole 7).

While producers publish and two worker processes consume through ``migrate://``, a service
publishes events whose direct copy to Kafka is interrupted: the caller's task is cancelled
while the copy is on its way (a caller's timeout, a shutdown), or the copy fails with an
error that is not transient (``TopicNotFoundError``, as from a topic missing on the
secondary). The events are on Redis (the primary), so their copies are journaled anyway and
replayed: Kafka ends up with every one of them. The cancelled caller still sees its cancel;
the failed copy does not fail the publish. And ``advance`` does not accept a verification
older than such a failure.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import eventbus
from eventbus.aio import connect_async
from eventbus.errors import ConfigurationError, ConnectionFailedError, TopicNotFoundError
from eventbus.migration import Migration
from eventbus.migration.transport import MigrationTransport
from eventbus.transport import Outgoing
from tests.migration.checks import held
from tests.migration.procs import migrate_url
from tests.migration.scenario import ProcessWorkers, Tally, producing, wait_for_empty_journal
from tests.migration.test_topologies import _finish, _to_dual_verified, _traffic, _with_history

pytestmark = [pytest.mark.redis, pytest.mark.kafka]


class Interrupting:
    """Wraps a copy writer: the next copy write waits forever (``hang``) or raises a
    TopicNotFoundError (``fail``); others pass through."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.mode: str | None = None
        self.entered = asyncio.Event()
        self.down = False
        """Every copy write fails as if the secondary were down (it goes to the journal)."""

    async def publish(self, topic: str, records: Sequence[Outgoing], *, timeout: float) -> Any:
        mode, self.mode = self.mode, None
        if mode == "hang":
            self.entered.set()
            await asyncio.Event().wait()
        if mode == "fail":
            raise TopicNotFoundError(f"topic {topic!r} does not exist (injected)")
        if self.down:
            raise ConnectionFailedError("the secondary is down (injected)")
        return await self.inner.publish(topic, records, timeout=timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.timeout(120)
def test_interrupted_copies_are_journaled(redis_url: str, kafka_url: str, tmp_path: Path) -> None:
    name, group, topic = (f"{p}-{uuid.uuid4().hex[:6]}" for p in ("m", "g", "t"))
    history = _with_history(redis_url, [topic])
    url = migrate_url(name, redis_url, kafka_url)
    tally = Tally()
    traffic = _traffic(tally)
    interrupted: list[str] = []

    async def direct(transport: MigrationTransport) -> None:
        """Wait until the service writes copies directly again (its journaled ones are
        replayed: a service that journaled keeps journaling until then, to keep order)."""
        deadline = time.monotonic() + 30
        while topic in transport._journaling:
            assert time.monotonic() < deadline, "the service did not leave the journal"
            await asyncio.sleep(0.1)  # allowed: polling interval of a condition wait

    async def interrupt(m: Migration) -> None:
        # its rescued copies are checked for on Kafka 1 + 2 s later (secondary_timeout 1)
        async with connect_async(f"{url}&secondary_timeout=1") as bus:
            transport = bus.transport
            assert isinstance(transport, MigrationTransport)
            writer = Interrupting(transport.target_writer)
            transport.target_writer = writer
            for mode in ("hang", "fail", "hang"):
                await direct(transport)
                writer.entered.clear()
                writer.mode = mode
                event = eventbus.Event(data={"seq": -1}, key=mode)
                task = asyncio.ensure_future(bus.publish(topic, event))
                interrupted.append(event.id)
                if mode == "fail":
                    await task  # the primary has it: the publish succeeds
                    continue
                await asyncio.wait_for(writer.entered.wait(), 10)  # primary written, copying
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            with pytest.raises(ConfigurationError, match="after the last verification"):
                await m.advance(topic)
            await wait_for_empty_journal(m, topic)

    async def operate() -> None:
        m = await Migration.open(name, redis_url, kafka_url)
        try:
            await _to_dual_verified(m, [topic], traffic)
            await interrupt(m)
            report = await m.verify(topic)
            assert report.ok, report.summary()
            await m.advance(topic)
            await m.cutover(group, topic)
            await traffic()
        finally:
            await m.close()

    async def settle(then_advance: bool) -> None:
        # after the producers stop: what they would publish in target-only is on Kafka alone
        m = await Migration.open(name, redis_url, kafka_url)
        try:
            await wait_for_empty_journal(m, topic)  # copies to Redis of the last publishes
            if then_advance:
                await m.advance(topic)
        finally:
            await m.close()

    with ProcessWorkers(url, topic, group, tmp_path) as workers:
        workers.start()
        with producing(url, topic, tally, count=2):
            asyncio.run(asyncio.wait_for(operate(), 100))
        asyncio.run(asyncio.wait_for(settle(then_advance=False), 60))
        both = held(name, redis_url, kafka_url, topic, 2)
        asyncio.run(asyncio.wait_for(settle(then_advance=True), 60))
        _finish(workers, tally, history)
    both.assert_same_events()
    on_kafka = {e[0] for entries in both.target.values() for e in entries}
    assert set(interrupted) <= on_kafka


@pytest.mark.timeout(120)
def test_cutover_waits_for_a_lagging_producer(
    redis_url: str, kafka_url: str, tmp_path: Path
) -> None:
    """A producer that stalled (its control loop stopped, as in a long pause) still follows
    dual-source-primary after the topic moved to dual-target-primary: it writes to Redis and
    its copies, failing, go to Redis's journal, which in dual-target-primary nobody replays.
    The group handles those events on Redis. The cutover waits until that producer follows
    the current stage or is gone, replays that journal and only then translates: Kafka gets
    the events, and the group does not handle them again there."""
    name, group, topic = (f"{p}-{uuid.uuid4().hex[:6]}" for p in ("m", "g", "t"))
    history = _with_history(redis_url, [topic])
    url = migrate_url(name, redis_url, kafka_url)
    tally = Tally()
    traffic = _traffic(tally)

    async def operate() -> None:
        m = await Migration.open(name, redis_url, kafka_url)
        try:
            await _to_dual_verified(m, [topic], traffic)
            async with connect_async(url) as bus:
                transport = bus.transport
                assert isinstance(transport, MigrationTransport)
                writer = Interrupting(transport.target_writer)
                transport.target_writer = writer
                await bus.publish(topic, eventbus.Event(data={"seq": 0}, key="lagging"))
                await m.advance(topic)  # dual-target-primary; it acknowledged the stage before
                for task in transport._tasks:  # its control loop stalls: it lags from now on
                    task.cancel()
                writer.down = True
                for seq in range(1, 6):
                    event = eventbus.Event(data={"seq": seq}, key="lagging")
                    await bus.publish(topic, event)
                    with tally.lock:
                        tally.published.append(event.id)
                await traffic()
                moved = await m.cutover(group, topic)
                assert moved.status == "target"
            await traffic()
            await m.advance(topic)
            await traffic()
        finally:
            await m.close()

    with ProcessWorkers(url, topic, group, tmp_path) as workers:
        workers.start()
        with producing(url, topic, tally, count=2):
            asyncio.run(asyncio.wait_for(operate(), 100))
        _finish(workers, tally, history)
    both = held(name, redis_url, kafka_url, topic, 2)
    on_kafka = {e[0] for entries in both.target.values() for e in entries}
    assert set(tally.published) <= on_kafka, "every event is on Kafka"
