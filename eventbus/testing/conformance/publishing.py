"""Publishing and reading: round trips, positions and per-key order of `publish_many`,
oversize events, unknown and auto-created topics, replay by beginning, position and time, and
the async API (concurrent single publishes, an async round trip)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import eventbus
from eventbus.errors import EventTooLargeError, TopicNotFoundError
from eventbus.sync import EventBus
from eventbus.testing.conformance._base import SuiteBase, drain, unique, wait_until


class PublishingTests(SuiteBase):
    """Publishing, reading and replaying, through the blocking and the async API."""

    def test_round_trip_with_key_headers_and_type(
        self, bus: EventBus, make_topic: Callable[..., str]
    ) -> None:
        topic = make_topic()
        pos = bus.publish(
            topic, {"n": 1, "s": "é"}, key="user-7", headers={"trace": "abc"}, type="Created"
        )
        assert pos.partition == eventbus.partition_for_key("user-7", 3)
        with self.subscribe(bus, topic, unique("g")) as sub:
            (d,) = drain(sub, 1, self.deadline)
        assert d.event.data == {"n": 1, "s": "é"}
        assert d.event.key == "user-7"
        assert d.event.type == "Created"
        tracing = {"traceparent", "tracestate"}  # added when OpenTelemetry tracing is active
        assert {k: v for k, v in d.event.headers.items() if k not in tracing} == {"trace": "abc"}
        assert d.position == pos
        assert d.attempt == 1

    def test_publish_many_positions_and_per_key_order(
        self, bus: EventBus, make_topic: Callable[..., str]
    ) -> None:
        topic = make_topic(partitions=3)
        events = [eventbus.Event(data={"seq": i}, key=f"k{i % 5}") for i in range(100)]
        positions = bus.publish_many(topic, events)
        assert len(positions) == 100
        for event, pos in zip(events, positions, strict=True):
            assert pos.partition == eventbus.partition_for_key(event.key or "", 3)
        with self.subscribe(bus, topic, unique("g"), batch_size=50) as sub:
            got = drain(sub, 100, self.deadline)
        by_key: dict[str, list[int]] = {}
        for d in got:
            by_key.setdefault(d.event.key or "", []).append(d.event.data["seq"])
        for key, seqs in by_key.items():
            assert seqs == sorted(seqs), f"key {key} out of order: {seqs}"
        assert sorted(d.event.id for d in got) == sorted(e.id for e in events)

    def test_oversize_event_is_rejected_and_nothing_written(
        self, bus: EventBus, make_topic: Callable[..., str]
    ) -> None:
        topic = make_topic(partitions=1)
        with pytest.raises(EventTooLargeError, match="bytes"):
            bus.publish(topic, "x" * (bus.capabilities.max_event_bytes + 10))
        assert bus.describe_topic(topic).count == 0

    def test_unknown_topic_fails_clearly(self, bus: EventBus) -> None:
        with pytest.raises(TopicNotFoundError, match=r"does not exist|unknown|not found"):
            bus.publish(unique("missing"), {"a": 1})

    def test_auto_create_when_configured(self, url: str) -> None:
        sep = "&" if "?" in url else "?"
        with eventbus.connect(f"{url}{sep}auto_create=true") as bus:
            topic = unique("auto")
            bus.publish(topic, {"a": 1})
            assert topic in bus.list_topics()

    def test_replay_from_beginning_position_and_time(
        self, bus: EventBus, make_topic: Callable[..., str]
    ) -> None:
        topic = make_topic(partitions=1)
        first = bus.publish_many(topic, ["a", "b", "c"])
        marker = datetime.now(UTC) + timedelta(milliseconds=3)  # strictly after a, b, c
        wait_until(lambda: datetime.now(UTC) >= marker + timedelta(milliseconds=3), 1, "time")
        later = bus.publish_many(topic, ["d", "e"])
        assert [r.event.data for r in bus.replay(topic)] == ["a", "b", "c", "d", "e"]
        assert [r.event.data for r in bus.replay(topic, start=first[1])] == ["b", "c", "d", "e"]
        assert [r.event.data for r in bus.replay(topic, start=first[1], end=later[0])] == [
            "b",
            "c",
            "d",
        ]
        if bus.capabilities.timestamp_replay:
            assert [r.event.data for r in bus.replay(topic, start=marker)] == ["d", "e"]
        assert list(bus.replay(topic, start="latest")) == []

    def test_concurrent_single_publishes_each_get_their_own_position(
        self, url: str, make_topic: Callable[..., str]
    ) -> None:
        """Publishes of one loop turn share a transport call; each still returns the position
        of its own event."""
        topic = make_topic(partitions=3)

        async def collect() -> tuple[list[Any], dict[str, Any]]:
            async with eventbus.connect_async(url) as bus:
                results = await asyncio.gather(
                    *(bus.publish(topic, {"seq": i}, key=f"k{i % 7}") for i in range(60)),
                    return_exceptions=True,
                )
                found: dict[str, Any] = {}
                async for item in bus.replay(topic):
                    found[str(item.position)] = item.event.data
                return results, found

        results, found = asyncio.run(asyncio.wait_for(collect(), self.deadline))
        assert not [r for r in results if isinstance(r, BaseException)]
        assert len(set(results)) == 60
        for i, pos in enumerate(results):
            assert pos.partition == eventbus.partition_for_key(f"k{i % 7}", 3)
            assert found[str(pos)] == {"seq": i}

    def test_oversize_event_among_concurrent_publishes_fails_alone(
        self, url: str, make_topic: Callable[..., str]
    ) -> None:
        topic = make_topic(partitions=1)

        async def main() -> list[Any]:
            async with eventbus.connect_async(url) as bus:
                too_big = "x" * (bus.capabilities.max_event_bytes + 10)
                payloads: list[Any] = [{"seq": i} for i in range(20)]
                payloads[7] = too_big
                return await asyncio.gather(
                    *(bus.publish(topic, p) for p in payloads), return_exceptions=True
                )

        results = asyncio.run(asyncio.wait_for(main(), self.deadline))
        assert isinstance(results[7], EventTooLargeError)
        assert not [r for i, r in enumerate(results) if i != 7 and isinstance(r, BaseException)]
        with eventbus.connect(url) as bus:
            assert bus.describe_topic(topic).count == 19

    def test_async_api_round_trip(self, url: str, make_topic: Callable[..., str]) -> None:
        topic = make_topic(partitions=1)

        async def main() -> list[Any]:
            async with eventbus.connect_async(url) as bus:
                await bus.publish(topic, {"a": 1}, key="k")
                await bus.publish_many(topic, [{"a": 2}, {"a": 3}])
                sub = await bus.subscribe(
                    topic, group=unique("g"), session_timeout=self.session_timeout
                )
                out: list[Any] = []
                async with sub:
                    async for delivery in sub:
                        out.append(delivery.event.data)
                        await delivery.ack()
                        if len(out) == 3:
                            break
                return out

        assert asyncio.run(asyncio.wait_for(main(), self.deadline)) == [
            {"a": 1},
            {"a": 2},
            {"a": 3},
        ]
