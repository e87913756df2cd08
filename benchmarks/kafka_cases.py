"""Kafka rows: batch publish, awaited singles, consume + ack (eventbus vs confluent-kafka).

The raw producer uses the settings eventbus uses (idempotence, acks=all, linger.ms=5, Java's
murmur2 partitioner): a ``produce`` loop with ``poll(0)`` after each message and one final
``flush``. The value is the same JSON bytes, encoded per message. Topics have 3 partitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pydantic_core
from confluent_kafka import Consumer, Producer

import eventbus
from benchmarks.harness import Clock, Env, Row, Side, Target, chunks, keys, payload, timed_async
from benchmarks.redis_cases import drain_with_runner, fetch_and_ack

PARTITIONS = 3


def bootstrap(env: Env) -> str:
    assert env.kafka_url is not None
    return bootstrap_of(env.kafka_url)


def bootstrap_of(url: str) -> str:
    return url.removeprefix("kafka://").split("?", 1)[0]


def raw_producer(env: Env) -> Any:
    assert env.kafka_url is not None
    return raw_producer_for(env.kafka_url)


def raw_producer_for(url: str) -> Any:
    """confluent-kafka with eventbus's producer settings (``_producer.producer_config``)."""
    return Producer(
        {
            "bootstrap.servers": bootstrap_of(url),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "partitioner": "murmur2_random",
            "compression.type": "none",
        }
    )


def produce_loop(producer: Any, topic: str, data: Any, ks: list[str], n: int) -> None:
    """The raw reference: produce + poll(0) per message, one flush at the end."""
    to_json = pydantic_core.to_json
    for i in range(n):
        producer.produce(topic, to_json(data), key=ks[i % len(ks)])
        producer.poll(0)
    producer.flush(60)


def _events(data: dict[str, str], ks: list[str], lo: int, hi: int) -> list[eventbus.Event]:
    return [eventbus.Event(data=data, key=ks[i % len(ks)]) for i in range(lo, hi)]


@contextlib.contextmanager
def batch_publish(env: Env, size: int) -> Iterator[Row]:
    assert env.kafka_url is not None
    data, ks = payload(size), keys()
    topic, atopic, rtopic = env.name("pub"), env.name("apub"), env.name("raw")
    bus = eventbus.connect(env.kafka_url)
    abus = eventbus.connect_async(env.kafka_url)
    env.run(abus.connect())
    for name in (topic, atopic, rtopic):
        bus.create_topic(name, partitions=PARTITIONS)
    producer = raw_producer(env)

    def eb_sync(n: int) -> float:
        with Clock() as clock:
            for lo, hi in chunks(n):
                bus.publish_many(topic, _events(data, ks, lo, hi))
        return clock.seconds

    async def eb_async(n: int) -> None:
        for lo, hi in chunks(n):
            await abus.publish_many(atopic, _events(data, ks, lo, hi))

    def eb_sync_once(n: int) -> float:
        with Clock() as clock:
            bus.publish_many(topic, _events(data, ks, 0, n))
        return clock.seconds

    async def eb_async_once(n: int) -> None:
        await abus.publish_many(atopic, _events(data, ks, 0, n))

    def raw(n: int) -> float:
        with Clock() as clock:
            produce_loop(producer, rtopic, data, ks, n)
        return clock.seconds

    try:
        yield Row(
            key=f"kafka.batch.{size}",
            title="batch publish (1000/call, and one call)",
            transport="kafka",
            payload=size,
            count=env.count(20_000, 100_000),
            sides=[
                Side("eventbus sync publish_many", "eventbus", eb_sync),
                Side("eventbus async publish_many", "eventbus", timed_async(env, eb_async)),
                Side("eventbus sync publish_many, one call", "eventbus", eb_sync_once),
                Side(
                    "eventbus async publish_many, one call",
                    "eventbus",
                    timed_async(env, eb_async_once),
                ),
                Side("confluent produce loop + flush", "reference", raw),
            ],
            targets=[
                Target(
                    "eventbus sync publish_many, one call",
                    "confluent produce loop + flush",
                    0.85,
                    "Kafka batch publish, sync API >= 0.85x raw produce loop (both wait once)",
                ),
                Target(
                    "eventbus async publish_many, one call",
                    "confluent produce loop + flush",
                    0.85,
                    "Kafka batch publish, async API >= 0.85x raw produce loop (both wait once)",
                ),
            ],
            note=(
                "the async API's reference is the same produce loop (no asyncio client); "
                "'one call' publishes all n and waits once, as the reference's final flush "
                "does; the 1000/call sides wait for delivery once per call"
            ),
        )
    finally:
        for name in (topic, atopic, rtopic):
            bus.delete_topic(name)
        bus.close()
        env.run(abus.close())


@contextlib.contextmanager
def inflight_publish(env: Env, size: int) -> Iterator[Row]:
    assert env.kafka_url is not None
    data, ks = payload(size), keys()
    topic, rtopic = env.name("single"), env.name("rawsingle")
    abus = eventbus.connect_async(env.kafka_url)
    env.run(abus.connect())
    for name in (topic, rtopic):
        env.run(abus.create_topic(name, partitions=PARTITIONS))
    producer = raw_producer(env)

    async def eb(n: int) -> None:
        for lo, hi in chunks(n):
            await asyncio.gather(
                *(abus.publish(topic, data, key=ks[i % len(ks)]) for i in range(lo, hi))
            )

    def raw(n: int) -> float:
        """1000 produced with a delivery callback each, then wait for all 1000 reports."""
        to_json = pydantic_core.to_json
        delivered = 0

        def report(err: Any, msg: Any) -> None:
            nonlocal delivered
            if err is not None:
                raise RuntimeError(str(err))
            delivered += 1

        with Clock() as clock:
            for lo, hi in chunks(n):
                for i in range(lo, hi):
                    producer.produce(rtopic, to_json(data), key=ks[i % len(ks)], on_delivery=report)
                    producer.poll(0)
                producer.flush(60)
        assert delivered == n
        return clock.seconds

    try:
        yield Row(
            key=f"kafka.inflight.{size}",
            title="awaited single publishes, 1000 in flight",
            transport="kafka",
            payload=size,
            count=env.count(10_000, 50_000),
            sides=[
                Side("eventbus async publish x1000 gather", "eventbus", timed_async(env, eb)),
                Side("confluent produce x1000 + callbacks + flush", "reference", raw),
            ],
            targets=[
                Target(
                    "eventbus async publish x1000 gather",
                    "confluent produce x1000 + callbacks + flush",
                    0.5,
                    "awaited singles, 1000 in flight >= 0.5x raw",
                ),
            ],
        )
    finally:
        for name in (topic, rtopic):
            env.run(abus.delete_topic(name))
        env.run(abus.close())


@contextlib.contextmanager
def consume_ack(env: Env, size: int) -> Iterator[Row]:
    assert env.kafka_url is not None
    count = env.count(20_000, 100_000)
    topic = env.name("consume")
    data, ks = payload(size), keys()
    with eventbus.connect(env.kafka_url) as bus:
        bus.create_topic(topic, partitions=PARTITIONS)
        for lo, hi in chunks(count + 5000):
            bus.publish_many(topic, _events(data, ks, lo, hi))
    abus = eventbus.connect_async(env.kafka_url)
    env.run(abus.connect())

    def raw(n: int) -> float:
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap(env),
                "group.id": env.name("g"),
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        consumer.subscribe([topic])
        try:
            done, start = 0, 0.0
            while done < n:
                msgs = consumer.consume(min(1000, n - done), 1.0)
                if not msgs:
                    continue
                if not start:
                    start = time.perf_counter()
                for m in msgs:
                    if m.error() is not None:
                        raise RuntimeError(str(m.error()))
                consumer.commit(asynchronous=True)
                done += len(msgs)
            consumer.commit(asynchronous=False)
            return time.perf_counter() - start
        finally:
            consumer.close()

    try:
        yield Row(
            key=f"kafka.consume.{size}",
            title="consume + ack (fresh group, prefilled)",
            transport="kafka",
            payload=size,
            count=count,
            sides=[
                Side(
                    "eventbus async fetch(1000) + ack each",
                    "eventbus",
                    lambda n: env.run(
                        fetch_and_ack(abus, topic, env.name("g"), n, batch_ack=False)
                    ),
                ),
                Side(
                    "eventbus async fetch(1000) + sub.ack(batch)",
                    "eventbus",
                    lambda n: env.run(fetch_and_ack(abus, topic, env.name("g"), n, batch_ack=True)),
                ),
                Side(
                    "eventbus runner (batch_size=1000)",
                    "eventbus",
                    lambda n: env.run(drain_with_runner(abus, topic, env.name("g"), n)),
                ),
                Side("confluent consume(1000) + commit", "reference", raw),
            ],
            targets=[
                Target(
                    "eventbus async fetch(1000) + ack each",
                    "confluent consume(1000) + commit",
                    0.5,
                    "fetch + ack each >= 0.5x raw",
                ),
                Target(
                    "eventbus runner (batch_size=1000)",
                    "confluent consume(1000) + commit",
                    0.85,
                    "consume+ack >= 0.85x raw (runner)",
                ),
            ],
            note="timed from the first batch received to the last ack (group join excluded)",
        )
    finally:
        env.run(abus.delete_topic(topic))
        env.run(abus.close())


SUSTAINED_FULL = 100_000
SUSTAINED_QUICK = 30_000


def sustained_title(env: Env, what: str) -> str:
    """The row title names its count, and says so when quick mode moves fewer than 100,000."""
    count = env.count(SUSTAINED_QUICK, SUSTAINED_FULL)
    short = " (quick mode: below the 100,000 the target asks for)" if env.quick else ""
    return f"sustained {what}, {count:,} events per run{short}"


def produce_all(producer: Any, topic: str, data: Any, ks: list[str], n: int) -> None:
    """A raw produce loop that also survives a full local queue (as a user's must at this
    size): on ``BufferError`` serve reports and retry; one final flush."""
    to_json = pydantic_core.to_json
    for i in range(n):
        value, key = to_json(data), ks[i % len(ks)]
        while True:
            try:
                producer.produce(topic, value, key=key)
                break
            except BufferError:
                producer.poll(0.001)
        producer.poll(0)
    producer.flush(60)


FLOOR_HEADERS = {
    "eb-id": b"019b0000-0000-7000-8000-000000000000",
    "eb-time": b"2026-12-06T00:00:00.000000+00:00",
    "eb-content-type": b"application/json",
}
"""The envelope headers every eventbus record carries, as constants (the floor sides do not
even pay for making an id and a timestamp text per event)."""

FLOOR_PUBLISH = "floor: confluent produce + envelope headers, flush per 1000"
FLOOR_CONSUME = "floor: confluent consume(1000) + JSON decode + commit"


def produce_floor(producer: Any, topic: str, data: Any, ks: list[str], n: int) -> None:
    """What a raw client must do for eventbus's publish contract, and no more: per event a JSON
    encode, the envelope headers, a timestamp and a delivery callback (positions); each call of
    1000 waits for its reports (``flush``) before the next, as ``publish_many`` returns only
    once the broker has them."""
    to_json = pydantic_core.to_json
    positions: list[tuple[int, int]] = []

    def report(err: Any, msg: Any) -> None:
        positions.append((msg.partition(), msg.offset()))

    for lo, hi in chunks(n):
        now = int(time.time() * 1000)
        for i in range(lo, hi):
            producer.produce(
                topic,
                to_json(data),
                key=ks[i % len(ks)],
                headers=FLOOR_HEADERS,
                timestamp=now,
                on_delivery=report,
            )
            if i & 63 == 63:
                producer.poll(0)
        producer.flush(60)
        positions.clear()


@contextlib.contextmanager
def sustained_publish(env: Env, size: int) -> Iterator[Row]:
    """publish_many in calls of 1000 (each waits for its reports) vs a raw loop + final flush,
    over >= 100,000 events (full mode): long enough that the broker's pace shows, not only
    what librdkafka's local queue absorbs."""
    assert env.kafka_url is not None
    data, ks = payload(size), keys()
    topic, rtopic = env.name("spub"), env.name("sraw")
    abus = eventbus.connect_async(env.kafka_url)
    env.run(abus.connect())
    for name in (topic, rtopic):
        env.run(abus.create_topic(name, partitions=PARTITIONS))
    producer = raw_producer(env)

    async def eb(n: int) -> None:
        for lo, hi in chunks(n):
            await abus.publish_many(topic, _events(data, ks, lo, hi))

    def raw(n: int) -> float:
        with Clock() as clock:
            produce_all(producer, rtopic, data, ks, n)
        return clock.seconds

    def floor(n: int) -> float:
        with Clock() as clock:
            produce_floor(producer, rtopic, data, ks, n)
        return clock.seconds

    try:
        yield Row(
            key=f"kafka.sustained_publish.{size}",
            title=sustained_title(env, "publish (1000/call)"),
            transport="kafka",
            payload=size,
            count=env.count(SUSTAINED_QUICK, SUSTAINED_FULL),
            sides=[
                Side("eventbus async publish_many", "eventbus", timed_async(env, eb)),
                Side("confluent produce loop + flush", "reference", raw),
                Side(FLOOR_PUBLISH, "reference", floor),
            ],
            targets=[
                Target(
                    "eventbus async publish_many",
                    "confluent produce loop + flush",
                    0.85,
                    "sustained publish >= 0.85x raw produce loop",
                )
            ],
            note="calls of 1000, each waiting for its delivery reports; raw: one final flush; "
            "floor: the raw client doing what the contract asks (see produce_floor)",
        )
    finally:
        for name in (topic, rtopic):
            env.run(abus.delete_topic(name))
        env.run(abus.close())


def raw_consume_commit(env: Env, topic: str, n: int, decode: bool = False) -> float:
    """A fresh group reads ``n`` with ``consume(1000)`` + an async commit per batch; seconds
    from the first batch (group join excluded). With ``decode``, each message's value is
    parsed as JSON and its headers read (the floor: what any consumer of events must do)."""
    from_json = pydantic_core.from_json
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap(env),
            "group.id": env.name("g"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    try:
        done, start = 0, 0.0
        while done < n:
            msgs = consumer.consume(min(1000, n - done), 1.0)
            if not msgs:
                continue
            if not start:
                start = time.perf_counter()
            for m in msgs:
                if m.error() is not None:
                    raise RuntimeError(str(m.error()))
                if decode:
                    from_json(m.value())
                    m.headers()
            consumer.commit(asynchronous=True)
            done += len(msgs)
        consumer.commit(asynchronous=False)
        return time.perf_counter() - start
    finally:
        consumer.close()


@contextlib.contextmanager
def sustained_consume(env: Env, size: int) -> Iterator[Row]:
    """The runner (consume + ack) vs raw consume + commit over >= 100,000 prefilled events."""
    assert env.kafka_url is not None
    count = env.count(SUSTAINED_QUICK, SUSTAINED_FULL)
    topic = env.name("sconsume")
    data, ks = payload(size), keys()
    with eventbus.connect(env.kafka_url) as bus:
        bus.create_topic(topic, partitions=PARTITIONS)
        for lo, hi in chunks(count + 5000):
            bus.publish_many(topic, _events(data, ks, lo, hi))
    abus = eventbus.connect_async(env.kafka_url)
    env.run(abus.connect())
    try:
        yield Row(
            key=f"kafka.sustained_consume.{size}",
            title=sustained_title(env, "consume + ack"),
            transport="kafka",
            payload=size,
            count=count,
            sides=[
                Side(
                    "eventbus runner (batch_size=1000)",
                    "eventbus",
                    lambda n: env.run(drain_with_runner(abus, topic, env.name("g"), n)),
                ),
                Side(
                    "confluent consume(1000) + commit",
                    "reference",
                    lambda n: raw_consume_commit(env, topic, n),
                ),
                Side(
                    FLOOR_CONSUME,
                    "reference",
                    lambda n: raw_consume_commit(env, topic, n, decode=True),
                ),
            ],
            targets=[
                Target(
                    "eventbus runner (batch_size=1000)",
                    "confluent consume(1000) + commit",
                    0.85,
                    "sustained consume+ack >= 0.85x raw (runner)",
                )
            ],
            note="fresh group per run over a prefilled topic; timed from the first batch",
        )
    finally:
        env.run(abus.delete_topic(topic))
        env.run(abus.close())
