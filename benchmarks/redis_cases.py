"""Redis Streams rows: batch publish, awaited singles, consume + ack (eventbus vs redis-py).

The raw side writes what a redis-py user would write: ``XADD stream * key K body B`` (the same
100-byte / 1 KiB body), pipelined without MULTI in batches of 1000. Topics have one partition,
so eventbus and redis-py each write one stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pydantic_core
import redis
import redis.asyncio as aredis

import eventbus
from benchmarks.harness import Clock, Env, Row, Side, Target, chunks, keys, payload, timed_async

POOL = 1100

FLOOR_FIELDS = {
    "_eb": "1",
    "h:eb-id": "019b0000-0000-7000-8000-000000000000",
    "h:eb-time": "2026-12-06T00:00:00.000000+00:00",
    "h:eb-content-type": "application/json",
}
"""The envelope fields of an eventbus entry, as constants, for the floor sides."""
FLOOR_PUBLISH = "floor: redis-py sync pipeline of eventbus's entry fields"
FLOOR_CONSUME = "floor: XREADGROUP 1000 + JSON decode + XACK"
"""Connections for 1000 publishes in flight (redis-py's default pool raises past 100)."""


def _raw(env: Env) -> redis.Redis:
    assert env.redis_url is not None
    return redis.Redis.from_url(env.redis_url)


def _events(data: dict[str, str], ks: list[str], lo: int, hi: int) -> list[eventbus.Event]:
    return [eventbus.Event(data=data, key=ks[i % len(ks)]) for i in range(lo, hi)]


@contextlib.contextmanager
def batch_publish(env: Env, size: int) -> Iterator[Row]:
    """publish_many (sync and async APIs) vs pipelined XADD (redis-py sync and asyncio)."""
    assert env.redis_url is not None
    data, ks = payload(size), keys()
    body = data["body"]
    raw = _raw(env)
    araw = aredis.Redis.from_url(env.redis_url)
    topic, atopic, stream = env.name("pub"), env.name("apub"), env.name("raw")
    bus = eventbus.connect(env.redis_url)
    abus = eventbus.connect_async(env.redis_url)
    env.run(abus.connect())
    bus.create_topic(topic, partitions=1)
    bus.create_topic(atopic, partitions=1)

    def eb_sync(n: int) -> float:
        with Clock() as clock:
            for lo, hi in chunks(n):
                bus.publish_many(topic, _events(data, ks, lo, hi))
        return clock.seconds

    async def eb_async(n: int) -> None:
        for lo, hi in chunks(n):
            await abus.publish_many(atopic, _events(data, ks, lo, hi))

    def raw_sync(n: int) -> float:
        with Clock() as clock:
            for lo, hi in chunks(n):
                pipe = raw.pipeline(transaction=False)
                for i in range(lo, hi):
                    pipe.xadd(stream, {"key": ks[i % len(ks)], "body": body})
                pipe.execute()
        return clock.seconds

    async def raw_async(n: int) -> None:
        for lo, hi in chunks(n):
            pipe = araw.pipeline(transaction=False)
            for i in range(lo, hi):
                pipe.xadd(stream, {"key": ks[i % len(ks)], "body": body})
            await pipe.execute()

    def trim() -> None:
        raw.xtrim(topic, maxlen=0)
        raw.xtrim(atopic, maxlen=0)
        raw.delete(stream)

    try:
        yield Row(
            key=f"redis.batch.{size}",
            title="batch publish (1000/call)",
            transport="redis",
            payload=size,
            count=env.count(10_000, 50_000),
            sides=[
                Side("eventbus sync publish_many", "eventbus", eb_sync, trim),
                Side("eventbus async publish_many", "eventbus", timed_async(env, eb_async), trim),
                Side("redis-py sync pipeline", "reference", raw_sync, trim),
                Side("redis.asyncio pipeline", "reference", timed_async(env, raw_async), trim),
            ],
            targets=[
                Target(
                    "eventbus sync publish_many",
                    "redis-py sync pipeline",
                    1.0,
                    "Redis batch publish, sync API >= 1.0x raw sync pipeline",
                ),
                Target(
                    "eventbus async publish_many",
                    "redis-py sync pipeline",
                    1.0,
                    "Redis batch publish, async API >= 1.0x raw sync pipeline",
                ),
            ],
            note="keyed eventbus.Event objects built inside the timed loop; raw: XADD key+body",
        )
    finally:
        trim()
        bus.delete_topic(topic)
        bus.delete_topic(atopic)
        bus.close()
        env.run(abus.close())
        env.run(araw.aclose())
        raw.close()


@contextlib.contextmanager
def inflight_publish(env: Env, size: int) -> Iterator[Row]:
    """Awaited single publishes, 1000 in flight (async): bus.publish vs redis.asyncio XADD."""
    assert env.redis_url is not None
    data, ks = payload(size), keys()
    body = data["body"]
    raw = _raw(env)
    # redis-py 8 pools hold 100 connections and raise beyond that: give both sides room
    araw = aredis.Redis.from_url(env.redis_url, max_connections=POOL)
    topic, stream = env.name("single"), env.name("rawsingle")
    abus = eventbus.connect_async(env.redis_url, options={"max_connections": POOL})
    env.run(abus.connect())
    env.run(abus.create_topic(topic, partitions=1))

    async def eb(n: int) -> None:
        for lo, hi in chunks(n):
            await asyncio.gather(
                *(abus.publish(topic, data, key=ks[i % len(ks)]) for i in range(lo, hi))
            )

    async def ref(n: int) -> None:
        for lo, hi in chunks(n):
            await asyncio.gather(
                *(araw.xadd(stream, {"key": ks[i % len(ks)], "body": body}) for i in range(lo, hi))
            )

    def trim() -> None:
        raw.xtrim(topic, maxlen=0)
        raw.delete(stream)

    try:
        yield Row(
            key=f"redis.inflight.{size}",
            title="awaited single publishes, 1000 in flight",
            transport="redis",
            payload=size,
            count=env.count(5_000, 20_000),
            sides=[
                Side("eventbus async publish x1000 gather", "eventbus", timed_async(env, eb), trim),
                Side("redis.asyncio xadd x1000 gather", "reference", timed_async(env, ref), trim),
            ],
            targets=[
                Target(
                    "eventbus async publish x1000 gather",
                    "redis.asyncio xadd x1000 gather",
                    0.5,
                    "awaited singles, 1000 in flight >= 0.5x raw",
                ),
            ],
        )
    finally:
        trim()
        env.run(abus.delete_topic(topic))
        env.run(abus.close())
        env.run(araw.aclose())
        raw.close()


@contextlib.contextmanager
def consume_ack(env: Env, size: int) -> Iterator[Row]:
    """A fresh group drains a prefilled topic: fetch(1000) + ack, the runner, raw XREADGROUP."""
    assert env.redis_url is not None
    count = env.count(10_000, 50_000)
    topic = env.name("consume")
    raw = _raw(env)
    data, ks = payload(size), keys()
    with eventbus.connect(env.redis_url) as bus:
        bus.create_topic(topic, partitions=1)
        for lo, hi in chunks(count + 5000):  # enough for the warm-up too
            bus.publish_many(topic, _events(data, ks, lo, hi))
    abus = eventbus.connect_async(env.redis_url)
    env.run(abus.connect())
    groups: list[str] = []

    def group() -> str:
        groups.append(env.name("g"))
        return groups[-1]

    def raw_side(n: int) -> float:
        g = group()
        raw.xgroup_create(topic, g, id="0")
        done, start = 0, 0.0
        while done < n:
            reply: Any = raw.xreadgroup(g, "c1", {topic: ">"}, count=min(1000, n - done))
            if not start:
                start = time.perf_counter()
            ids = [entry_id for _, entries in reply for entry_id, _fields in entries]
            raw.xack(topic, g, *ids)
            done += len(ids)
        return time.perf_counter() - start

    try:
        yield Row(
            key=f"redis.consume.{size}",
            title="consume + ack (fresh group, prefilled)",
            transport="redis",
            payload=size,
            count=count,
            sides=[
                Side(
                    "eventbus async fetch(1000) + ack each",
                    "eventbus",
                    lambda n: env.run(fetch_and_ack(abus, topic, group(), n, batch_ack=False)),
                ),
                Side(
                    "eventbus async fetch(1000) + sub.ack(batch)",
                    "eventbus",
                    lambda n: env.run(fetch_and_ack(abus, topic, group(), n, batch_ack=True)),
                ),
                Side(
                    "eventbus runner (batch_size=1000)",
                    "eventbus",
                    lambda n: env.run(drain_with_runner(abus, topic, group(), n)),
                ),
                Side("redis-py XREADGROUP 1000 + XACK", "reference", raw_side),
            ],
            targets=[
                Target(
                    "eventbus async fetch(1000) + ack each",
                    "redis-py XREADGROUP 1000 + XACK",
                    0.5,
                    "fetch + ack each >= 0.5x raw",
                ),
                Target(
                    "eventbus runner (batch_size=1000)",
                    "redis-py XREADGROUP 1000 + XACK",
                    0.85,
                    "consume+ack >= 0.85x raw (runner)",
                ),
            ],
            note="timed from the first batch received to the last ack",
        )
    finally:
        for g in groups:
            with contextlib.suppress(redis.ResponseError):
                raw.xgroup_destroy(topic, g)
        env.run(abus.delete_topic(topic))
        env.run(abus.close())
        raw.close()


async def fetch_and_ack(
    bus: eventbus.AsyncEventBus, topic: str, group: str, n: int, *, batch_ack: bool
) -> float:
    """Drain ``n`` events with subscribe + fetch(1000) + ack; seconds from the first batch."""
    sub = await bus.subscribe(topic, group=group, batch_size=1000, dead_letter=False)
    try:
        done, start = 0, 0.0
        while done < n:
            batch = await sub.fetch(min(1000, n - done), timeout=5.0)
            if batch and not start:
                start = time.perf_counter()
            if batch_ack:
                await sub.ack(batch)
            else:
                for d in batch:
                    await d.ack()
            done += len(batch)
        return time.perf_counter() - start
    finally:
        await sub.close()


async def drain_with_runner(
    bus: eventbus.AsyncEventBus, topic: str, group: str, n: int, concurrency: int = 1
) -> float:
    """Drain ``n`` events through the runner with a no-op async handler; seconds from the
    first handler call to the n-th (acks go in the runner's next loop turn)."""
    handled = 0
    start = 0.0
    done = asyncio.Event()

    async def handler(delivery: eventbus.AsyncDelivery) -> None:
        nonlocal handled, start
        if not handled:
            start = time.perf_counter()
        handled += 1
        if handled >= n:
            done.set()

    runner = bus.runner(
        handler, topic, group=group, batch_size=1000, concurrency=concurrency, dead_letter=False
    )
    task = asyncio.create_task(runner.run())
    waiter = asyncio.create_task(done.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not done.is_set():
            task.result()  # the runner ended early: raise its error
            raise RuntimeError("the runner stopped before draining the topic")
        return time.perf_counter() - start
    finally:
        waiter.cancel()
        runner.stop()
        await task


@contextlib.contextmanager
def sustained_publish(env: Env, size: int) -> Iterator[Row]:
    """publish_many (async, 1000/call) vs a redis-py sync pipeline of 1000 XADD, >= 100,000
    events per run in full mode."""
    from benchmarks.kafka_cases import SUSTAINED_FULL, SUSTAINED_QUICK, sustained_title

    assert env.redis_url is not None
    data, ks = payload(size), keys()
    body = data["body"]
    raw = _raw(env)
    topic, stream = env.name("spub"), env.name("sraw")
    abus = eventbus.connect_async(env.redis_url)
    env.run(abus.connect())
    env.run(abus.create_topic(topic, partitions=1))

    async def eb(n: int) -> None:
        for lo, hi in chunks(n):
            await abus.publish_many(topic, _events(data, ks, lo, hi))

    def raw_sync(n: int) -> float:
        with Clock() as clock:
            for lo, hi in chunks(n):
                pipe = raw.pipeline(transaction=False)
                for i in range(lo, hi):
                    pipe.xadd(stream, {"key": ks[i % len(ks)], "body": body})
                pipe.execute()
        return clock.seconds

    def floor(n: int) -> float:
        """The same pipeline writing what an eventbus entry holds: the JSON value encoded per
        event and the envelope fields (constants here: no id or time text made per event)."""
        to_json = pydantic_core.to_json
        with Clock() as clock:
            for lo, hi in chunks(n):
                pipe = raw.pipeline(transaction=False)
                for i in range(lo, hi):
                    pipe.xadd(stream, {**FLOOR_FIELDS, "_k": ks[i % len(ks)], "_v": to_json(data)})
                pipe.execute()
        return clock.seconds

    def trim() -> None:
        raw.xtrim(topic, maxlen=0)
        raw.delete(stream)

    try:
        yield Row(
            key=f"redis.sustained_publish.{size}",
            title=sustained_title(env, "publish (1000/call)"),
            transport="redis",
            payload=size,
            count=env.count(SUSTAINED_QUICK, SUSTAINED_FULL),
            sides=[
                Side("eventbus async publish_many", "eventbus", timed_async(env, eb), trim),
                Side("redis-py sync pipeline", "reference", raw_sync, trim),
                Side(FLOOR_PUBLISH, "reference", floor, trim),
            ],
            targets=[
                Target(
                    "eventbus async publish_many",
                    "redis-py sync pipeline",
                    1.0,
                    "sustained publish >= 1.0x raw sync pipeline",
                )
            ],
            note="streams trimmed before every run",
        )
    finally:
        trim()
        env.run(abus.delete_topic(topic))
        env.run(abus.close())
        raw.close()


@contextlib.contextmanager
def sustained_consume(env: Env, size: int) -> Iterator[Row]:
    """The runner vs XREADGROUP 1000 + XACK, fresh group per run over a prefilled topic."""
    from benchmarks.kafka_cases import SUSTAINED_FULL, SUSTAINED_QUICK, sustained_title

    assert env.redis_url is not None
    count = env.count(SUSTAINED_QUICK, SUSTAINED_FULL)
    topic = env.name("sconsume")
    raw = _raw(env)
    data, ks = payload(size), keys()
    with eventbus.connect(env.redis_url) as bus:
        bus.create_topic(topic, partitions=1)
        for lo, hi in chunks(count + 5000):
            bus.publish_many(topic, _events(data, ks, lo, hi))
    abus = eventbus.connect_async(env.redis_url)
    env.run(abus.connect())
    groups: list[str] = []

    def group() -> str:
        groups.append(env.name("g"))
        return groups[-1]

    def raw_side(n: int, decode: bool = False) -> float:
        g = group()
        raw.xgroup_create(topic, g, id="0")
        from_json = pydantic_core.from_json
        done, start = 0, 0.0
        while done < n:
            reply: Any = raw.xreadgroup(g, "c1", {topic: ">"}, count=min(1000, n - done))
            if not start:
                start = time.perf_counter()
            ids = [entry_id for _, entries in reply for entry_id, _fields in entries]
            if decode:  # the floor: what any consumer of the events must do with each
                for _, entries in reply:
                    for _id, fields in entries:
                        from_json(fields[b"_v"])
            raw.xack(topic, g, *ids)
            done += len(ids)
        return time.perf_counter() - start

    try:
        yield Row(
            key=f"redis.sustained_consume.{size}",
            title=sustained_title(env, "consume + ack"),
            transport="redis",
            payload=size,
            count=count,
            sides=[
                Side(
                    "eventbus runner (batch_size=1000)",
                    "eventbus",
                    lambda n: env.run(drain_with_runner(abus, topic, group(), n)),
                ),
                Side("redis-py XREADGROUP 1000 + XACK", "reference", raw_side),
                Side(FLOOR_CONSUME, "reference", lambda n: raw_side(n, decode=True)),
            ],
            targets=[
                Target(
                    "eventbus runner (batch_size=1000)",
                    "redis-py XREADGROUP 1000 + XACK",
                    0.85,
                    "sustained consume+ack >= 0.85x raw (runner)",
                )
            ],
            note="fresh group per run; timed from the first batch",
        )
    finally:
        for g in groups:
            with contextlib.suppress(redis.ResponseError):
                raw.xgroup_destroy(topic, g)
        env.run(abus.delete_topic(topic))
        env.run(abus.close())
        raw.close()
