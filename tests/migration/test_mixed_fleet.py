"""A mixed fleet through the whole migration, Redis -> Kafka (issue #19).

A legacy producer and a legacy consumer (plain redis-py with their own field convention,
``type`` / ``payload`` / ``task``, no eventbus import in their code) share a stream with
eventbus services, whose topic declares that convention as its stream layout. The operator
moves the topic through every stage while everybody runs, with ``follow`` copying what the
legacy producer writes. Checked: the eventbus workers handle every event of both kinds,
typed, each once; the legacy consumer reads every eventbus event published while it ran,
in its own fields; Kafka ends up with every event keyed as the layout says; verify passes
while the legacy producer still writes; ``target-only`` is refused until the legacy
producer has been quiet for ``LEGACY_QUIET``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import Counter
from typing import Any

import pytest
import redis
from pydantic import BaseModel

import eventbus
from eventbus.errors import ConfigurationError
from eventbus.migration import Migration, stages
from eventbus.topics import StreamLayout
from tests.kafka.test_cloudevents import _kcat, consume_raw
from tests.migration.procs import migrate_url
from tests.migration.scenario import wait_for_empty_journal

pytestmark = [pytest.mark.redis, pytest.mark.kafka]

LAYOUT = StreamLayout(type="type", data="payload", key="task")


class Task(BaseModel):
    origin: str
    n: int


class LegacyProducer:
    """XADD type/payload/task at a steady pace until stopped."""

    def __init__(self, url: str, topic: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.topic = topic
        self.sent: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def write(self, n: int) -> None:
        payload = json.dumps({"origin": "legacy", "n": n})
        self.client.xadd(
            self.topic, {"type": "TaskCreated", "payload": payload, "task": f"L{n % 3}"}
        )
        self.sent.append(n)

    def _run(self) -> None:
        n = len(self.sent)
        while not self.stop.is_set():
            self.write(n)
            n += 1
            self.stop.wait(0.01)  # a producer's pace, not a wait for a condition

    def halt(self) -> None:
        self.stop.set()
        self.thread.join(10)


class LegacyConsumer:
    """XREADGROUP in its own group; keeps (origin, n) of what it reads, from its own fields."""

    def __init__(self, url: str, topic: str, group: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.topic, self.group = topic, group
        self.client.xgroup_create(topic, group, id="0")
        self.seen: list[tuple[str, int]] = []
        self.unreadable: list[dict[bytes, bytes]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            reply = self.client.xreadgroup(
                self.group, "c1", {self.topic: ">"}, count=100, block=200
            )
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    try:
                        assert fields[b"type"] == b"TaskCreated"
                        data = json.loads(fields[b"payload"])
                        self.seen.append((data["origin"], data["n"]))
                    except (KeyError, AssertionError, ValueError):
                        self.unreadable.append(fields)
                    self.client.xack(self.topic, self.group, entry_id)

    def halt(self) -> None:
        self.stop.set()
        self.thread.join(10)


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)  # allowed: polling interval of a condition wait


@pytest.mark.timeout(240)
def test_legacy_and_eventbus_services_share_a_stream_through_every_stage(
    redis_url: str, kafka_url: str, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stages, "LEGACY_QUIET", 2.0)  # the default, a minute, is long for a test
    # Kafka consumers outside eventbus (Dapr, Knative, Spring) read CloudEvents headers
    kafka_url += ("&" if "?" in kafka_url else "?") + "envelope=cloudevents&ce_source=/fleet"
    name, topic = f"m-{uuid.uuid4().hex[:6]}", f"t-{uuid.uuid4().hex[:6]}"
    group, readers = f"svc-{uuid.uuid4().hex[:6]}", f"legacy-{uuid.uuid4().hex[:6]}"
    with eventbus.connect(redis_url) as admin:
        admin.create_topic(topic, partitions=1, layout=LAYOUT)
    legacy = LegacyProducer(redis_url, topic)
    for n in range(30):  # history from before the migration
        legacy.write(n)
    reader = LegacyConsumer(redis_url, topic, readers)
    url = migrate_url(name, redis_url, kafka_url)
    published: list[int] = []
    handled: Counter[tuple[str, int]] = Counter()
    lock = threading.Lock()

    with eventbus.connect(url) as bus:

        def handle(delivery: eventbus.Delivery) -> None:
            task = Task.model_validate(delivery.event.data)
            assert delivery.event.type == "TaskCreated"
            with lock:
                handled[(task.origin, task.n)] += 1

        runner = bus.runner(handle, topic, group=group, model=Task, session_timeout=6.0)
        worker = threading.Thread(target=runner.run, daemon=True)
        worker.start()
        stop_publishing = threading.Event()

        def publish() -> None:
            n = 0
            while not stop_publishing.is_set():
                data = {"origin": "eventbus", "n": n}
                bus.publish(topic, eventbus.Event(type="TaskCreated", data=data, key=f"E{n % 3}"))
                published.append(n)
                n += 1
                stop_publishing.wait(0.01)  # a producer's pace

        producer = threading.Thread(target=publish, daemon=True)
        legacy.thread.start()
        reader.thread.start()
        producer.start()

        def more(count: int) -> None:
            goal_l, goal_e = len(legacy.sent) + count, len(published) + count
            _wait(lambda: len(legacy.sent) >= goal_l or legacy.stop.is_set(), 30, "legacy")
            _wait(lambda: len(published) >= goal_e, 30, "eventbus publishes")

        async def operate() -> None:
            m = await Migration.open(name, redis_url, kafka_url)
            stop_follow = asyncio.Event()
            try:
                await m.init([topic])
                await m.advance(topic)  # dual-source-primary
                await m.backfill(topic)  # the history, then follow what legacy writes
                follow = asyncio.ensure_future(m.follow(topic, interval=0.5, stop=stop_follow))
                await asyncio.to_thread(more, 60)
                await wait_for_empty_journal(m, topic)
                report = await m.verify(topic)  # the legacy producer still writes
                assert report.ok, report.summary()
                await m.advance(topic)  # dual-target-primary
                await m.cutover(group, topic)
                await asyncio.to_thread(more, 60)
                # retire the legacy services: the producer, then (once it read all) the reader
                await asyncio.to_thread(legacy.halt)
                stop_publishing.set()
                await asyncio.to_thread(producer.join, 10)
                await wait_for_empty_journal(m, topic)
                report = await m.verify(topic)
                assert report.ok, report.summary()
                expected = {("legacy", n) for n in legacy.sent} | {
                    ("eventbus", n) for n in published
                }
                await asyncio.to_thread(
                    _wait, lambda: set(reader.seen) >= expected, 30, "the legacy reader"
                )
                await asyncio.to_thread(reader.halt)
                # target-only waits until the legacy producer has been quiet for a while
                with pytest.raises(ConfigurationError, match="outside eventbus still writes"):
                    await m.advance(topic, abandon=[readers])
                deadline = time.monotonic() + 30
                while True:
                    try:
                        await m.advance(topic, abandon=[readers])  # target-only
                        break
                    except ConfigurationError as exc:
                        assert "outside eventbus" in str(exc), exc
                        assert time.monotonic() < deadline, "still refused"
                        await asyncio.sleep(0.2)  # allowed: polling interval of a condition
                await asyncio.wait_for(follow, 30)  # it ends with the dual stages
                for n in range(len(published), len(published) + 20):
                    data = {"origin": "eventbus", "n": n}
                    await asyncio.to_thread(
                        bus.publish, topic, eventbus.Event(type="TaskCreated", data=data)
                    )
                    published.append(n)
            finally:
                stop_follow.set()
                await m.close()

        asyncio.run(asyncio.wait_for(operate(), 200))
        expected = {("legacy", n) for n in legacy.sent} | {("eventbus", n) for n in published}
        _wait(lambda: set(handled) >= expected, 60, "every event handled")
        runner.stop()
        worker.join(30)

    assert not reader.unreadable, reader.unreadable[:3]
    assert Counter(reader.seen) == Counter(set(reader.seen)), "the legacy reader read one twice"
    twice = {k: c for k, c in handled.items() if c > 1}
    assert not twice, f"handled more than once: {list(twice)[:5]}"
    assert set(handled) == expected

    _check_kafka_side(kafka_url, kafka_bootstrap, topic, len(legacy.sent), len(expected))


def _check_kafka_side(
    kafka_url: str, bootstrap: str, topic: str, legacy_count: int, total: int
) -> None:
    """Kafka holds every event once, legacy ones keyed as the layout says, each a CloudEvent
    (backfilled, copied, journaled or published there) to kcat and to a plain consumer."""

    async def legacy_keys() -> list[str]:
        async with eventbus.connect_async(kafka_url) as kafka:
            return [
                r.event.key or ""
                async for r in kafka.replay(topic)
                if r.event.data["origin"] == "legacy"
            ]

    keys = asyncio.run(legacy_keys())
    assert len(keys) == legacy_count
    assert set(keys) == {"L0", "L1", "L2"}, "keyed as the layout says"
    rows = _kcat(bootstrap, topic)
    assert len(rows) == total
    for row in rows:
        headers = dict(zip(row["headers"][::2], row["headers"][1::2], strict=True))
        assert headers["ce_specversion"] == "1.0" and headers["ce_type"] == "TaskCreated"
        assert headers["ce_id"] and headers["content-type"] == "application/json"
        assert json.loads(row["payload"])["origin"] in ("legacy", "eventbus")
    raw = consume_raw(bootstrap, topic, total)
    assert len({dict(m.headers())["ce_id"] for m in raw}) == total, "each once, own ce_id"
