"""Publish throughput: eventbus vs a raw confluent-kafka produce loop, in one run.

Run: ``python -m tests.kafka.bench_publish [kafka://host:port] [count] [size]``
(defaults: ``$EVENTBUS_TEST_KAFKA_URL``, 100000 records of 100 bytes). Each contender writes
to its own fresh 6-partition topic with the same producer settings (idempotent, acks=all,
murmur2_random, linger 5 ms) and is timed until every delivery report has arrived.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid

from confluent_kafka import Producer

import eventbus
from eventbus.adapters.kafka import KafkaTransport
from eventbus.topics import TopicSpec
from eventbus.transport import Outgoing


def raw_loop(bootstrap: str, topic: str, count: int, size: int) -> float:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": "murmur2_random",
            "linger.ms": 5,
        }
    )
    value = b"x" * size
    failed = []

    def report(err: object, msg: object) -> None:
        if err is not None:
            failed.append(err)

    started = time.perf_counter()
    for i in range(count):
        while True:
            try:
                producer.produce(
                    topic, value, b"k%d" % i, headers=[("eb-id", b"%d" % i)], on_delivery=report
                )
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush(60)
    elapsed = time.perf_counter() - started
    assert not failed, failed[:3]
    return elapsed


async def adapter(url: str, topic: str, count: int, size: int) -> float:
    t = KafkaTransport.from_url(url, {})
    await t.connect()
    try:
        value = b"x" * size
        records = [Outgoing(value, b"k%d" % i, {"eb-id": b"%d" % i}) for i in range(count)]
        started = time.perf_counter()
        positions = await t.publish(topic, records, timeout=120)
        elapsed = time.perf_counter() - started
        assert len(positions) == count
        return elapsed
    finally:
        await t.close()


async def core(url: str, topic: str, count: int, size: int) -> float:
    async with eventbus.connect_async(url) as bus:
        payload = "x" * size
        events = [eventbus.Event(data=payload, key=f"k{i}") for i in range(count)]
        started = time.perf_counter()
        positions = await bus.publish_many(topic, events)
        elapsed = time.perf_counter() - started
        assert len(positions) == count
        return elapsed


async def make_topics(url: str, names: list[str]) -> None:
    t = KafkaTransport.from_url(url, {})
    await t.connect()
    for name in names:
        await t.create_topic(TopicSpec(name=name, partitions=6))
    await t.close()


async def drop_topics(url: str, names: list[str]) -> None:
    t = KafkaTransport.from_url(url, {})
    await t.connect()
    for name in names:
        await t.delete_topic(name)
    await t.close()


def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 else os.environ["EVENTBUS_TEST_KAFKA_URL"]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    bootstrap = url.split("://", 1)[1].split("?", 1)[0]
    names = [f"bench-{kind}-{uuid.uuid4().hex[:8]}" for kind in ("raw", "adapter", "core")]
    asyncio.run(make_topics(url, names))
    try:
        raw = raw_loop(bootstrap, names[0], count, size)
        ada = asyncio.run(adapter(url, names[1], count, size))
        cor = asyncio.run(core(url, names[2], count, size))
    finally:
        asyncio.run(drop_topics(url, names))
    for label, seconds in (
        ("raw produce loop", raw),
        ("transport.publish", ada),
        ("bus.publish_many", cor),
    ):
        print(
            f"{label:>20}: {seconds:6.3f} s  {count / seconds:>10,.0f} records/s  "
            f"({raw / seconds:.2f}x raw)"
        )


if __name__ == "__main__":
    main()
