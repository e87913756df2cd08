"""Memory-transport details the conformance suite does not reach: retention, sharing, threads."""

import threading
import uuid
from datetime import UTC, datetime, timedelta

import eventbus
from eventbus.topics import TopicSpec


def _url() -> str:
    return f"memory://unit-{uuid.uuid4().hex[:8]}"


def test_connections_to_one_url_share_a_broker_and_names_isolate() -> None:
    url = _url()
    with eventbus.connect(url) as a, eventbus.connect(url) as b, eventbus.connect(_url()) as c:
        a.create_topic("shared")
        b.publish("shared", 1)
        assert a.describe_topic("shared").count == 1
        assert "shared" not in c.list_topics()


def test_retention_by_time_drops_old_events() -> None:
    with eventbus.connect(_url()) as bus:
        bus.create_topic(TopicSpec(name="t", retention_ms=60_000))
        old = datetime.now(UTC) - timedelta(hours=1)
        bus.publish("t", eventbus.Event(data="old", time=old))
        bus.publish("t", "new")
        assert [r.event.data for r in bus.replay("t")] == ["new"]


def test_retention_by_size_keeps_the_newest() -> None:
    with eventbus.connect(_url()) as bus:
        bus.create_topic(TopicSpec(name="t", retention_bytes=2_000))
        for i in range(50):
            bus.publish("t", {"i": i, "pad": "x" * 100})
        info = bus.describe_topic("t")
        assert 0 < info.count < 50
        assert info.partitions[0].last == 49
        kept = [r.event.data["i"] for r in bus.replay("t")]
        assert kept == list(range(50 - len(kept), 50))


def test_many_threads_publish_without_loss() -> None:
    with eventbus.connect(_url()) as bus:
        bus.create_topic("t", partitions=4)

        def work(n: int) -> None:
            for i in range(100):
                bus.publish("t", i, key=f"{n}-{i}")

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert bus.describe_topic("t").count == 800


def test_capabilities_reflect_auto_create() -> None:
    with eventbus.connect(_url()) as bus:
        assert not bus.capabilities.auto_create_topics
    with eventbus.connect(_url() + "?auto_create=true") as bus:
        assert bus.capabilities.auto_create_topics


def test_replay_follow_sees_new_events() -> None:
    import asyncio

    async def main() -> list[int]:
        async with eventbus.connect_async(_url()) as bus:
            await bus.create_topic("t")
            await bus.publish("t", 1)
            seen: list[int] = []

            async def follow() -> None:
                async for item in bus.replay("t", follow=True, poll_interval=0.01):
                    seen.append(item.event.data)
                    if len(seen) == 3:
                        return

            task = asyncio.create_task(follow())
            await bus.publish("t", 2)
            await bus.publish("t", 3)
            await asyncio.wait_for(task, 10)
            return seen

    assert asyncio.run(main()) == [1, 2, 3]
