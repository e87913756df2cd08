"""Consumer groups on real Redis: ownership, rebalance, hand-over, nack, visibility, admin."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis

from eventbus.adapters.redis_streams import RedisTransport
from eventbus.adapters.redis_streams import _layout as layout
from eventbus.adapters.redis_streams._consumer import RedisConsumer
from eventbus.errors import ClosedError
from eventbus.testing import servers
from eventbus.topics import TopicSpec
from eventbus.transport import ConsumerOptions, Outgoing, Record, TransportConsumer

pytestmark = pytest.mark.redis

FAST = ConsumerOptions(session_timeout=1.0, visibility_timeout=30.0)


def run(url: str, body: Callable[[RedisTransport], Awaitable[None]]) -> None:
    async def main() -> None:
        transport = RedisTransport.from_url(url, {"poll_interval": "0.05"})
        await transport.connect()
        try:
            await body(transport)
        finally:
            await transport.close()

    asyncio.run(main())


async def collect(
    consumer: TransportConsumer, count: int, timeout: float = 10.0, *, ack: bool = True
) -> list[Record]:
    """Fetch until ``count`` records came (fails after ``timeout``)."""
    got: list[Record] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"got {len(got)} of {count} records in {timeout}s"
        batch = await consumer.fetch(count - len(got), 0.2)
        if ack and batch:
            await consumer.ack(batch)
        got += batch
    return got


async def _now(value: bool) -> bool:
    """A predicate for wait_for that needs no I/O."""
    return value


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> float:
    """Poll until true; returns the seconds it took."""
    start = time.monotonic()
    while not await predicate():
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)  # allowed: poll interval of a deadline wait
    return time.monotonic() - start


def keyed(n: int, keys: int = 12, start: int = 0) -> list[Outgoing]:
    return [
        Outgoing(b"%d" % i, key=b"key-%d" % (i % keys), headers={"seq": b"%d" % i})
        for i in range(start, start + n)
    ]


async def owned(t: RedisTransport, group: str) -> dict[str, set[int]]:
    info = await t.describe_group(group)
    return {m.name: {p for _, p in m.assignments} for m in info.members}


def first_handlings(seen: list[tuple[str, int, int]]) -> dict[int, list[int]]:
    """Per key, the sequence numbers in the order first handled. A kill loses the acks its
    member had not sent yet, so another member gets those events again (at least once): a
    redelivery is not a reordering."""
    by_key: dict[int, list[int]] = {}
    for _, key, seq in seen:
        if seq not in by_key.get(key, ()):
            by_key.setdefault(key, []).append(seq)
    return by_key


def test_rebalance_keeps_per_key_order_and_measures_time(redis_url: str, topic: str) -> None:
    """Three members join, one leaves (close), one crashes (kill) while events flow: every
    event is processed, per key in publish order, and partitions end balanced."""
    group = f"g-{topic}"
    timings: dict[str, float] = {}

    async def body(t: RedisTransport) -> None:
        await t.create_topic(TopicSpec(name=topic, partitions=6))
        seen: list[tuple[str, int, int]] = []  # (member, key, seq)
        stop = asyncio.Event()
        members: dict[str, TransportConsumer] = {}

        async def work(name: str) -> None:
            consumer = members[name]
            while not stop.is_set():
                try:
                    batch = await consumer.fetch(50, 0.1)
                except ClosedError:
                    return
                for record in batch:
                    seq = int(record.headers["seq"])
                    seen.append((name, seq % 12, seq))
                if batch:
                    await consumer.ack(batch)

        async def join(name: str) -> asyncio.Task[None]:
            members[name] = await t.open_consumer([topic], group, name, FAST)
            return asyncio.create_task(work(name))

        async def balanced(names: set[str]) -> bool:
            now = await owned(t, group)
            return set(now) == names and all(len(now[n]) == 6 // len(names) for n in names)

        tasks = [await join("a")]
        await t.publish(topic, keyed(120), timeout=5)
        for name, live, first in (("b", {"a", "b"}, 1000), ("c", {"a", "b", "c"}, 2000)):
            start = time.monotonic()
            tasks.append(await join(name))
            await wait_for(lambda live=live: balanced(live), 10, f"{name} to get partitions")
            timings[f"join {name}"] = time.monotonic() - start
            await t.publish(topic, keyed(120, start=first), timeout=5)
        start = time.monotonic()
        await members["c"].close()
        await wait_for(lambda: balanced({"a", "b"}), 10, "partitions to leave c")
        timings["leave (close)"] = time.monotonic() - start
        await t.publish(topic, keyed(120, start=5000), timeout=5)
        start = time.monotonic()
        await members["b"].kill()
        await wait_for(lambda: balanced({"a"}), 10, "partitions to leave a crashed b")
        timings["crash (kill, session 1 s)"] = time.monotonic() - start
        await t.publish(topic, keyed(120, start=9000), timeout=5)
        await wait_for(lambda: _now(len({s for _, _, s in seen}) == 600), 15, "all")
        stop.set()
        await asyncio.gather(*tasks)
        await members["a"].close()
        for key, seqs in first_handlings(seen).items():
            assert seqs == sorted(seqs), f"key {key} out of order: {seqs}"
        assert len({s for _, _, s in seen}) == 600
        assert {m for m, _, _ in seen} >= {"a", "b", "c"}

    run(redis_url, body)
    print("rebalance timings (s):", {k: round(v, 3) for k, v in timings.items()})


def test_crashed_member_pending_goes_to_the_new_owner(redis_url: str, topic: str) -> None:
    group = f"g-{topic}"

    async def body(t: RedisTransport) -> None:
        await t.create_topic(TopicSpec(name=topic, partitions=1))
        await t.publish(topic, keyed(5), timeout=5)
        a = await t.open_consumer([topic], group, "a", FAST)
        held = await collect(a, 5, ack=False)
        b = await t.open_consumer([topic], group, "b", FAST)
        assert await b.fetch(10, 0.3) == []  # a still owns the partition and holds the records
        await a.kill()
        start = time.monotonic()
        again = await collect(b, 5, timeout=10)
        assert time.monotonic() - start >= 0.5  # only after a's session ran out
        assert [r.offset for r in again] == [r.offset for r in held]
        assert {r.attempt for r in again} == {2}
        await b.close()

    run(redis_url, body)


def test_closed_member_pending_moves_at_once(redis_url: str, topic: str) -> None:
    group = f"g-{topic}"
    options = ConsumerOptions(session_timeout=30.0, visibility_timeout=30.0)

    async def body(t: RedisTransport) -> None:
        await t.create_topic(TopicSpec(name=topic, partitions=2))
        await t.publish(topic, keyed(10), timeout=5)
        a = await t.open_consumer([topic], group, "a", options)
        held = await collect(a, 10, ack=False)
        b = await t.open_consumer([topic], group, "b", options)
        await a.close()
        start = time.monotonic()
        again = await collect(b, 10, timeout=5)
        assert time.monotonic() - start < 2  # no session or visibility timeout to wait out
        assert sorted(str(r.offset) for r in again) == sorted(str(r.offset) for r in held)
        with pytest.raises(ClosedError):
            await a.fetch(1, 0)
        await b.close()

    run(redis_url, body)


@pytest.mark.parametrize("mode", ["fetch", "fetch_budget"])
def test_partition_moving_between_live_members_waits_for_the_old_owners_acks(
    redis_url: str, topic: str, mode: str
) -> None:
    """The partition really moves between two live members ("b" alone owns it; "a" sorts
    first, so it takes it over): the new owner reads nothing of it while the old owner still
    holds un-acked records of it, then everything after them, in order."""
    group = f"g-{topic}"
    options = ConsumerOptions(session_timeout=30.0, visibility_timeout=30.0)

    async def take(c: TransportConsumer, n: int, timeout: float) -> list[Record]:
        if mode == "fetch":
            return await c.fetch(n, timeout)
        assert isinstance(c, RedisConsumer)
        records, _ = await c.fetch_budget(1000.0, "w", n, timeout)
        return records

    async def body(t: RedisTransport) -> None:
        await t.create_topic(TopicSpec(name=topic, partitions=1))
        await t.publish(topic, keyed(5, keys=1), timeout=5)
        old = await t.open_consumer([topic], group, "b", options)
        held: list[Record] = []
        while len(held) < 5:
            held += await take(old, 5 - len(held), 0.2)  # un-acked, in flight at "b"
        new = await t.open_consumer([topic], group, "a", options)

        async def moved() -> bool:
            assert await old.fetch(10, 0) == []  # heartbeat: "b" releases the partition
            assert await take(new, 10, 0) == []  # "a" takes it; its sweep claims nothing
            return (await owned(t, group)).get("a") == {0}

        await wait_for(moved, 10, "the partition to move to a")
        await t.publish(topic, keyed(5, keys=1, start=5), timeout=5)
        for _ in range(3):
            assert await take(new, 10, 0.2) == []  # "b" still holds older records of the key
        await old.ack(held)
        got: list[Record] = []
        deadline = time.monotonic() + 10
        while len(got) < 5:
            assert time.monotonic() < deadline, f"got {len(got)} of 5 records"
            batch = await take(new, 5 - len(got), 0.2)
            await new.ack(batch)
            got += batch
        assert [int(r.headers["seq"]) for r in held + got] == list(range(10))
        assert {r.attempt for r in got} == {1}
        await new.close()
        await old.close()

    run(redis_url, body)


def test_restarted_member_rereads_its_pending_first(redis_url: str, topic: str) -> None:
    group = f"g-{topic}"

    async def body(t: RedisTransport) -> None:
        await t.create_topic(TopicSpec(name=topic))
        await t.publish(topic, keyed(3), timeout=5)
        first = await t.open_consumer([topic], group, "worker-1", FAST)
        held = await collect(first, 3, ack=False)
        await first.kill()
        await t.publish(topic, keyed(2, start=3), timeout=5)
        second = await t.open_consumer([topic], group, "worker-1", FAST)
        got = await collect(second, 5)
        assert [r.offset for r in got[:3]] == [r.offset for r in held]
        assert [r.attempt for r in got] == [2, 2, 2, 1, 1]
        await second.close()

    run(redis_url, body)


def test_nack_delay_does_not_hold_back_later_entries(redis_url: str, topic: str) -> None:
    group = f"g-{topic}"

    async def body(t: RedisTransport) -> None:
        await t.create_topic(TopicSpec(name=topic))
        await t.publish(topic, keyed(3), timeout=5)
        c = await t.open_consumer([topic], group, "c", FAST)
        [first] = await c.fetch(1, 1)
        await c.nack(first, 0.6)
        nacked_at = time.monotonic()
        later = await collect(c, 2)
        assert [r.value for r in later] == [b"1", b"2"]
        assert time.monotonic() - nacked_at < 0.6
        [again] = await collect(c, 1, timeout=5, ack=False)
        assert time.monotonic() - nacked_at >= 0.6
        assert (again.offset, again.attempt) == (first.offset, 2)
        await c.nack(again, 0)
        [third] = await collect(c, 1, timeout=5)
        assert third.attempt == 3
        await c.flush_acks()  # ack() sends its XACK in the background
        info = await t.describe_group(group)
        assert info.pending == 0 and info.lag == 0
        await c.close()

    run(redis_url, body)


def test_max_lease_redelivers_with_the_server_count(redis_url: str, topic: str) -> None:
    group = f"g-{topic}"
    options = ConsumerOptions(session_timeout=5.0, visibility_timeout=0.5, max_lease=0.3)

    async def body(t: RedisTransport) -> None:
        await t.create_topic(TopicSpec(name=topic))
        await t.publish(topic, keyed(2), timeout=5)
        c = await t.open_consumer([topic], group, "c", options)
        held = await collect(c, 2, ack=False)
        assert [c.holds(r) for r in held] == [True, True]
        start = time.monotonic()
        again = await collect(c, 2, timeout=5, ack=False)
        # renewals stop at max_lease; the own sweep claims them once the visibility timeout
        # passed since the last renewal (not before max_lease, give or take a tick)
        assert time.monotonic() - start >= 0.25
        assert [r.offset for r in again] == [r.offset for r in held]
        assert [r.attempt for r in again] == [2, 2]
        raw = Redis.from_url(t.settings.url.replace("***", ""))
        try:
            rows = await raw.xpending_range(topic, group, "-", "+", 10)
        finally:
            await raw.aclose()
        assert [r["times_delivered"] for r in rows] == [2, 2]
        await c.close()

    run(redis_url, body)


def test_release_hands_records_back_with_the_same_attempt(redis_url: str, topic: str) -> None:
    group = f"g-{topic}"
    options = ConsumerOptions(session_timeout=5.0, visibility_timeout=1.0)

    async def body(t: RedisTransport) -> None:
        await t.create_topic(TopicSpec(name=topic))
        await t.publish(topic, keyed(3), timeout=5)
        c = await t.open_consumer([topic], group, "c", options)
        held = await collect(c, 3, ack=False)
        await c.release(held[1:])
        assert [c.holds(r) for r in held] == [True, False, False]
        again = await collect(c, 2, timeout=5, ack=False)
        assert [r.offset for r in again] == [r.offset for r in held[1:]]
        assert [r.attempt for r in again] == [1, 1]
        await c.ack([held[0], *again])
        await c.close()

    run(redis_url, body)


def test_entries_from_redis_cli_flow_through_a_group(redis_url: str, topic: str) -> None:
    """A stream fed by another client (redis-cli XADD): raw fields arrive as records, eventbus
    entries mixed in arrive normally, and an entry deleted while pending blocks nothing."""
    group = f"g-{topic}"
    cli = servers.require_tool("redis-cli", "to write entries as another client")
    parts = urlsplit(redis_url)
    base = [cli, "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)]
    base += ["-n", parts.path.strip("/") or "0"]

    def xadd(*fields: str) -> str:
        out = subprocess.run(
            [*base, "XADD", topic, "*", *fields], check=True, capture_output=True, timeout=10
        )
        return out.stdout.decode().strip()

    async def body(t: RedisTransport) -> None:
        xadd("event", "created", "id", "1")
        c = await t.open_consumer([topic], group, "c", FAST)
        xadd("payload", '{"not": "eventbus"}')
        await t.publish(topic, [Outgoing(b"ours", key=b"k", headers={"eb-type": b"x"})], timeout=5)
        doomed = xadd("gone", "soon")
        got = await collect(c, 4)
        assert got[0].raw_fields == {"event": b"created", "id": b"1"}
        assert got[1].raw_fields == {"payload": b'{"not": "eventbus"}'}
        assert (got[2].value, got[2].headers, got[2].raw_fields) == (
            b"ours",
            {"eb-type": b"x"},
            None,
        )
        assert got[3].offset == doomed
        await t.publish(topic, keyed(1), timeout=5)
        [pending] = await collect(c, 1, ack=False)
        await c.kill()
        raw = Redis.from_url(redis_url)
        try:
            await raw.xdel(topic, str(pending.offset))  # deleted while pending
        finally:
            await raw.aclose()
        xadd("after", "delete")
        c2 = await t.open_consumer([topic], group, "c", FAST)
        [after] = await collect(c2, 1)
        assert after.raw_fields == {"after": b"delete"}
        info = await t.describe_group(group)
        assert info.pending == 0
        await c2.close()
        await t.delete_topic(topic)

    run(redis_url, body)


def test_dead_letter_copies_and_acks_atomically(redis_url: str, topic: str) -> None:
    group = f"g-{topic}"
    dlq = f"{topic}.dlq"

    async def body(t: RedisTransport) -> None:
        assert t.capabilities.atomic_dead_letter
        await t.create_topic(TopicSpec(name=topic))
        await t.create_topic(TopicSpec(name=dlq, partitions=2))
        await t.publish(topic, [Outgoing(b"bad", key=b"k", headers={"eb-id": b"1"})], timeout=5)
        c = await t.open_consumer([topic], group, "c", FAST)
        [record] = await collect(c, 1, ack=False)
        await c.dead_letter(record, dlq, {"eb-error": b"boom"})
        assert (await t.describe_group(group)).pending == 0
        [copy] = await t.read(dlq, layout_partition(b"k", 2), None)
        assert (copy.value, copy.key) == (b"bad", b"k")
        assert copy.headers == {"eb-id": b"1", "eb-error": b"boom"}
        await c.close()

    run(redis_url, body)


def layout_partition(key: bytes, partitions: int) -> int:
    from eventbus.partitioning import partition_for_key

    return partition_for_key(key, partitions)


def test_describe_and_reset_group(redis_url: str, topic: str) -> None:
    group = f"g-{topic}"

    async def body(t: RedisTransport) -> None:
        await t.create_topic(TopicSpec(name=topic, partitions=2))
        positions = await t.publish(
            topic, [Outgoing(b"%d" % i, partition=0) for i in range(10)], timeout=5
        )
        c = await t.open_consumer([topic], group, "m1", FAST)
        got = await collect(c, 4, ack=False)
        await c.ack(got[:3])
        await c.flush_acks()  # ack() sends its XACK in the background
        info = await t.describe_group(group)
        assert [m.name for m in info.members] == ["m1"]
        assert set(info.members[0].assignments) == {(topic, 0), (topic, 1)}
        assert info.members[0].pending == 1
        p0 = info.partitions[0]
        assert (p0.committed, p0.lag, p0.pending) == (got[-1].offset, 6, 1)
        if hasattr(p0, "delivered"):  # contract fields for position translation
            assert (p0.delivered, p0.lowest_pending) == (got[-1].offset, got[3].offset)
            assert getattr(info.partitions[1], "delivered", 0) is None
        assert group in await t.list_groups()

        moved = await t.reset_group(group, topic, {0: positions[7].offset})
        assert moved == {0: (got[-1].offset, layout.id_before(str(positions[7].offset)))}
        info = await t.describe_group(group)
        assert (info.partitions[0].lag, info.partitions[0].pending) == (3, 0)
        assert [r.value for r in await collect(c, 3)] == [b"7", b"8", b"9"]

        when = datetime.fromtimestamp(layout.id_ms(str(positions[0].offset)) / 1000, UTC)
        await t.reset_group(group, topic, when)
        assert (await t.describe_group(group)).lag == 10
        await t.reset_group(group, topic, "latest")
        assert (await t.describe_group(group)).lag == 0
        await t.reset_group(group, topic, "earliest")
        assert (await t.describe_group(group)).lag == 10

        raw = Redis.from_url(redis_url)
        try:  # a foreign SETID without ENTRIESREAD: Redis no longer knows the lag
            await raw.xgroup_setid(topic, group, str(positions[4].offset))
        finally:
            await raw.aclose()
        assert (await t.describe_group(group)).lag == 5
        await c.close()

    run(redis_url, body)


def test_backlog_is_exact_after_trims_and_deletions(redis_url: str, topic: str) -> None:
    """backlog = undelivered entries still in the stream + the group's PEL. Redis's own lag
    counts entries trimmed before the group read them, and is nil after deletions ahead."""
    group = f"g-{topic}"

    async def body(t: RedisTransport) -> None:
        await t.create_topic(TopicSpec(name=topic))
        await t.publish(topic, [Outgoing(b"%d" % i) for i in range(10)], timeout=5)
        await t.reset_group(group, topic, "earliest")
        raw = Redis.from_url(redis_url)
        try:
            info = await t.describe_group(group)
            assert (info.lag, info.pending, info.backlog) == (10, 0, 10)
            # plain XREADGROUP / XACK: exactly 4 delivered, 2 of them acked
            ((_, read),) = await raw.xreadgroup(group, "x", {topic: ">"}, count=4)
            await raw.xack(topic, group, read[0][0], read[1][0])
            (part,) = (await t.describe_group(group)).partitions
            assert (part.lag, part.pending, part.backlog) == (6, 2, 8)

            await raw.xtrim(topic, maxlen=3, approximate=False)  # 3 unread entries left
            assert (await raw.xinfo_groups(topic))[0]["lag"] == 6  # Redis still says 6
            (part,) = (await t.describe_group(group)).partitions
            assert (part.lag, part.pending, part.backlog) == (3, 2, 5)

            left = [entry_id for entry_id, _ in await raw.xrange(topic)]
            await raw.xdel(topic, left[1])
            assert (await raw.xinfo_groups(topic))[0]["lag"] is None
            info = await t.describe_group(group)
            assert (info.lag, info.pending, info.backlog) == (2, 2, 4)
        finally:
            await raw.aclose()

    run(redis_url, body)


def test_group_start_positions_and_recovery_from_destroy(redis_url: str, topic: str) -> None:
    async def body(t: RedisTransport) -> None:
        await t.create_topic(TopicSpec(name=topic))
        old = await t.publish(topic, keyed(3), timeout=5)
        latest = await t.open_consumer(
            [topic], f"late-{topic}", "c", ConsumerOptions(start="latest", session_timeout=1)
        )
        since = datetime.fromtimestamp(layout.id_ms(str(old[0].offset)) / 1000, UTC)
        timed = await t.open_consumer(
            [topic], f"timed-{topic}", "c", ConsumerOptions(start=since, session_timeout=1)
        )
        assert [r.value for r in await collect(timed, 3)] == [b"0", b"1", b"2"]
        assert await latest.fetch(10, 0.2) == []
        await t.publish(topic, keyed(1, start=3), timeout=5)
        assert [r.value for r in await collect(latest, 1)] == [b"3"]
        raw = Redis.from_url(redis_url)
        try:
            await raw.xgroup_destroy(topic, f"late-{topic}")
        finally:
            await raw.aclose()
        await t.publish(topic, keyed(1, start=4), timeout=5)
        assert len(await collect(latest, 1)) == 1  # group re-created, reading goes on
        await latest.close()
        await timed.close()

    run(redis_url, body)


def test_partitions_added_while_consuming_are_read(redis_url: str, topic: str) -> None:
    group = f"g-{topic}"

    async def body(t: RedisTransport) -> None:
        await t.create_topic(TopicSpec(name=topic, partitions=1))
        c = await t.open_consumer([topic], group, "c", FAST)
        assert await c.fetch(10, 0.1) == []
        await t.alter_topic(TopicSpec(name=topic, partitions=3))
        await t.publish(topic, [Outgoing(b"new", partition=2)], timeout=5)
        [record] = await collect(c, 1)
        assert (record.partition, record.value) == (2, b"new")
        await c.close()

    run(redis_url, body)


def test_fetch_returns_within_its_timeout(redis_url: str, topic: str) -> None:
    async def body(t: RedisTransport) -> None:
        await t.create_topic(TopicSpec(name=topic, partitions=3))
        c = await t.open_consumer([topic], f"g-{topic}", "c", FAST)
        for timeout in (0.0, 0.3, 1.0):
            start = time.monotonic()
            assert await c.fetch(10, timeout) == []
            assert time.monotonic() - start < timeout + 0.25
        await c.close()

    run(redis_url, body)
