"""Publish and replay through the Transport contract on a real Kafka broker."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from eventbus.errors import (
    ConnectionFailedError,
    EventTooLargeError,
    InvalidPositionError,
    TopicNotFoundError,
)
from eventbus.partitioning import partition_for_key
from eventbus.transport import Outgoing, Position, record_size
from tests.kafka.conftest import connected, make_topic, options, run, unique

pytestmark = pytest.mark.kafka


def test_keys_land_where_partition_for_key_says_and_read_returns_them(kafka_url: str) -> None:
    async def main() -> None:
        async with connected(kafka_url) as t:
            topic = await make_topic(t, partitions=6)
            records = [
                Outgoing(f"v{i}".encode(), f"key-{i}".encode(), {"eb-id": str(i).encode()})
                for i in range(60)
            ]
            positions = await t.publish(topic, records, timeout=30)
            for record, pos in zip(records, positions, strict=True):
                assert record.key is not None
                assert pos.partition == partition_for_key(record.key, 6)
            seen = 0
            for p in range(6):
                got = await t.read(topic, p, None)
                assert [r.offset for r in got] == list(range(len(got)))
                for r in got:
                    assert r.key is not None and partition_for_key(r.key, 6) == p
                    assert r.headers["eb-id"] == r.value[1:]
                    assert r.attempt == 1
                seen += len(got)
            assert seen == 60

    run(main())


def test_explicit_partition_timestamp_and_read_from_offset_and_time(kafka_url: str) -> None:
    async def main() -> None:
        async with connected(kafka_url) as t:
            topic = await make_topic(t, partitions=2)
            base = int(time.time() * 1000) - 60_000
            records = [
                Outgoing(b"x%d" % i, partition=1, timestamp_ms=base + i * 1000) for i in range(5)
            ]
            positions = await t.publish(topic, records, timeout=30)
            assert positions == [Position(1, i) for i in range(5)]
            assert await t.read(topic, 0, None) == []
            got = await t.read(topic, 1, None)
            assert [r.timestamp_ms for r in got] == [base + i * 1000 for i in range(5)]
            assert [r.offset for r in await t.read(topic, 1, 2)] == [2, 3, 4]
            assert [r.offset for r in await t.read(topic, 1, 2, inclusive=False)] == [3, 4]
            assert [r.offset for r in await t.read(topic, 1, 0, limit=2)] == [0, 1]
            when = datetime.fromtimestamp((base + 2500) / 1000, UTC)
            assert [r.offset for r in await t.read(topic, 1, when)] == [3, 4]
            assert await t.read(topic, 1, datetime.now(UTC) + timedelta(hours=1)) == []
            started = time.monotonic()
            assert await t.read(topic, 1, 5) == []  # past the end: nothing, at once
            assert time.monotonic() - started < 5
            with pytest.raises(InvalidPositionError):
                await t.read(topic, 7, None)
            with pytest.raises(InvalidPositionError):
                await t.publish(topic, [Outgoing(b"x", partition=2)], timeout=10)

    run(main())


def test_unknown_topic_is_topic_not_found_everywhere(kafka_url: str) -> None:
    async def main() -> None:
        async with connected(kafka_url) as t:
            missing = unique("missing")
            started = time.monotonic()
            with pytest.raises(TopicNotFoundError, match="does not exist"):
                await t.publish(missing, [Outgoing(b"x")], timeout=30)
            with pytest.raises(TopicNotFoundError):
                await t.read(missing, 0, None)
            with pytest.raises(TopicNotFoundError):
                await t.open_consumer([missing], unique("g"), "c", options())
            with pytest.raises(TopicNotFoundError):
                await t.describe_topic(missing)
            assert time.monotonic() - started < 20

    run(main())


def test_auto_create_makes_a_one_partition_topic(kafka_url: str) -> None:
    async def main() -> None:
        async with connected(kafka_url, auto_create=True) as t:
            topic = unique("auto")
            from tests.kafka.conftest import _CREATED

            _CREATED.append(topic)
            await t.publish(topic, [Outgoing(b"hello")], timeout=30)
            info = await t.describe_topic(topic)
            assert len(info.partitions) == 1 and info.count == 1

    run(main())


def test_oversize_event_is_refused_before_anything_is_written(kafka_url: str) -> None:
    async def main() -> None:
        async with connected(kafka_url) as t:
            topic = await make_topic(t, partitions=1)
            limit = 1_048_576
            exact = Outgoing(b"v" * (limit - 40), b"k" * 10, {"h": b"x" * 29})
            assert record_size(exact) == limit
            too_big = Outgoing(b"v" * (limit + 1))
            with pytest.raises(EventTooLargeError, match=r"1048577 bytes.*limit of 1048576"):
                await t.publish(topic, [Outgoing(b"small"), too_big], timeout=30)
            assert (await t.describe_topic(topic)).count == 0
            # an event of exactly max_event_bytes fits: the topic allows for batch framing
            await t.publish(topic, [exact], timeout=30)
            assert (await t.describe_topic(topic)).count == 1

    run(main())


def test_small_limit_topic_accepts_many_small_events_in_one_call(kafka_url: str) -> None:
    async def main() -> None:
        async with connected(kafka_url) as t:
            topic = await make_topic(t, partitions=1, max_event_bytes=2000)
            records = [Outgoing(b"x" * 500) for _ in range(50)]
            await t.publish(topic, records, timeout=30)
            await t.publish(topic, [Outgoing(b"y" * 1989, None, {"h": b"1234567890"})], timeout=30)
            assert (await t.describe_topic(topic)).count == 51
            with pytest.raises(EventTooLargeError):
                await t.publish(topic, [Outgoing(b"z" * 2001)], timeout=30)

    run(main())


def test_unreachable_broker_fails_fast(kafka_url: str) -> None:
    async def main() -> None:
        started = time.monotonic()
        with pytest.raises(ConnectionFailedError, match="cannot reach") as info:
            async with connected("kafka://user:hunter2@127.0.0.1:1?connect_timeout=2"):
                pass
        assert time.monotonic() - started < 8
        assert "hunter2" not in str(info.value)

    run(main())
