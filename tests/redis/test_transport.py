"""RedisTransport against a real Redis: publish, read, topics, errors."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis

from eventbus.adapters.redis_streams import RedisTransport
from eventbus.adapters.redis_streams import _layout as layout
from eventbus.errors import (
    AuthenticationError,
    ConnectionFailedError,
    EventTooLargeError,
    InvalidPositionError,
    OperationTimeoutError,
    TopicExistsError,
    TopicNotFoundError,
    UnsupportedError,
)
from eventbus.partitioning import partition_for_key
from eventbus.testing import servers
from eventbus.topics import TopicSpec
from eventbus.transport import Outgoing
from tests.redis.conftest import ACL_PASSWORD, ACL_USER, RO_PASSWORD, RO_USER

pytestmark = pytest.mark.redis


@asynccontextmanager
async def opened(url: str, **options: Any) -> AsyncIterator[RedisTransport]:
    transport = RedisTransport.from_url(url, options)
    await transport.connect()
    try:
        yield transport
    finally:
        await transport.close()


def run(url: str, body: Callable[[RedisTransport], Awaitable[None]], **options: Any) -> None:
    async def main() -> None:
        async with opened(url, **options) as transport:
            await body(transport)

    asyncio.run(main())


def test_publish_routes_keys_like_kafka_and_reads_back(redis_url: str, topic: str) -> None:
    async def body(t: RedisTransport) -> None:
        await t.create_topic(TopicSpec(name=topic, partitions=4))
        records = [
            Outgoing(f"v{i}".encode(), key=f"k{i % 7}".encode(), headers={"eb-id": b"%d" % i})
            for i in range(50)
        ]
        positions = await t.publish(topic, records, timeout=5)
        assert [p.partition for p in positions] == [
            partition_for_key(r.key or b"", 4) for r in records
        ]
        for p in range(4):
            got = await t.read(topic, p, None)
            want = [r for r, pos in zip(records, positions, strict=True) if pos.partition == p]
            assert [(g.value, g.key, g.headers) for g in got] == [
                (w.value, w.key, dict(w.headers)) for w in want
            ]
            assert all(g.attempt == 1 and g.raw_fields is None for g in got)
            offsets = [layout.offset_order(g.offset) for g in got]
            assert offsets == sorted(offsets)
            assert all(g.timestamp_ms == layout.id_ms(str(g.offset)) for g in got)

    run(redis_url, body)


def test_unkeyed_records_spread_and_explicit_partition(redis_url: str, topic: str) -> None:
    async def body(t: RedisTransport) -> None:
        await t.create_topic(TopicSpec(name=topic, partitions=3))
        positions = await t.publish(topic, [Outgoing(b"x")] * 9, timeout=5)
        assert sorted({p.partition for p in positions}) == [0, 1, 2]
        [pos] = await t.publish(topic, [Outgoing(b"y", key=b"k", partition=2)], timeout=5)
        assert pos.partition == 2
        with pytest.raises(InvalidPositionError):
            await t.publish(topic, [Outgoing(b"z", partition=3)], timeout=5)

    run(redis_url, body)


def test_read_from_offsets_and_times(redis_url: str, topic: str) -> None:
    async def body(t: RedisTransport) -> None:
        await t.create_topic(TopicSpec(name=topic))
        positions = await t.publish(topic, [Outgoing(b"%d" % i) for i in range(10)], timeout=5)
        third = positions[3].offset
        assert [r.value for r in await t.read(topic, 0, third)][:1] == [b"3"]
        assert [r.value for r in await t.read(topic, 0, third, inclusive=False)][:1] == [b"4"]
        assert len(await t.read(topic, 0, None, limit=4)) == 4
        first_ms = layout.id_ms(str(positions[0].offset))
        when = datetime.fromtimestamp(first_ms / 1000, UTC)
        assert len(await t.read(topic, 0, when)) == 10
        assert await t.read(topic, 0, datetime.now(UTC).replace(year=2100)) == []
        with pytest.raises(InvalidPositionError):
            await t.read(topic, 0, "not-an-id")
        with pytest.raises(InvalidPositionError):
            await t.read(topic, 1, None)

    run(redis_url, body)


def test_too_large_events_write_nothing(redis_url: str, topic: str) -> None:
    async def body(t: RedisTransport) -> None:
        await t.create_topic(TopicSpec(name=topic, max_event_bytes=100))
        batch = [Outgoing(b"ok"), Outgoing(b"x" * 101)]
        with pytest.raises(EventTooLargeError, match=r"100 bytes.*max_event_bytes"):
            await t.publish(topic, batch, timeout=5)
        assert (await t.describe_topic(topic)).count == 0

    run(redis_url, body)


def test_unknown_topic_and_auto_create(redis_url: str, topic: str) -> None:
    async def body(t: RedisTransport) -> None:
        with pytest.raises(TopicNotFoundError, match="auto_create"):
            await t.publish(topic, [Outgoing(b"x")], timeout=5)

    run(redis_url, body)

    async def auto(t: RedisTransport) -> None:
        assert t.capabilities.auto_create_topics
        await t.publish(topic, [Outgoing(b"x")], timeout=5)
        info = await t.describe_topic(topic)
        assert info.spec.partitions == 1 and info.count == 1
        await t.delete_topic(topic)

    run(redis_url, auto, auto_create="true")


def test_topic_admin_round_trip(redis_url: str, topic: str) -> None:
    async def body(t: RedisTransport) -> None:
        spec = TopicSpec(
            name=topic, partitions=2, retention_ms=86_400_000, max_event_bytes=2048,
            config={"team": "agents"},
        )  # fmt: skip
        await t.create_topic(spec)
        with pytest.raises(TopicExistsError):
            await t.create_topic(spec)
        info = await t.describe_topic(topic)
        assert info.spec == spec
        assert [p.count for p in info.partitions] == [0, 0]
        assert topic in await t.list_topics()
        grown = spec.model_copy(update={"partitions": 5, "max_event_bytes": 4096})
        await t.alter_topic(grown)
        assert (await t.describe_topic(topic)).spec == grown
        await t.publish(topic, [Outgoing(b"x", partition=4)], timeout=5)
        with pytest.raises(UnsupportedError, match="shrink"):
            await t.alter_topic(spec)
        with pytest.raises(UnsupportedError, match="retention_by_size"):
            await t.alter_topic(grown.model_copy(update={"retention_bytes": 10}))
        with pytest.raises(UnsupportedError, match="compaction"):
            await t.create_topic(TopicSpec(name=topic + "-c", cleanup_policy="compact"))
        await t.delete_topic(topic)
        assert topic not in await t.list_topics()
        with pytest.raises(TopicNotFoundError):
            await t.describe_topic(topic)
        with pytest.raises(TopicNotFoundError):
            await t.delete_topic(topic)

    run(redis_url, body)


def test_publish_after_delete_by_another_client_fails_cleanly(redis_url: str, topic: str) -> None:
    async def body(t: RedisTransport) -> None:
        await t.create_topic(TopicSpec(name=topic, partitions=2))
        await t.publish(topic, [Outgoing(b"x")], timeout=5)  # metadata now cached
        async with opened(redis_url) as other:
            await other.delete_topic(topic)
        with pytest.raises(TopicNotFoundError):
            await t.publish(topic, [Outgoing(b"y", partition=1)], timeout=5)
        assert not await t.client.exists(layout.stream_key(topic, 1))

    run(redis_url, body)


def test_time_retention_trims(redis_url: str, topic: str) -> None:
    async def body(t: RedisTransport) -> None:
        await t.create_topic(TopicSpec(name=topic))
        positions = await t.publish(topic, [Outgoing(b"old")] * 5, timeout=5)
        newest_ms = int(str(positions[-1].offset).split("-")[0])
        deadline = time.monotonic() + 5  # the entries must be older than the 1 ms retention
        while time.time() * 1000 <= newest_ms + 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.001)  # allowed: poll interval of a deadline wait
        await t.alter_topic(TopicSpec(name=topic, retention_ms=1))
        assert (await t.describe_topic(topic)).count == 0

    run(redis_url, body)


def test_plain_stream_is_adopted_as_a_one_partition_topic(redis_url: str, topic: str) -> None:
    cli = servers.require_tool("redis-cli", "to write entries as another client")
    parts = urlsplit(redis_url)
    subprocess.run(
        [cli, "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379),
         "-n", parts.path.strip("/") or "0", "XADD", topic, "*", "order", "42", "status", "paid"],
        check=True, capture_output=True, timeout=10,
    )  # fmt: skip

    async def body(t: RedisTransport) -> None:
        info = await t.describe_topic(topic)
        assert info.spec.partitions == 1 and info.count == 1
        assert topic in await t.list_topics()
        [record] = await t.read(topic, 0, None)
        assert record.raw_fields == {"order": b"42", "status": b"paid"}
        assert record.headers == {} and record.key is None
        assert record.value == b'{"order": "42", "status": "paid"}'
        await t.publish(topic, [Outgoing(b"ours", key=b"k")], timeout=5)
        assert [r.value for r in await t.read(topic, 0, None)][1] == b"ours"
        with pytest.raises(TopicExistsError, match="alter_topic"):
            await t.create_topic(TopicSpec(name=topic))
        await t.alter_topic(TopicSpec(name=topic, partitions=2))
        assert (await t.describe_topic(topic)).count == 2
        await t.delete_topic(topic)

    run(redis_url, body)


def test_publish_timeout(redis_url: str, topic: str) -> None:
    async def body(t: RedisTransport) -> None:
        await t.create_topic(TopicSpec(name=topic))
        with pytest.raises(OperationTimeoutError, match="timeout"):
            await t.publish(topic, [Outgoing(b"x" * 1000)] * 5000, timeout=0.001)

    run(redis_url, body)


def test_unreachable_server_names_url_without_password() -> None:
    url = f"redis://user:hunter2@127.0.0.1:{servers.free_port()}/0?socket_connect_timeout=1"
    transport = RedisTransport.from_url(url, {})
    with pytest.raises(ConnectionFailedError) as info:
        asyncio.run(transport.connect())
    text = str(info.value)
    assert "hunter2" not in text and "user:***@127.0.0.1" in text
    assert "Check that the server runs" in text
    assert "hunter2" not in repr(info.value.__cause__)


def test_wrong_password_and_missing_permission(acl_redis: int, topic: str) -> None:
    bad = f"redis://{ACL_USER}:wrong-{ACL_PASSWORD}@127.0.0.1:{acl_redis}/0"
    start = time.monotonic()
    with pytest.raises(AuthenticationError) as info:
        asyncio.run(RedisTransport.from_url(bad, {}).connect())
    assert time.monotonic() - start < 1.5  # at once: refused credentials are not retried
    assert ACL_PASSWORD not in str(info.value) and "***" in str(info.value)

    good = f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{acl_redis}/0"

    async def works(t: RedisTransport) -> None:
        await t.create_topic(TopicSpec(name=topic))
        assert len(await t.publish(topic, [Outgoing(b"x")], timeout=5)) == 1

    run(good, works)

    limited = f"redis://{RO_USER}:{RO_PASSWORD}@127.0.0.1:{acl_redis}/0"

    async def denied(t: RedisTransport) -> None:
        with pytest.raises(AuthenticationError, match="permission") as info:
            await t.publish(topic, [Outgoing(b"x")], timeout=5)
        assert RO_PASSWORD not in str(info.value)

    run(limited, denied)


def test_binary_foreign_entries_never_crash_reads(redis_url: str, topic: str) -> None:
    async def body(t: RedisTransport) -> None:
        raw = Redis.from_url(redis_url)
        try:
            await raw.xadd(topic, {b"\xff\xfe": b"\x00\x9f binary", b"_k": b"not ours"})
        finally:
            await raw.aclose()
        [record] = await t.read(topic, 0, None)
        assert record.raw_fields is not None
        assert record.raw_fields["_k"] == b"not ours"
        assert b"\\ufffd" in record.value  # undecodable bytes replaced in the JSON view
        await t.delete_topic(topic)

    run(redis_url, body)
