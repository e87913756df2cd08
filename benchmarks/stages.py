"""Where publish time goes, stage by stage: ``python -m benchmarks.stages REDIS_URL KAFKA_URL``.

For each URL (either may be ``-`` to skip it), with 100-byte keyed events in calls of 1000:

- ``build``: ``eventbus.Event(data=..., key=...)`` as a caller builds them;
- ``encode``: ``encode_event`` (envelope headers, JSON, timestamp);
- ``transport``: ``transport.publish`` of the encoded records (size check, partitioning,
  packing or producing, and the wait for the server);

each in microseconds per event (median of the runs). On Kafka it also times raw confluent-kafka
``produce`` loops that add, one at a time, what eventbus sends with every record (envelope
headers, a delivery callback, a timestamp), which shows the floor of the produce call itself;
with both URLs, a raw Redis -> Kafka copy with and without what a backfill copy carries.
Not a test; numbers move 20-30% between runs on a shared machine.
"""

from __future__ import annotations

import asyncio
import functools
import statistics
import sys
import time
import uuid
from typing import Any

import eventbus
from benchmarks.harness import keys, payload
from eventbus.event import encode_event

EVENTS = 20_000
RUNS = 5


async def _stages(url: str, partitions: int) -> dict[str, float]:
    bus = eventbus.connect_async(url)
    await bus.connect()
    topic = f"bench-stages-{uuid.uuid4().hex[:8]}"
    await bus.create_topic(topic, partitions=partitions)
    data, ks = payload(100), keys()
    spent: dict[str, list[float]] = {"build": [], "encode": [], "transport": []}
    try:
        for run in range(RUNS + 1):  # the first run warms up
            build = encode = transport = 0.0
            for lo in range(0, EVENTS, 1000):
                t0 = time.perf_counter()
                events = [
                    eventbus.Event(data=data, key=ks[i % len(ks)]) for i in range(lo, lo + 1000)
                ]
                t1 = time.perf_counter()
                records = [encode_event(e, bus.codec) for e in events]
                t2 = time.perf_counter()
                await bus.transport.publish(topic, records, timeout=60.0)
                t3 = time.perf_counter()
                build, encode, transport = build + t1 - t0, encode + t2 - t1, transport + t3 - t2
            if run:
                spent["build"].append(build)
                spent["encode"].append(encode)
                spent["transport"].append(transport)
    finally:
        await bus.delete_topic(topic)
        await bus.close()
    return {name: statistics.median(v) / EVENTS * 1e6 for name, v in spent.items()}


def _producer(boot: str) -> Any:
    """The raw references' producer settings (the same as eventbus's)."""
    from confluent_kafka import Producer

    return Producer(
        {
            "bootstrap.servers": boot,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "partitioner": "murmur2_random",
        }
    )


def _kafka_floor(url: str) -> dict[str, float]:
    from confluent_kafka.admin import AdminClient, NewTopic

    boot = url.split("://", 1)[1].split("?", 1)[0]
    admin = AdminClient({"bootstrap.servers": boot})
    topic = f"bench-floor-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, 3, 1)])[topic].result(30)
    producer = _producer(boot)
    body = b'{"body":"' + b"x" * 89 + b'"}'
    headers = {
        "eb-id": str(uuid.uuid4()).encode(),
        "eb-time": b"2026-11-26T16:00:00.000000+00:00",
        "eb-content-type": b"application/json",
    }

    def report(index: int, err: Any, msg: Any) -> None:
        pass

    def loop(n: int, **extra: Any) -> None:
        callback = extra.pop("callback", False)
        for i in range(n):
            if callback:
                extra["on_delivery"] = functools.partial(report, i)
            producer.produce(topic, body, b"agent-%d" % (i % 64), **extra)
            producer.poll(0)
        producer.flush(60)

    variants: dict[str, dict[str, Any]] = {
        "raw produce (key, value)": {},
        "+ envelope headers": {"headers": headers},
        "+ delivery callback": {"headers": headers, "callback": True},
        "+ timestamp": {"headers": headers, "callback": True, "timestamp": 1795708800000},
    }
    out: dict[str, float] = {}
    try:
        for name, extra in variants.items():
            loop(1000, **dict(extra))
            times = []
            for _ in range(RUNS):
                t0 = time.perf_counter()
                loop(EVENTS, **dict(extra))
                times.append(time.perf_counter() - t0)
            out[name] = statistics.median(times) / EVENTS * 1e6
    finally:
        admin.delete_topics([topic])
    return out


async def _drop(url: str, topic: str) -> None:
    async with eventbus.connect_async(url) as bus:
        await bus.delete_topic(topic)


async def _fill(url: str, topic: str, count: int) -> None:
    async with eventbus.connect_async(url) as bus:
        await bus.create_topic(topic, partitions=1)
        data, ks = payload(100), keys()
        for lo in range(0, count, 1000):
            await bus.publish_many(
                topic,
                [eventbus.Event(data=data, key=ks[i % len(ks)]) for i in range(lo, lo + 1000)],
            )


def _copy_floor(redis_url: str, kafka_url: str) -> dict[str, float]:
    """A raw Redis -> Kafka copy (redis-py XRANGE pages of 1000, confluent produce loop, one
    flush) of an eventbus stream: the benchmark's reference (key and value only), and the same
    loop carrying what a copy must carry (the entry's envelope headers plus ``eb-copy`` and
    ``eb-copy-of``, its timestamp, a delivery callback)."""
    import redis
    from confluent_kafka.admin import AdminClient, NewTopic

    source = f"bench-copy-{uuid.uuid4().hex[:8]}"
    asyncio.run(_fill(redis_url, source, EVENTS))
    client = redis.Redis.from_url(redis_url)
    boot = kafka_url.split("://", 1)[1].split("?", 1)[0]
    admin = AdminClient({"bootstrap.servers": boot})

    def report(err: Any, msg: Any) -> None:
        pass

    def copy(target: str, producer: Any, carry: bool) -> None:
        low: bytes | str = "-"
        while True:
            page = client.xrange(source, low, "+", count=1000)
            if not page:
                break
            for entry_id, fields in page:
                if carry:
                    headers = {k[2:].decode(): v for k, v in fields.items() if k[:2] == b"h:"}
                    headers["eb-copy"] = b"backfill"
                    headers["eb-copy-of"] = entry_id
                    stamp = int(entry_id.split(b"-", 1)[0])
                    producer.produce(
                        target,
                        fields[b"_v"],
                        fields.get(b"_k"),
                        headers=headers,
                        on_delivery=report,
                        timestamp=stamp,
                    )
                else:
                    producer.produce(target, fields[b"_v"], fields.get(b"_k"))
                producer.poll(0)
            low = b"(" + page[-1][0]
        producer.flush(60)

    out: dict[str, float] = {}
    try:
        for name, carry in (("key and value", False), ("+ headers, timestamp, callback", True)):
            times = []
            for _ in range(RUNS):
                target = f"bench-copy-{uuid.uuid4().hex[:8]}"
                admin.create_topics([NewTopic(target, 1, 1)])[target].result(30)
                producer = _producer(boot)
                t0 = time.perf_counter()
                copy(target, producer, carry)
                times.append(time.perf_counter() - t0)
                admin.delete_topics([target])
            out[name] = statistics.median(times) / EVENTS * 1e6
    finally:
        client.close()
        asyncio.run(_drop(redis_url, source))
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    redis_url, kafka_url = args
    for label, url, partitions in (("redis", redis_url, 1), ("kafka", kafka_url, 3)):
        if url == "-":
            continue
        found = asyncio.run(_stages(url, partitions))
        total = sum(found.values())
        parts = ", ".join(f"{k} {v:.2f} us" for k, v in found.items())
        print(f"{label}: {parts}; total {total:.2f} us/event ({1e6 / total:,.0f} events/s)")
        if label == "kafka":
            for name, us in _kafka_floor(url).items():
                print(f"kafka floor: {name}: {us:.2f} us/event ({1e6 / us:,.0f} events/s)")
    if redis_url != "-" and kafka_url != "-":
        for name, us in _copy_floor(redis_url, kafka_url).items():
            print(f"raw copy floor: {name}: {us:.2f} us/event ({1e6 / us:,.0f} events/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
