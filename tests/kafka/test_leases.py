"""Leases on Kafka (issue #17): slow handlers keep their partitions, revokes wait for what the
member holds, released records go back with the same attempt, and the next owner skips records
that were acked above a released one (done offsets kept in the commit metadata)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import eventbus
from eventbus.adapters.kafka._consumer import _BUFFER_CAP, KafkaConsumer
from eventbus.adapters.kafka._metadata import (
    METADATA_BUDGET,
    CommitMetadata,
    decode_metadata,
    encode_metadata,
    parse_metadata,
)
from eventbus.adapters.kafka._partition import PartitionState
from eventbus.partitioning import partition_for_key
from eventbus.transport import Outgoing, Record
from tests.kafka.conftest import SESSION, connected, fetch_until, make_topic, options, run, unique

pytestmark = pytest.mark.kafka

# -- commit metadata (no broker) ---------------------------------------------------------------


def test_metadata_round_trip_with_done_ranges() -> None:
    text = encode_metadata(20, {5: 0, 6: 1, 11: 3}, [(7, 10), (12, 16), (17, 17)])
    assert text == "eb1 20 5:0,11:3 7+3,2+4"
    meta = parse_metadata(text)
    assert meta == CommitMetadata(20, {5: 0, 11: 3}, ((7, 10), (12, 16)))
    assert [o for o in range(0, 25) if meta.is_done(o)] == [7, 8, 9, 12, 13, 14, 15]
    assert decode_metadata(text) == (20, {5: 0, 11: 3}), "the (high, counts) view stays"
    only_done = encode_metadata(10, {}, [(6, 10)])
    assert only_done == "eb1 10  6+4"
    assert parse_metadata(only_done) == CommitMetadata(10, {}, ((6, 10),))


def test_metadata_in_the_old_format_is_still_read() -> None:
    assert parse_metadata("eb1 120 100:3,105:2") == CommitMetadata(120, {100: 3, 105: 2}, ())
    assert parse_metadata("eb1 7") == CommitMetadata(7, {}, ())
    assert not parse_metadata("eb1 7").is_done(6)
    assert parse_metadata("someone else's") == CommitMetadata()
    assert parse_metadata(None).high == -1
    # a done field that does not parse means "nothing known done": delivered again, not lost
    assert parse_metadata("eb1 9 5:2 x+1") == CommitMetadata(9, {5: 2}, ())
    assert parse_metadata("eb1 9  3+0") == CommitMetadata(9, {}, ())


def test_metadata_over_budget_keeps_the_lowest_done_ranges(
    caplog: pytest.LogCaptureFixture,
) -> None:
    base = 10**12
    ranges = [(base + 2 * i + 1, base + 2 * i + 2) for i in range(3000)]
    text = encode_metadata(base + 6001, {base: 2}, ranges)
    assert len(text) <= METADATA_BUDGET + len(f"eb1 {base + 6001} ")
    kept = parse_metadata(text).done
    assert 0 < len(kept) < len(ranges)
    assert list(kept) == ranges[: len(kept)], "the lowest ranges, exactly"
    # a partition whose acks do not fit logs it once and still commits what fits
    caplog.set_level(logging.WARNING, logger="eventbus.kafka")
    state = PartitionState(("t", 3), committed=0, high=0)
    now = time.monotonic()
    for offset in range(6000):
        state.deliver(Record("t", 3, offset, b""), now)
    for offset in range(1, 6000, 2):
        state.done(offset)
    first = state.position()
    assert first is not None and first[0] == 0
    assert 0 < len(parse_metadata(first[1]).done) < 3000
    state.done(2)
    assert state.position() is not None
    warned = [r for r in caplog.records if "cannot list every acked record" in r.getMessage()]
    assert len(warned) == 1 and "t/3" in warned[0].getMessage()


def test_position_keeps_what_the_previous_owner_recorded() -> None:
    state = PartitionState(("t", 0), committed=5, high=5)
    state.prior = parse_metadata("eb1 12 5:1 8+2,1+2")  # 8, 9, 11, 12 done; 5-7, 10 not
    assert state.position(force=True) == (5, "eb1 12  8+2,1+2")
    now = time.monotonic()
    state.deliver(Record("t", 0, 5, b""), now)
    state.deliver(Record("t", 0, 6, b""), now)
    state.done(5)
    state.release(6)  # given back unstarted: this delivery does not count (1 before it)
    assert state.position() == (6, "eb1 12  8+2,1+2")
    assert state.first_attempt(7) == 2 and state.first_attempt(10) == 2
    fresh = PartitionState(("t", 1), committed=0, high=0)
    fresh.deliver(Record("t", 1, 0, b""), now)
    fresh.deliver(Record("t", 1, 1, b""), now)
    fresh.release(0)
    assert fresh.position() == (0, "eb1 2 0:0")  # the next owner: attempt 1 again


# -- on the broker ---------------------------------------------------------------------------


@contextlib.contextmanager
def running(runner: Any) -> Iterator[None]:
    """Run a blocking runner on a thread; stop it and wait for it on the way out."""
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        runner.stop()
        thread.join(60)
        assert not thread.is_alive(), "the runner did not stop"


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)  # allowed: poll interval of a deadline wait


def _messages(
    caplog: pytest.LogCaptureFixture, *words: str, logger: str = "eventbus.kafka"
) -> list[str]:
    """Messages of ``logger`` (not its children) containing one of ``words``."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == logger and any(w in r.getMessage() for w in words)
    ]


@pytest.mark.timeout(90)
def test_a_handler_slower_than_max_poll_interval_keeps_its_partition(
    kafka_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Each handler runs 7 s, longer than max.poll.interval.ms (6 s) and the session timeout
    (6 s), and the runner holds one record at a time, so it does not fetch meanwhile: the
    member's keepalive polls, nothing is rebalanced and every event is handled once."""
    caplog.set_level(logging.INFO, logger="eventbus.kafka")
    handled: list[tuple[int, int]] = []
    lock = threading.Lock()

    def handler(delivery: Any) -> None:
        time.sleep(7.0)  # allowed: the handler's simulated slow work
        with lock:
            handled.append((delivery.event.data["n"], delivery.attempt))

    with eventbus.connect(kafka_url) as bus:
        topic = unique("slow")
        group = unique("g")
        bus.create_topic(topic, partitions=1)
        try:
            for n in range(2):
                bus.publish(topic, {"n": n})
            runner = bus.runner(
                handler,
                topic,
                group=group,
                batch_size=1,
                max_outstanding=1,
                session_timeout=SESSION,
                options={"max.poll.interval.ms": "6000"},
            )
            with running(runner):
                wait_until(lambda: len(handled) == 2, 60, "both events to be handled")
                during = _messages(caplog, "assigned", "revoked", "lost")
                kicked = _messages(
                    caplog, "maximum poll interval", logger="eventbus.kafka.librdkafka"
                )
            assert sorted(handled) == [(0, 1), (1, 1)], "each event once, at its first attempt"
            assert len(during) == 1 and during[0].startswith("assigned"), during
            assert kicked == []
            assert bus.describe_group(group).backlog == 0
        finally:
            bus.delete_topic(topic)


@pytest.mark.timeout(120)
def test_a_partition_moves_only_after_the_long_handler_on_it_finished(
    kafka_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Member a handles one slow event (8 s) per partition and fetches nothing meanwhile; b
    joins while they run. a's keepalive serves the revoke, which waits for the handler on the
    moving partition and commits its ack: nothing is handled twice, b takes over from there."""
    caplog.set_level(logging.INFO, logger="eventbus.kafka")
    handled: list[tuple[str, int, int]] = []  # (member, n, attempt)
    started = threading.Semaphore(0)
    lock = threading.Lock()

    def handler_for(member: str) -> Callable[[Any], None]:
        def handler(delivery: Any) -> None:
            if delivery.event.data.get("slow"):
                started.release()
                time.sleep(8.0)  # allowed: the handler's simulated slow work
            with lock:
                handled.append((member, delivery.event.data["n"], delivery.attempt))

        return handler

    keys = {
        p: next(f"k{i}" for i in range(100) if partition_for_key(f"k{i}", 2) == p) for p in (0, 1)
    }
    settings: dict[str, Any] = {
        "session_timeout": SESSION,
        "concurrency": 2,
        "batch_size": 2,
        "max_outstanding": 2,  # a does not fetch while both slow events run
    }
    with eventbus.connect(kafka_url) as bus:
        topic = unique("move")
        group = unique("g")
        bus.create_topic(topic, partitions=2)
        try:
            for n, p in enumerate((0, 1)):
                bus.publish(topic, {"n": n, "slow": True}, key=keys[p])
            a = bus.runner(handler_for("a"), topic, group=group, consumer="a", **settings)
            b = bus.runner(handler_for("b"), topic, group=group, consumer="b", **settings)
            with running(a):
                for _ in range(2):
                    assert started.acquire(timeout=60), "a did not start both slow events"
                joined = time.monotonic()
                with running(b):

                    def both_own_one() -> bool:
                        info = bus.describe_group(group)
                        owning = [m for m in info.members if len(m.assignments) == 1]
                        return info.state.lower() == "stable" and len(owning) == 2

                    wait_until(both_own_one, 60, "the rebalance to give b a partition")
                    assert time.monotonic() - joined > 5.0, "the partition moved mid-handler"
                    for n in range(2, 8):
                        bus.publish(topic, {"n": n}, key=keys[n % 2])
                    wait_until(lambda: len(handled) == 8, 60, "every event to be handled")
            counts = Counter(n for _, n, _ in handled)
            assert counts == Counter(range(8)), f"each event exactly once: {handled}"
            assert all(attempt == 1 for _, _, attempt in handled)
            assert {n for m, n, _ in handled if m == "a"} >= {0, 1}, "a finished both slow ones"
            assert any(m == "b" for m, _, _ in handled), "b got the moved partition's events"
            assert bus.describe_group(group).backlog == 0
            assert not _messages(caplog, "handled twice", "lost without")
        finally:
            bus.delete_topic(topic)


def test_release_in_the_middle_during_a_revoke_hands_only_the_released_record_on(
    kafka_url: str,
) -> None:
    """a holds every record of two partitions; b joins. For the partition that moves,
    ``holds`` turns false, a releases offset 2 and acks the rest: the revoke's commit stays at
    2 but records 3-5 as done, so b gets offset 2 alone, at the same attempt."""

    async def main() -> None:
        async with connected(kafka_url) as t, connected(kafka_url) as t2:
            topic = await make_topic(t, partitions=2)
            group = unique("g")
            await t.publish(
                topic,
                [Outgoing(b"%d-%d" % (p, i), partition=p) for p in (0, 1) for i in range(6)],
                timeout=30,
            )
            a = await t.open_consumer([topic], group, "a", options())
            assert isinstance(a, KafkaConsumer)
            held = await fetch_until(a, 12, ack=False)
            assert all(a.holds(r) for r in held)
            joining = asyncio.create_task(t2.open_consumer([topic], group, "b", options()))
            deadline = time.monotonic() + 40
            while all(a.holds(r) for r in held):  # a never fetches: its keepalive polls
                assert time.monotonic() < deadline, "the revoke never started"
                assert not joining.done() or joining.exception() is None
                await asyncio.sleep(0.05)  # allowed: poll interval of a deadline wait
            moving = {r.partition for r in held if not a.holds(r)}
            assert len(moving) == 1
            (p,) = moving
            mine = [r for r in held if r.partition == p]
            await a.release([mine[2]])
            await a.ack(mine[:2] + mine[3:])
            await a.ack([r for r in held if r.partition != p])
            b = await asyncio.wait_for(joining, 40)
            got = await fetch_until(b, 1)
            assert [(r.partition, r.offset, r.value, r.attempt) for r in got] == [
                (p, 2, b"%d-2" % p, 1)
            ], "only the released record, and its release did not count as a delivery"
            assert await b.fetch(10, 1.0) == [], "3-5 were acked: b skips them"
            await b.close()
            await a.close()
            info = await t.describe_group(group)
            assert {x.partition: x.committed for x in info.partitions} == {0: 6, 1: 6}

    run(main(), 110)


def test_a_released_record_comes_back_at_once_with_the_same_attempt(kafka_url: str) -> None:
    async def main() -> None:
        async with connected(kafka_url) as t:
            topic = await make_topic(t, partitions=1)
            group = unique("g")
            await t.publish(topic, [Outgoing(b"%d" % i) for i in range(4)], timeout=30)
            c = await t.open_consumer([topic], group, "c", options())
            assert isinstance(c, KafkaConsumer)
            first = await fetch_until(c, 4, ack=False)
            await c.release([first[2], first[1]])
            assert not c.holds(first[1]) and not c.holds(first[2])
            again = await c.fetch(10, 5.0)
            assert [(r.offset, r.attempt) for r in again] == [(1, 1), (2, 1)], "in order"
            assert all(c.holds(r) for r in again)
            await c.release([first[1]])  # the old copy is not held any more: ignored
            assert c.holds(again[0])
            await c.ack(first[:1] + again + first[3:])
            assert not any(c.holds(r) for r in first + again)
            await c.close()
            c = await t.open_consumer([topic], group, "c", options())
            assert await c.fetch(10, 1.0) == []
            await c.close()

    run(main())


def test_a_record_held_past_max_lease_is_handed_out_again(
    kafka_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="eventbus.kafka")

    async def main() -> None:
        async with connected(kafka_url) as t:
            topic = await make_topic(t, partitions=1)
            await t.publish(topic, [Outgoing(b"a"), Outgoing(b"b")], timeout=30)
            c = await t.open_consumer([topic], unique("g"), "c", options(max_lease=1.5))
            assert isinstance(c, KafkaConsumer)
            old, other = await fetch_until(c, 2, ack=False)
            await c.ack([other])
            fetched = time.monotonic()
            (again,) = await fetch_until(c, 1, timeout=20, ack=False)
            assert time.monotonic() - fetched >= 1.0
            assert (again.offset, again.attempt) == (0, 2)
            assert not c.holds(old) and c.holds(again)
            await c.nack(old)  # the old copy's lease ended: its nack is ignored
            assert c.holds(again)
            await c.ack([old])  # its handler finished after all: the ack counts
            assert not c.holds(again)
            assert await c.fetch(10, 0.5) == []
            await c.close()
            (warned,) = _messages(caplog, "max_lease")
            assert f"{topic}/0/0" in warned

    run(main())


def test_the_keepalive_pauses_a_full_buffer_and_fetch_resumes_without_gaps(
    kafka_url: str,
) -> None:
    """A member that does not fetch buffers at most about ``_BUFFER_CAP`` records, then pauses
    its partitions; once fetched again every record comes exactly once, in order."""
    total = _BUFFER_CAP * 3

    async def main() -> None:
        async with connected(kafka_url) as t:
            topic = await make_topic(t, partitions=1)
            await t.publish(topic, [Outgoing(b"%d" % i) for i in range(total)], timeout=30)
            c = await t.open_consumer([topic], unique("g"), "c", options())
            assert isinstance(c, KafkaConsumer)
            got = await c.fetch(1, 5.0)
            deadline = time.monotonic() + 30
            while not c._paused:  # white box: the keepalive's pause
                assert time.monotonic() < deadline, "the keepalive never paused"
                await asyncio.sleep(0.05)  # allowed: poll interval of a deadline wait
            assert _BUFFER_CAP <= len(c._buffer) <= _BUFFER_CAP + 500
            got += await fetch_until(c, total - len(got), ack=False)
            assert [r.offset for r in got] == list(range(total))
            assert not c._paused
            await c.ack(got)
            await c.close()

    run(main())
