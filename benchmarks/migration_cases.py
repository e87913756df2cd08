"""Migration rows (Redis source, Kafka target): dual-write publish and backfill.

Dual-write: ``migrate://`` in ``dual-source-primary`` after an (empty) backfill, so every batch
goes to Redis and then straight to Kafka (no journal), against eventbus publishing to each side
alone; the target compares with the slower single transport. Backfill: ``Migration.backfill``
of a prefilled one-partition topic against a raw copy (XRANGE pages of 1000 read with redis-py,
each entry produced with confluent-kafka, one final flush).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import redis

import eventbus
from benchmarks.harness import Clock, Env, Row, Side, Target, chunks, keys, payload, timed_async
from benchmarks.kafka_cases import raw_producer
from eventbus.migration import Migration


def migrate_url(name: str, source: str, target: str) -> str:
    return f"migrate://{name}?source={quote(source, safe='')}&target={quote(target, safe='')}"


def _events(data: dict[str, str], ks: list[str], lo: int, hi: int) -> list[eventbus.Event]:
    return [eventbus.Event(data=data, key=ks[i % len(ks)]) for i in range(lo, hi)]


async def _prepare(env: Env, name: str, topic: str, *, backfill: bool) -> Migration:
    """init + advance to dual-source-primary (+ backfill, so dual writes skip the journal)."""
    assert env.redis_url is not None and env.kafka_url is not None
    migration = await Migration.open(name, env.redis_url, env.kafka_url)
    await migration.init([topic])
    await migration.advance(topic)
    if backfill:
        await migration.backfill(topic)
    return migration


@contextlib.contextmanager
def dual_write(env: Env, size: int) -> Iterator[Row]:
    assert env.redis_url is not None and env.kafka_url is not None
    data, ks = payload(size), keys()
    name, topic = env.name("mig"), env.name("dual")
    rtopic, ktopic = env.name("ronly"), env.name("konly")
    rbus = eventbus.connect_async(env.redis_url)
    kbus = eventbus.connect_async(env.kafka_url)
    env.run(rbus.connect())
    env.run(kbus.connect())
    env.run(rbus.create_topic(topic, partitions=1))
    env.run(rbus.create_topic(rtopic, partitions=1))
    env.run(kbus.create_topic(ktopic, partitions=1))
    migration = env.run(_prepare(env, name, topic, backfill=True))
    mbus = eventbus.connect_async(migrate_url(name, env.redis_url, env.kafka_url))
    env.run(mbus.connect())
    raw = redis.Redis.from_url(env.redis_url)

    def publisher(bus: eventbus.AsyncEventBus, where: str) -> Any:
        async def work(n: int) -> None:
            for lo, hi in chunks(n):
                await bus.publish_many(where, _events(data, ks, lo, hi))

        return timed_async(env, work)

    def trim() -> None:
        raw.xtrim(topic, maxlen=0)
        raw.xtrim(rtopic, maxlen=0)

    try:
        yield Row(
            key=f"migration.dual_write.{size}",
            title="dual-write publish_many (migrate://)",
            transport="redis->kafka",
            payload=size,
            count=env.count(10_000, 50_000),
            sides=[
                Side("eventbus migrate:// publish_many", "eventbus", publisher(mbus, topic), trim),
                Side("eventbus redis:// publish_many", "reference", publisher(rbus, rtopic), trim),
                Side("eventbus kafka:// publish_many", "reference", publisher(kbus, ktopic), trim),
            ],
            targets=[
                Target(
                    "eventbus migrate:// publish_many",
                    "eventbus redis:// publish_many|eventbus kafka:// publish_many",
                    0.8,
                    "dual-write >= 0.8x the slower single transport",
                ),
            ],
            note="async API; one partition; the secondary write follows the primary's",
        )
    finally:
        trim()
        env.run(mbus.close())
        env.run(migration.close())
        env.run(rbus.delete_topic(topic))
        env.run(rbus.delete_topic(rtopic))
        env.run(kbus.delete_topic(topic))
        env.run(kbus.delete_topic(ktopic))
        env.run(rbus.close())
        env.run(kbus.close())
        raw.close()


@contextlib.contextmanager
def backfill(env: Env, size: int) -> Iterator[Row]:
    assert env.redis_url is not None and env.kafka_url is not None
    data, ks = payload(size), keys()
    rbus = eventbus.connect_async(env.redis_url)
    kbus = eventbus.connect_async(env.kafka_url)
    env.run(rbus.connect())
    env.run(kbus.connect())
    raw = redis.Redis.from_url(env.redis_url)
    producer = raw_producer(env)
    made: list[tuple[Any, str]] = []  # (bus, topic) to delete at the end
    pending: dict[str, Any] = {}

    async def fill(topic: str, n: int) -> None:
        await rbus.create_topic(topic, partitions=1)
        made.append((rbus, topic))
        for lo, hi in chunks(n):
            await rbus.publish_many(topic, _events(data, ks, lo, hi))

    def setup(n: int, *, migrate: bool) -> str:
        topic = env.name("bf")
        env.run(fill(topic, n))
        if migrate:
            pending["migration"] = env.run(_prepare(env, env.name("mig"), topic, backfill=False))
        else:
            env.run(kbus.create_topic(topic, partitions=1))
        made.append((kbus, topic))
        return topic

    def eb(n: int) -> float:
        topic = setup(n, migrate=True)
        migration: Migration = pending.pop("migration")
        try:
            with Clock() as clock:
                copied = env.run(migration.backfill(topic))
        finally:
            env.run(migration.close())
        assert copied == n, (copied, n)
        return clock.seconds

    def ref(n: int) -> float:
        topic = setup(n, migrate=False)
        with Clock() as clock:
            start, copied = "-", 0
            while True:
                page: Any = raw.xrange(topic, min=start, count=1000)
                for _entry_id, fields in page:
                    producer.produce(
                        topic,
                        fields.get(b"_v", b""),
                        key=fields.get(b"_k"),
                        headers=[(k[2:].decode(), v) for k, v in fields.items() if k[:2] == b"h:"],
                    )
                    producer.poll(0)
                copied += len(page)
                if len(page) < 1000:
                    break
                start = "(" + page[-1][0].decode()
            producer.flush(60)
        assert copied == n, (copied, n)
        return clock.seconds

    try:
        yield Row(
            key=f"migration.backfill.{size}",
            title="backfill Redis -> Kafka",
            transport="redis->kafka",
            payload=size,
            count=env.count(10_000, 50_000),
            sides=[
                Side("eventbus Migration.backfill", "eventbus", eb),
                Side("redis-py XRANGE 1000 + confluent produce", "reference", ref),
            ],
            targets=[
                Target(
                    "eventbus Migration.backfill",
                    "redis-py XRANGE 1000 + confluent produce",
                    0.8,
                    "backfill >= 0.8x raw copy",
                ),
            ],
            note="each run copies a freshly filled topic; setup is outside the timed region",
        )
    finally:
        for bus, topic in made:
            with contextlib.suppress(eventbus.EventBusError):
                env.run(bus.delete_topic(topic))
        env.run(rbus.close())
        env.run(kbus.close())
        raw.close()
