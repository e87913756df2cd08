"""FastStream 0.7 rows: the same publishes through the peer library a user might pick instead.

Redis: FastStream's stream publisher (``broker.publish(..., stream=...)``), awaited in a gather
of 1000, and with a redis-py pipeline of 1000 (its documented ``pipeline=`` argument). Kafka:
its Confluent broker with the same producer settings as eventbus, ``publish_batch`` of 1000 and
a gather of 1000 awaited ``publish`` calls. FastStream is optional: without it the rows say so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import eventbus
from benchmarks.harness import Env, Row, Side, Target, chunks, keys, payload, timed_async
from benchmarks.kafka_cases import PARTITIONS, bootstrap


def _events(data: dict[str, str], ks: list[str], lo: int, hi: int) -> list[eventbus.Event]:
    return [eventbus.Event(data=data, key=ks[i % len(ks)]) for i in range(lo, hi)]


def _targets(ref_batch: str, ref_single: str) -> list[Target]:
    return [
        Target("eventbus async publish_many", ref_batch, 5.0,
               "batch publish >= 5x FastStream"),
        Target("eventbus async publish x1000 gather", ref_single, 5.0,
               "awaited singles >= 5x FastStream"),
    ]  # fmt: skip


@contextlib.contextmanager
def redis_publish(env: Env, size: int) -> Iterator[Row]:
    from faststream.redis import RedisBroker

    assert env.redis_url is not None
    data, ks = payload(size), keys()
    pool = 1100
    broker = RedisBroker(env.redis_url, max_connections=pool)
    env.run(broker.connect())
    abus = eventbus.connect_async(env.redis_url, options={"max_connections": pool})
    env.run(abus.connect())
    topic, stream = env.name("pub"), env.name("fs")
    env.run(abus.create_topic(topic, partitions=1))
    conn: Any = broker._connection  # FastStream's documented way to get a pipeline

    async def eb_batch(n: int) -> None:
        for lo, hi in chunks(n):
            await abus.publish_many(topic, _events(data, ks, lo, hi))

    async def eb_single(n: int) -> None:
        for lo, hi in chunks(n):
            await asyncio.gather(
                *(abus.publish(topic, data, key=ks[i % len(ks)]) for i in range(lo, hi))
            )

    async def fs_pipeline(n: int) -> None:
        for lo, hi in chunks(n):
            async with conn.pipeline(transaction=False) as pipe:
                for _ in range(lo, hi):
                    await broker.publish(data, stream=stream, pipeline=pipe)
                await pipe.execute()

    async def fs_single(n: int) -> None:
        for lo, hi in chunks(n):
            await asyncio.gather(*(broker.publish(data, stream=stream) for _ in range(lo, hi)))

    def trim() -> None:
        env.run(conn.xtrim(topic, maxlen=0))
        env.run(conn.delete(stream))

    try:
        yield Row(
            key=f"redis.faststream.{size}",
            title="publish vs FastStream 0.7",
            transport="redis",
            payload=size,
            count=env.count(5_000, 20_000),
            sides=[
                Side("eventbus async publish_many", "eventbus", timed_async(env, eb_batch), trim),
                Side(
                    "eventbus async publish x1000 gather",
                    "eventbus",
                    timed_async(env, eb_single),
                    trim,
                ),
                Side(
                    "FastStream stream publish, pipeline of 1000",
                    "reference",
                    timed_async(env, fs_pipeline),
                    trim,
                ),
                Side(
                    "FastStream stream publish x1000 gather",
                    "reference",
                    timed_async(env, fs_single),
                    trim,
                ),
            ],
            targets=_targets(
                "FastStream stream publish, pipeline of 1000",
                "FastStream stream publish x1000 gather",
            ),
        )
    finally:
        trim()
        env.run(abus.delete_topic(topic))
        env.run(abus.close())
        env.run(broker.stop())


@contextlib.contextmanager
def kafka_publish(env: Env, size: int) -> Iterator[Row]:
    from faststream.confluent import KafkaBroker

    assert env.kafka_url is not None
    data, ks = payload(size), keys()
    broker = KafkaBroker(bootstrap(env), acks="all", linger_ms=5, enable_idempotence=True)
    env.run(broker.connect())
    abus = eventbus.connect_async(env.kafka_url)
    env.run(abus.connect())
    topic, fstopic = env.name("pub"), env.name("fs")
    for name in (topic, fstopic):
        env.run(abus.create_topic(name, partitions=PARTITIONS))

    async def eb_batch(n: int) -> None:
        for lo, hi in chunks(n):
            await abus.publish_many(topic, _events(data, ks, lo, hi))

    async def eb_single(n: int) -> None:
        for lo, hi in chunks(n):
            await asyncio.gather(
                *(abus.publish(topic, data, key=ks[i % len(ks)]) for i in range(lo, hi))
            )

    async def fs_batch(n: int) -> None:
        for lo, hi in chunks(n):
            await broker.publish_batch(*(data for _ in range(lo, hi)), topic=fstopic)

    async def fs_single(n: int) -> None:
        for lo, hi in chunks(n):
            await asyncio.gather(
                *(broker.publish(data, fstopic, key=ks[i % len(ks)]) for i in range(lo, hi))
            )

    try:
        yield Row(
            key=f"kafka.faststream.{size}",
            title="publish vs FastStream 0.7",
            transport="kafka",
            payload=size,
            count=env.count(5_000, 20_000),
            sides=[
                Side("eventbus async publish_many", "eventbus", timed_async(env, eb_batch)),
                Side(
                    "eventbus async publish x1000 gather", "eventbus", timed_async(env, eb_single)
                ),
                Side("FastStream publish_batch of 1000", "reference", timed_async(env, fs_batch)),
                Side("FastStream publish x1000 gather", "reference", timed_async(env, fs_single)),
            ],
            targets=_targets("FastStream publish_batch of 1000", "FastStream publish x1000 gather"),
            note="FastStream's publish_batch takes no per-message key",
        )
    finally:
        for name in (topic, fstopic):
            env.run(abus.delete_topic(name))
        env.run(abus.close())
        env.run(broker.stop())
