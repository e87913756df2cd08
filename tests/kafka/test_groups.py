"""Consumer groups on a real broker: splitting, commits, nacks, attempts, dead letters, resets."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime

import pytest

from eventbus.adapters.kafka import KafkaTransport
from eventbus.errors import ClosedError, GroupActiveError, GroupNotFoundError
from eventbus.transport import LeasedConsumer, Outgoing, Record, TransportConsumer
from tests.kafka.conftest import (
    connected,
    fetch_until,
    make_topic,
    options,
    run,
    unique,
    wait_for,
)

pytestmark = pytest.mark.kafka


async def committed(t: KafkaTransport, group: str, topic: str) -> dict[int, int | None]:
    info = await t.describe_group(group)
    return {p.partition: p.committed for p in info.partitions if p.topic == topic}  # type: ignore[misc]


def test_two_members_split_partitions_without_duplicates(kafka_url: str) -> None:
    async def main() -> None:
        async with connected(kafka_url) as t:
            topic = await make_topic(t, partitions=4)
            group = unique("g")
            await t.publish(topic, [Outgoing(b"%d" % i, b"k%d" % i) for i in range(80)], timeout=30)
            a = await t.open_consumer([topic], group, "a", options())
            b = await t.open_consumer([topic], group, "b", options())
            seen: dict[str, list[Record]] = {"a": [], "b": []}
            deadline = time.monotonic() + 60
            while sum(map(len, seen.values())) < 80 and time.monotonic() < deadline:
                for name, member in (("a", a), ("b", b)):
                    got = await member.fetch(20, 0.2)
                    await member.ack(got)
                    seen[name].extend(got)
            values = sorted(int(r.value) for rs in seen.values() for r in rs)
            assert values == list(range(80)), "each record exactly once across the group"
            owners: dict[str, set[tuple[str, int]]] = {}

            async def both_own_partitions() -> bool:  # members must poll for rebalances
                for member in (a, b):
                    assert await member.fetch(1, 0.1) == [], "nothing is delivered twice"
                info = await t.describe_group(group)
                owners.clear()
                owners.update({m.name: set(m.assignments) for m in info.members})
                return info.state == "stable" and len(owners) == 2 and all(owners.values())

            await wait_for(both_own_partitions, 30, "the cooperative rebalance to finish")
            assert set(owners) == {"a", "b"}
            assert not owners["a"] & owners["b"]
            for name, records in seen.items():  # nobody read a partition it did not own at the end
                other = "b" if name == "a" else "a"
                late = [r for r in records if (topic, r.partition) in owners[other]]
                assert all(r.attempt == 1 for r in late)
            await a.close()
            await b.close()
            assert (await t.describe_group(group)).lag == 0

    run(main())


def test_only_the_contiguous_acked_prefix_is_committed(kafka_url: str) -> None:
    async def main() -> None:
        async with connected(kafka_url) as t:
            topic = await make_topic(t, partitions=1)
            group = unique("g")
            await t.publish(topic, [Outgoing(b"%d" % i) for i in range(6)], timeout=30)
            c = await t.open_consumer([topic], group, "c", options())
            records = await fetch_until(c, 6, ack=False)
            await c.ack([records[3], records[1], records[2]])  # out of order, 0 still open

            async def at(offset: int) -> bool:
                return (await committed(t, group, topic)).get(0) == offset

            await c.fetch(1, 0.1)
            await wait_for(lambda: at(0), 10, "offset 0 to stay committed")
            (part,) = (await t.describe_group(group)).partitions
            assert (part.delivered, part.lowest_pending, part.lag) == (5, 0, 6)
            await c.ack([records[0]])
            await wait_for(lambda: at(4), 10, "the prefix 0-3 to commit")
            await c.ack([records[5]])
            await c.ack([records[5]])  # idempotent
            await c.close()
            assert await at(4)
            again = await t.open_consumer([topic], group, "c2", options())
            rest = await fetch_until(again, 1)
            # 5 was acked above the commit: the commit metadata says so, it is not redelivered
            assert [r.offset for r in rest] == [4]
            assert [r.attempt for r in rest] == [2], "it was delivered before"
            assert await again.fetch(10, 0.5) == []
            await again.close()
            with pytest.raises(ClosedError):
                await again.fetch(1, 0.1)

    run(main())


def test_commits_in_flight_stay_bounded_and_the_last_ack_commits(kafka_url: str) -> None:
    """fetch(1) + ack each asks for two commits per record, faster than a coordinator answers:
    the member keeps at most a few in flight (unbounded, they queued ahead of the heartbeats
    until the session timed out), and the held-back commit of the last ack still goes out."""
    from eventbus.adapters.kafka._consumer import KafkaConsumer
    from eventbus.adapters.kafka._membership import _MAX_UNANSWERED

    total = 2000

    async def main() -> None:
        async with connected(kafka_url) as t:
            topic = await make_topic(t, partitions=1)
            group = unique("g")
            await t.publish(topic, [Outgoing(b"%d" % i) for i in range(total)], timeout=30)
            c = await t.open_consumer([topic], group, "c", options())
            assert isinstance(c, KafkaConsumer)
            most, done = 0, 0
            while done < total:
                for record in await c.fetch(1, 5.0):
                    await c.ack([record])
                    done += 1
                most = max(most, c._unanswered)
            assert most <= _MAX_UNANSWERED

            async def all_committed() -> bool:
                return (await committed(t, group, topic)).get(0) == total

            await wait_for(all_committed, 10, "the last ack's commit")
            await c.close()

    run(main())


def test_consumer_prefetch_is_bounded_unless_the_url_says_otherwise(kafka_url: str) -> None:
    async def config_of(url: str) -> dict[str, object]:
        async with connected(url) as t:
            topic = await make_topic(t, partitions=1)
            c = await t.open_consumer([topic], unique("g"), "c", options())
            try:
                return dict(c._config)  # type: ignore[attr-defined]
            finally:
                await c.close()

    default = run(config_of(kafka_url))
    assert default["queued.min.messages"] == 20000
    assert default["fetch.queue.backoff.ms"] == 50
    sep = "&" if "?" in kafka_url else "?"
    chosen = run(config_of(f"{kafka_url}{sep}queued.min.messages=5000"))
    assert chosen["queued.min.messages"] == "5000"


def test_nack_redelivers_after_delay_without_holding_back_the_partition(kafka_url: str) -> None:
    async def main() -> None:
        async with connected(kafka_url) as t:
            topic = await make_topic(t, partitions=1)
            await t.publish(topic, [Outgoing(b"a"), Outgoing(b"b")], timeout=30)
            c = await t.open_consumer([topic], unique("g"), "c", options())
            (first,) = await fetch_until(c, 1, ack=False)
            nacked = time.monotonic()
            await c.nack(first, delay=0.6)
            (second,) = await fetch_until(c, 1)
            assert second.value == b"b", "later records are not held back"
            (again,) = await fetch_until(c, 1, ack=False)
            assert time.monotonic() - nacked >= 0.55
            assert (again.value, again.offset, again.attempt) == (b"a", 0, 2)
            await c.nack(again)
            (third,) = await fetch_until(c, 1)
            assert third.attempt == 3
            await c.close()

    run(main())


def test_attempt_count_survives_a_restart(kafka_url: str) -> None:
    async def main() -> None:
        async with connected(kafka_url) as t:
            topic = await make_topic(t, partitions=1)
            group = unique("g")
            await t.publish(topic, [Outgoing(b"%d" % i) for i in range(3)], timeout=30)
            c = await t.open_consumer([topic], group, "c", options())
            first = await fetch_until(c, 3, ack=False)
            await c.nack(first[0], delay=0)
            (again,) = await fetch_until(c, 1, ack=False)
            assert again.attempt == 2
            await c.nack(again, delay=60)  # still waiting when we shut down
            await c.ack([first[2]])
            # commits 0 with "0 was delivered twice, 1 once, 2 is done"
            await c.close()
            c = await t.open_consumer([topic], group, "c", options())
            after = await fetch_until(c, 2, ack=False)
            assert [(r.offset, r.attempt) for r in after] == [(0, 3), (1, 2)]
            await c.kill()  # a crash: nothing new committed, but deliveries were recorded
            c = await t.open_consumer([topic], group, "c", options())
            after = await fetch_until(c, 2)
            assert [(r.offset, r.attempt) for r in after] == [(0, 4), (1, 3)]
            await c.close()

    run(main())


def test_dead_letter_writes_the_copy_then_acks(kafka_url: str) -> None:
    async def main() -> None:
        async with connected(kafka_url) as t:
            topic = await make_topic(t, partitions=1)
            dlq = await make_topic(t, partitions=1, prefix="dlq")
            group = unique("g")
            await t.publish(topic, [Outgoing(b"poison", b"k", {"eb-id": b"1"})], timeout=30)
            c = await t.open_consumer([topic], group, "c", options())
            (record,) = await fetch_until(c, 1, ack=False)
            await c.dead_letter(record, dlq, {"eb-dlq-reason": b"bad"})
            (copy,) = await t.read(dlq, 0, None)
            assert (copy.key, copy.value) == (b"k", b"poison")
            assert copy.headers == {"eb-id": b"1", "eb-dlq-reason": b"bad"}

            async def done() -> bool:
                return (await committed(t, group, topic)).get(0) == 1

            await wait_for(done, 10, "the original to be committed")
            await c.close()

    run(main())


def test_new_group_can_start_at_a_time(kafka_url: str) -> None:
    async def main() -> None:
        async with connected(kafka_url) as t:
            topic = await make_topic(t, partitions=1)
            now = int(time.time() * 1000)
            records = [Outgoing(b"%d" % i, timestamp_ms=now - 10_000 + i * 1000) for i in range(5)]
            await t.publish(topic, records, timeout=30)
            start = datetime.fromtimestamp((now - 7_500) / 1000, UTC)
            c = await t.open_consumer([topic], unique("g"), "c", options(start=start))
            got = await fetch_until(c, 2)
            assert [r.value for r in got] == [b"3", b"4"]
            assert await c.fetch(10, 0.3) == []
            await c.close()

    run(main())


def test_reset_refuses_an_active_group_and_moves_an_idle_one(kafka_url: str) -> None:
    async def main() -> None:
        async with connected(kafka_url) as t:
            topic = await make_topic(t, partitions=2)
            group = unique("g")
            await t.publish(
                topic, [Outgoing(b"%d" % i, partition=i % 2) for i in range(10)], timeout=30
            )
            c = await t.open_consumer([topic], group, "busy", options())
            await fetch_until(c, 10)
            started = time.monotonic()
            with pytest.raises(GroupActiveError, match="busy"):
                await t.reset_group(group, topic, "earliest")
            assert time.monotonic() - started < 10
            await c.close()
            changes = await t.reset_group(group, topic, {0: 2})
            assert changes == {0: (5, 2)}
            changes = await t.reset_group(group, topic, "earliest")
            assert changes == {0: (2, 0), 1: (5, 0)}
            info = await t.describe_group(group)
            assert info.lag == 10 and info.members == []
            assert await t.reset_group(group, topic, "latest") == {0: (0, 5), 1: (0, 5)}
            with pytest.raises(GroupNotFoundError):
                await t.describe_group(unique("nobody"))
            assert group in await t.list_groups()

    run(main())


def test_transport_close_closes_members_and_is_idempotent(kafka_url: str) -> None:
    async def main() -> None:
        async with connected(kafka_url) as t:
            topic = await make_topic(t, partitions=1)
            c = await t.open_consumer([topic], unique("g"), "c", options())
            await t.close()
            await t.close()
            with pytest.raises(ClosedError):
                await c.fetch(1, 0.1)
            with pytest.raises(ClosedError):
                await t.publish(topic, [Outgoing(b"x")], timeout=5)

    run(main())


class _Keeper:
    """Keeps a member fetching in the background (librdkafka runs rebalance callbacks inside
    poll, so a member that does not fetch never gives a partition up)."""

    def __init__(self, member: TransportConsumer) -> None:
        self.member = member
        self.got: list[Record] = []
        self._stop = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            self.got.extend(await self.member.fetch(10, 0.3))

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.wait_for(self.task, 60)


async def _moving_setup(
    t: KafkaTransport, t2: KafkaTransport, visibility_timeout: float
) -> tuple[str, str, TransportConsumer, list[Record], float]:
    topic = await make_topic(t, partitions=2)
    group = unique("g")
    await t.publish(
        topic,
        [Outgoing(b"%d-%d" % (p, i), partition=p) for p in (0, 1) for i in range(3)],
        timeout=30,
    )
    opts = options(visibility_timeout=visibility_timeout)
    old = await t.open_consumer([topic], group, "old", opts)
    started = time.monotonic()
    held = await fetch_until(old, 6, ack=False)
    return topic, group, old, held, started


async def _assigned(t: KafkaTransport, group: str) -> dict[str, list[tuple[str, int]]]:
    info = await t.describe_group(group)
    return {m.name: list(m.assignments) for m in info.members}


def test_a_partition_moves_only_after_the_records_its_owner_holds_are_acked(
    kafka_url: str,
) -> None:
    async def main() -> None:
        async with connected(kafka_url) as t, connected(kafka_url) as t2:
            topic, group, old, held, _ = await _moving_setup(t, t2, visibility_timeout=60.0)
            new = await t2.open_consumer([topic], group, "new", options(visibility_timeout=60.0))
            keeper = _Keeper(old)

            async def in_limbo() -> bool:  # old gave one partition up, new does not have it yet
                assert await new.fetch(10, 0.2) == [], "new read past records old still holds"
                owners = await _assigned(t, group)
                return set(owners) == {"old", "new"} and len(owners["old"]) == 1

            await wait_for(in_limbo, 30, "the rebalance to wait for old's acks")
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:  # and it stays that way: the wait is real
                assert await in_limbo()
            assert not keeper.task.done()
            await old.ack(held)  # from the event loop, while old's thread waits in the revoke
            await t.publish(
                topic,
                [Outgoing(b"%d-%d" % (p, i), partition=p) for p in (0, 1) for i in (3, 4)],
                timeout=30,
            )
            got: list[tuple[str, int, int]] = []
            deadline = time.monotonic() + 40
            while len(got) + len(keeper.got) < 4 and time.monotonic() < deadline:
                batch = await new.fetch(10, 0.2)
                await new.ack(batch)
                got.extend(("new", r.partition, r.offset) for r in batch)
            await keeper.stop()
            await old.ack(keeper.got)
            got.extend(("old", r.partition, r.offset) for r in keeper.got)
            assert sorted((p, o) for _, p, o in got) == [(0, 3), (0, 4), (1, 3), (1, 4)]
            moved = {p for name, p, _ in got if name == "new"}
            assert len(moved) == 1, "cooperative-sticky moves one of the two partitions"
            await old.close()
            await new.close()
            assert (await t.describe_group(group)).lag == 0

    run(main())


def test_a_partition_moves_once_its_owner_releases_what_it_holds(kafka_url: str) -> None:
    """A live owner keeps its leases (no timeout moves them); the records of a partition being
    revoked stop being held (``holds`` false) and, released unstarted, go to the new owner with
    the same attempt, while the owner keeps the other partition."""

    async def main() -> None:
        async with connected(kafka_url) as t, connected(kafka_url) as t2:
            topic, group, old, held, _ = await _moving_setup(t, t2, visibility_timeout=3.0)
            assert isinstance(old, LeasedConsumer)
            new = await t2.open_consumer([topic], group, "new", options(visibility_timeout=3.0))
            keeper = _Keeper(old)

            async def revoking() -> bool:
                assert await new.fetch(10, 0.2) == [], "new read past records old still holds"
                return any(not old.holds(r) for r in held)

            await wait_for(revoking, 30, "a revoke to start waiting for old's records")
            moving = [r for r in held if not old.holds(r)]
            staying = [r for r in held if old.holds(r)]
            assert len({r.partition for r in moving}) == 1 and len(moving) == 3
            await old.release(moving)
            again: list[Record] = []
            deadline = time.monotonic() + 30
            while len(again) < 3 and time.monotonic() < deadline:
                again.extend(await new.fetch(10, 0.2))
            await new.ack(again)
            assert [(r.partition, r.offset) for r in again] == [
                (r.partition, r.offset) for r in moving
            ]
            assert [r.attempt for r in again] == [1, 1, 1], "released unstarted: same attempt"
            await old.ack(staying)
            await keeper.stop()
            assert keeper.got == []
            await old.close()
            await new.close()
            info = await t.describe_group(group)
            assert {p.partition: p.committed for p in info.partitions} == {0: 3, 1: 3}

    run(main())


def test_reset_to_offsets_sets_the_next_record_read(kafka_url: str) -> None:
    async def main() -> None:
        async with connected(kafka_url) as t:
            topic = await make_topic(t, partitions=2)
            group = unique("g")
            await t.publish(
                topic, [Outgoing(b"%d" % i, partition=i % 2) for i in range(10)], timeout=30
            )
            c = await t.open_consumer([topic], group, "c", options())
            await fetch_until(c, 10)
            await c.close()
            assert await t.reset_group(group, topic, {0: 2}) == {0: (5, 2)}
            parts = {p.partition: p for p in (await t.describe_group(group)).partitions}
            assert (parts[0].committed, parts[0].delivered, parts[0].lowest_pending) == (2, 1, None)
            assert (parts[1].committed, parts[1].delivered) == (5, 4), "other partitions stay"
            c = await t.open_consumer([topic], group, "c", options())
            got = await fetch_until(c, 3)
            assert [(r.partition, r.offset, r.attempt) for r in got] == [
                (0, 2, 1),
                (0, 3, 1),
                (0, 4, 1),
            ]
            assert await c.fetch(10, 0.5) == []
            await c.close()

    run(main())


@pytest.mark.timeout(120)
def test_members_closing_one_after_the_other_commit_what_they_acked(kafka_url: str) -> None:
    """The first member to leave starts a rebalance; the other acks what it held and closes,
    and its final commit must land although the group is rebalancing (the migration's pause
    closes group members just like this)."""

    async def main() -> None:
        async with connected(kafka_url) as t:
            topic = await make_topic(t, partitions=2)
            group = unique("g")
            await t.publish(topic, [Outgoing(b"%d" % i, b"k%d" % i) for i in range(40)], timeout=30)
            a = await t.open_consumer([topic], group, "a", options())
            b = await t.open_consumer([topic], group, "b", options())
            held: list[Record] = []
            acked: list[Record] = []

            async def both_own() -> bool:
                got = await a.fetch(50, 0.1)
                await a.ack(got)
                acked.extend(got)
                held.extend(await b.fetch(50, 0.1))  # b acks only after a has left
                info = await t.describe_group(group)
                owning = [m for m in info.members if m.assignments]
                return info.state == "stable" and len(owning) == 2 and bool(held)

            await wait_for(both_own, 60, "both members to own a partition")
            await a.close()
            await b.ack(held)
            await b.close()
            expected = Counter(r.partition for r in acked + held)
            assert await committed(t, group, topic) == {p: expected[p] for p in (0, 1)}

    run(main(), 110)


def test_backlog_counts_from_the_earliest_retained_offset(
    kafka_url: str, kafka_bootstrap: str
) -> None:
    """backlog = end - committed, but never counts records retention already deleted;
    ``lag`` keeps Kafka's committed-offset meaning."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    async def main() -> None:
        async with connected(kafka_url) as t:
            topic = await make_topic(t, partitions=1)
            group = unique("g")
            await t.publish(topic, [Outgoing(b"%d" % i) for i in range(10)], timeout=30)
            await t.reset_group(group, topic, "earliest")
            (part,) = (await t.describe_group(group)).partitions
            assert (part.committed, part.lag, part.pending, part.backlog) == (0, 10, 0, 10)
            admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
            futures = admin.delete_records([TopicPartition(topic, 0, 4)], request_timeout=30)
            for future in futures.values():
                await asyncio.wrap_future(future)
            info = await t.describe_group(group)
            (part,) = info.partitions
            assert (part.committed, part.lag, part.backlog, info.backlog) == (0, 10, 6, 6)

    run(main())


def test_backlog_without_a_commit_counts_from_the_earliest_retained_offset() -> None:
    from eventbus.adapters.kafka._admin import _group_partition

    fresh = _group_partition("t", 0, None, None, (2, 10))
    assert (fresh.lag, fresh.backlog) == (None, 8)
    assert _group_partition("t", 0, 5, None, (2, 10)).backlog == 5
    assert _group_partition("t", 0, 12, None, (2, 10)).backlog == 0
    gone = _group_partition("t", 0, 3, None, None)  # the topic was deleted
    assert (gone.lag, gone.backlog) == (None, 0)
