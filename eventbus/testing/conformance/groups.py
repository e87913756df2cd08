"""Consumer groups: members split work without duplicates, per-key order when a partition
moves, independent groups, where a new group starts, redelivery of un-acked events after a
close, a crash or a nack, and resetting a group to earliest, latest or a position."""

from __future__ import annotations

import time
from collections.abc import Callable

import eventbus
from eventbus.sync import EventBus
from eventbus.testing.conformance._base import SuiteBase, drain, unique


class GroupTests(SuiteBase):
    """Consumer groups: splitting, starting, redelivery and resets."""

    def test_group_members_split_work_without_duplicates(
        self, bus: EventBus, url: str, make_topic: Callable[..., str]
    ) -> None:
        topic = make_topic(partitions=4)
        group = unique("g")
        bus.publish_many(topic, [eventbus.Event(data=i, key=f"k{i}") for i in range(60)])
        with eventbus.connect(url) as other:
            a = self.subscribe(bus, topic, group, consumer="a")
            b = self.subscribe(other, topic, group, consumer="b")
            seen: list[tuple[str, int]] = []
            deadline = time.monotonic() + self.deadline
            while len(seen) < 60 and time.monotonic() < deadline:
                for name, sub in (("a", a), ("b", b)):
                    for d in sub.fetch(10, timeout=0.2):
                        d.ack()
                        seen.append((name, d.event.data))
            a.close()
            b.close()
        values = [v for _, v in seen]
        assert sorted(values) == list(range(60)), "every event exactly once across the group"

    def test_per_key_order_holds_when_a_partition_moves(
        self, bus: EventBus, url: str, make_topic: Callable[..., str]
    ) -> None:
        topic = make_topic(partitions=1)
        group = unique("g")
        bus.publish_many(topic, [eventbus.Event(data=i, key="k") for i in range(6)])
        with eventbus.connect(url) as other:
            # "m-2" owns the partition first; "m-1" sorts first, so range and round-robin
            # assignors hand it the partition when it joins
            old = self.subscribe(bus, topic, group, consumer="m-2")
            held = drain(old, 3, self.deadline, ack=False)
            assert [d.event.data for d in held] == [0, 1, 2]
            new = self.subscribe(other, topic, group, consumer="m-1")
            early = new.fetch(10, timeout=1.0)
            assert [d.event.data for d in early] == [], (
                "a new owner must not read past records its previous owner still holds"
            )
            for d in held:
                d.ack()
            rest: list[int] = []
            deadline = time.monotonic() + self.deadline
            while len(rest) < 3 and time.monotonic() < deadline:
                for sub in (old, new):
                    for d in sub.fetch(10, timeout=0.2):
                        d.ack()
                        rest.append(d.event.data)
            old.close()
            new.close()
        assert rest == [3, 4, 5]

    def test_two_groups_each_see_every_event(
        self, bus: EventBus, make_topic: Callable[..., str]
    ) -> None:
        topic = make_topic()
        bus.publish_many(topic, list(range(20)))
        for group in (unique("g1"), unique("g2")):
            with self.subscribe(bus, topic, group) as sub:
                got = drain(sub, 20, self.deadline)
            assert sorted(d.event.data for d in got) == list(range(20))

    def test_new_group_starts_at_earliest_by_default_or_latest_when_asked(
        self, bus: EventBus, make_topic: Callable[..., str]
    ) -> None:
        topic = make_topic(partitions=1)
        bus.publish(topic, "before")
        with self.subscribe(bus, topic, unique("g")) as sub:
            assert [d.event.data for d in drain(sub, 1, self.deadline)] == ["before"]
        with self.subscribe(bus, topic, unique("g"), start="latest") as sub:
            assert sub.fetch(10, timeout=1.0) == []  # joins the group at the end
            bus.publish(topic, "after")
            assert [d.event.data for d in drain(sub, 1, self.deadline)] == ["after"]

    def test_unacked_event_returns_after_consumer_closes(
        self, bus: EventBus, make_topic: Callable[..., str]
    ) -> None:
        topic = make_topic(partitions=1)
        group = unique("g")
        bus.publish_many(topic, ["a", "b"])
        first = self.subscribe(bus, topic, group, consumer="first")
        got = drain(first, 2, self.deadline, ack=False)
        got[0].ack()
        first.close()
        with self.subscribe(bus, topic, group, consumer="second") as second:
            (again,) = drain(second, 1, self.deadline)
        assert again.event.data == "b"
        if bus.capabilities.native_delivery_count:
            assert again.attempt == 2

    def test_unacked_event_returns_after_consumer_crashes(
        self, bus: EventBus, url: str, make_topic: Callable[..., str]
    ) -> None:
        topic = make_topic(partitions=1)
        group = unique("g")
        bus.publish_many(topic, ["a", "b", "c"])
        with eventbus.connect(url) as doomed_bus:
            doomed = self.subscribe(doomed_bus, topic, group, consumer="doomed")
            got = drain(doomed, 3, self.deadline, ack=False)
            got[0].ack()
            doomed.kill()  # no commit, no goodbye
            with self.subscribe(bus, topic, group, consumer="survivor") as survivor:
                again = drain(survivor, 2, self.deadline + self.session_timeout)
        assert [d.event.data for d in again] == ["b", "c"]

    def test_nack_with_delay_redelivers_later(
        self, bus: EventBus, make_topic: Callable[..., str]
    ) -> None:
        topic = make_topic(partitions=1)
        bus.publish(topic, "retry-me")
        with self.subscribe(bus, topic, unique("g")) as sub:
            (first,) = drain(sub, 1, self.deadline, ack=False)
            nacked_at = time.monotonic()
            first.nack(delay=0.5)
            (second,) = drain(sub, 1, self.deadline)
            assert time.monotonic() - nacked_at >= 0.45, "came back before its delay"
        assert second.event.id == first.event.id
        assert second.attempt == 2

    def test_reset_group_to_earliest_latest_and_position(
        self, bus: EventBus, make_topic: Callable[..., str]
    ) -> None:
        topic = make_topic(partitions=1)
        group = unique("g")
        positions = bus.publish_many(topic, list(range(5)))
        with self.subscribe(bus, topic, group) as sub:
            drain(sub, 5, self.deadline)
        changes = bus.reset_group(group, topic, "earliest")
        assert set(changes) == {0}
        with self.subscribe(bus, topic, group) as sub:
            assert [d.event.data for d in drain(sub, 5, self.deadline)] == list(range(5))
        bus.reset_group(group, topic, positions[3])
        with self.subscribe(bus, topic, group) as sub:
            assert [d.event.data for d in drain(sub, 2, self.deadline)] == [3, 4]
        bus.reset_group(group, topic, "latest")
        with self.subscribe(bus, topic, group) as sub:
            assert sub.fetch(10, timeout=1.0) == []
