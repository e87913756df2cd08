"""The transport on a real three-node Redis Cluster (started by the ``redis_cluster`` fixture)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from redis.crc import key_slot

from eventbus.adapters.redis_streams import RedisTransport
from eventbus.adapters.redis_streams import _layout as layout
from eventbus.topics import TopicSpec
from eventbus.transport import ConsumerOptions, Outgoing, Record, TransportConsumer
from tests.redis.cluster import LocalCluster

pytestmark = [pytest.mark.redis, pytest.mark.slow]


async def collect(consumer: TransportConsumer, count: int, *, ack: bool = True) -> list[Record]:
    got: list[Record] = []
    deadline = time.monotonic() + 15
    while len(got) < count:
        assert time.monotonic() < deadline, f"got {len(got)} of {count}"
        batch = await consumer.fetch(count - len(got), 0.2)
        if ack and batch:
            await consumer.ack(batch)
        got += batch
    return got


def test_keys_of_a_topic_share_one_slot() -> None:
    name = "orders"
    keys = [
        layout.stream_key(name, 0), layout.stream_key(name, 5), layout.meta_key(name),
        layout.members_key(name, "g"), layout.owners_key(name, "g{x}"),
    ]  # fmt: skip
    assert len({key_slot(k.encode()) for k in keys}) == 1


def test_topics_groups_and_dead_letters_on_a_cluster(redis_cluster: LocalCluster) -> None:
    base = f"c-{uuid.uuid4().hex[:8]}"
    topics = [f"{base}-{i}" for i in range(4)]  # spread over the three shards
    dlq = f"{base}-dlq"

    async def body() -> None:
        t = RedisTransport.from_url(redis_cluster.url, {"poll_interval": "0.05"})
        await t.connect()
        assert t.capabilities.atomic_dead_letter is False
        try:
            for name in topics:
                await t.create_topic(TopicSpec(name=name, partitions=4))
            await t.create_topic(TopicSpec(name=dlq))
            assert set(topics) <= set(await t.list_topics())
            records = [Outgoing(b"%d" % i, key=b"k%d" % (i % 9)) for i in range(200)]
            for name in topics:
                assert len(await t.publish(name, records, timeout=10)) == 200
                assert (await t.describe_topic(name)).count == 200
            options = ConsumerOptions(session_timeout=1, visibility_timeout=30)
            group = f"g-{base}"
            a = await t.open_consumer(topics, group, "a", options)
            b = await t.open_consumer(topics, group, "b", options)
            got = await asyncio.gather(collect(a, 0), collect(b, 0))
            assert got == [[], []]
            seen: dict[str, list[Record]] = {"a": [], "b": []}
            deadline = time.monotonic() + 20
            while sum(map(len, seen.values())) < 800 and time.monotonic() < deadline:
                for name, member in (("a", a), ("b", b)):
                    batch = await member.fetch(100, 0.05)
                    await member.ack(batch)
                    seen[name] += batch
            assert sum(map(len, seen.values())) == 800 and all(seen.values())
            for name in ("a", "b"):  # each partition read by one member only
                other = "b" if name == "a" else "a"
                mine = {(r.topic, r.partition) for r in seen[name]}
                assert not mine & {(r.topic, r.partition) for r in seen[other]}
            await asyncio.gather(a.flush_acks(), b.flush_acks())  # acks go out in the background
            info = await t.describe_group(group)
            assert info.lag == 0 and info.pending == 0
            assert {m.name for m in info.members} == {"a", "b"}
            await t.publish(topics[0], [Outgoing(b"poison", key=b"p")], timeout=5)
            owner = a if any(x.value == b"poison" for x in await a.fetch(1, 0.5)) else b
            await t.reset_group(group, topics[0], "latest")
            await t.publish(topics[0], [Outgoing(b"poison2", key=b"p")], timeout=5)
            [poison] = [r for r in await _drain(owner, 1, ack=False)]
            await owner.dead_letter(poison, dlq, {"eb-error": b"x"})  # crosses slots
            [copy] = await t.read(dlq, 0, None)
            assert copy.value == b"poison2" and copy.headers["eb-error"] == b"x"
            assert (await t.describe_group(group)).pending == 0
            await a.close()
            await b.close()
        finally:
            for name in [*topics, dlq]:
                await t.delete_topic(name)
            await t.close()

    asyncio.run(body())


async def _drain(consumer: TransportConsumer, count: int, *, ack: bool = True) -> list[Record]:
    got: list[Record] = []
    deadline = time.monotonic() + 20
    while len(got) < count and time.monotonic() < deadline:
        batch = await consumer.fetch(100, 0.2)
        if ack and batch:
            await consumer.ack(batch)
        got += batch
    return got
