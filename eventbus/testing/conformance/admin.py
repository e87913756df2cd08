"""Admin and introspection: topic create, describe, plan and apply (idempotent, destructive
changes refused), group list and describe, exact lag, pending and backlog, and trimming what a
group finished."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

import eventbus
from eventbus.errors import TopicNotFoundError
from eventbus.sync import Delivery, EventBus
from eventbus.testing.conformance._base import SuiteBase, drain, unique, wait_until
from eventbus.topics import TopicSpec
from eventbus.transport import TrimsFinished


class AdminTests(SuiteBase):
    """Topic admin and group introspection."""

    def test_create_describe_plan_apply_are_idempotent(self, bus: EventBus) -> None:
        name = unique("spec")
        spec = TopicSpec(name=name, partitions=2, retention_ms=86_400_000)
        plan = bus.plan([spec])
        assert [c.action for c in plan.changes] == ["create"]
        bus.apply([spec])
        assert bus.plan([spec]).empty
        assert bus.apply([spec]).empty
        info = bus.describe_topic(name)
        assert len(info.partitions) == 2
        assert info.spec.retention_ms == 86_400_000
        assert name in bus.list_topics()
        grown = spec.model_copy(update={"partitions": 3})
        change = bus.plan([grown]).changes[0]
        assert change.fields["partitions"] == (2, 3)
        assert any("moves existing keys" in w for w in change.warnings)
        bus.apply([grown])
        assert len(bus.describe_topic(name).partitions) == 3
        shrink = spec.model_copy(update={"partitions": 1})
        with pytest.raises(eventbus.errors.ConfigurationError, match="destructive"):
            bus.apply([shrink])
        bus.delete_topic(name)
        assert name not in bus.list_topics()
        with pytest.raises(TopicNotFoundError):
            bus.describe_topic(name)

    def test_groups_list_and_describe(self, bus: EventBus, make_topic: Callable[..., str]) -> None:
        topic = make_topic(partitions=2)
        group = unique("g")
        bus.publish_many(topic, [eventbus.Event(data=i, key=str(i)) for i in range(6)])
        with self.subscribe(bus, topic, group, consumer="m1") as sub:
            drain(sub, 6, self.deadline)
            info = bus.describe_group(group)
            assert [m.name for m in info.members] == ["m1"] or info.members == []
        assert group in bus.list_groups()
        info = bus.describe_group(group)
        assert {(p.topic, p.partition) for p in info.partitions} == {(topic, 0), (topic, 1)}
        assert info.lag == 0
        with pytest.raises(eventbus.errors.GroupNotFoundError):
            bus.describe_group(unique("nobody"))

    def test_lag_and_pending_are_exact(self, bus: EventBus, make_topic: Callable[..., str]) -> None:
        topic = make_topic(partitions=1)
        group = unique("g")
        bus.publish_many(topic, list(range(10)))
        sub = self.subscribe(bus, topic, group)
        drain(sub, 4, self.deadline)
        sub.close()
        info = bus.describe_group(group)
        assert info.lag == 6 and info.pending == 0
        sub = self.subscribe(bus, topic, group)
        drain(sub, 3, self.deadline, ack=False)
        info = bus.describe_group(group)
        # delivered but un-acked counts as pending where tracked, as lag where not (Kafka)
        assert info.lag + info.pending == 6
        assert info.pending in (0, 3)
        sub.close()

    def test_backlog_is_the_same_number_everywhere(
        self, bus: EventBus, make_topic: Callable[..., str]
    ) -> None:
        """backlog = not yet delivered + delivered and not acked, on every transport."""
        topic = make_topic(partitions=2)
        group = unique("g")
        bus.publish_many(topic, [eventbus.Event(data=i, key=f"k{i}") for i in range(10)])
        bus.reset_group(group, topic, "earliest")  # the group exists, nothing delivered

        def check(expected: int) -> bool:
            info = bus.describe_group(group)
            parts = [p for p in info.partitions if p.topic == topic]
            assert all(p.backlog is not None for p in parts), parts
            # how lag and pending relate to it (pending is 0 where not tracked: Kafka)
            assert all(p.backlog == (p.lag or 0) + p.pending for p in parts), parts
            return info.backlog == expected and sum(p.backlog or 0 for p in parts) == expected

        assert check(10)
        with self.subscribe(bus, topic, group) as sub:
            assert check(10)  # joined, nothing handed out
            got = drain(sub, 6, self.deadline, ack=False)
            assert check(10)  # delivered, not acked: not finished
            # ack each partition's delivered records but its last: a prefix in position
            # order, so a transport that commits only the acked prefix (Kafka) counts them too
            last: dict[int, Delivery] = {d.position.partition: d for d in got}
            acked = [d for d in got if d is not last[d.position.partition]]
            for d in acked:
                d.ack()
            # Kafka's committed offset moves once the adapter's commit lands
            wait_until(lambda: check(10 - len(acked)), self.deadline, "backlog after acks")
            assert check(10 - len(acked))
        assert check(10 - len(acked))  # closing returned the un-acked ones to the group

    def test_trim_finished_keeps_what_the_group_still_needs(
        self, bus: EventBus, make_topic: Callable[..., str]
    ) -> None:
        """TrimsFinished deletes only what the group finished: 4 acked events go; 3 delivered
        but un-acked and 3 not delivered stay. A group without a position trims nothing."""
        transport = bus.aio.transport
        if not isinstance(transport, TrimsFinished):
            pytest.skip("the transport does not implement TrimsFinished")
        topic = make_topic(partitions=1)
        group = unique("g")
        bus.publish_many(topic, list(range(10)))
        sub = self.subscribe(bus, topic, group)
        drain(sub, 4, self.deadline)
        drain(sub, 3, self.deadline, ack=False)
        wait_until(lambda: bus.describe_group(group).backlog == 6, self.deadline, "acks to land")

        def trim(who: str) -> int:
            work = transport.trim_finished(topic, who, [0])
            return asyncio.run_coroutine_threadsafe(work, bus._portal.loop).result(self.deadline)

        trim(unique("nobody"))
        assert [r.event.data for r in bus.replay(topic)] == list(range(10))
        trim(group)
        assert [r.event.data for r in bus.replay(topic)] == list(range(4, 10))
        sub.close()
        again = self.subscribe(bus, topic, group)
        assert sorted(d.event.data for d in drain(again, 6, self.deadline)) == list(range(4, 10))
        again.close()
