"""Mixed fleets (issue #19): services on plain redis-py and eventbus services share a Redis
stream through a declared StreamLayout, and each reads every entry the other wrote.

The legacy producer and consumer below are plain redis-py code with their own field
conventions (``type``, ``payload`` JSON, ``task_id``); they import nothing from eventbus.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from pydantic import BaseModel

import eventbus
from eventbus import EventBus, StreamLayout, TopicSpec
from eventbus.errors import SerializationError
from eventbus.partitioning import partition_for_key
from eventbus.testing.conformance import drain, unique, wait_until
from eventbus.transport import Record

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

DEADLINE = 30.0
LAYOUT = StreamLayout(type="type", data="payload", key="task_id")


class TaskCreated(BaseModel):
    task_id: int
    title: str


# the legacy side: plain redis-py, its own conventions ------------------------------------------


def legacy_produce(url: str, stream: str, tasks: list[dict[str, Any]]) -> list[str]:
    client = redis.Redis.from_url(url)
    try:
        return [
            client.xadd(
                stream,
                {"type": "TaskCreated", "payload": json.dumps(t), "task_id": str(t["task_id"])},
            ).decode()
            for t in tasks
        ]
    finally:
        client.close()


def legacy_consume(url: str, stream: str, group: str, count: int) -> list[dict[str, Any]]:
    """XREADGROUP until ``count`` entries arrived; each as {type, payload, task_id}."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        try:
            client.xgroup_create(stream, group, id="0")
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        got: list[dict[str, Any]] = []
        for _ in range(200):
            reply = client.xreadgroup(group, "legacy-1", {stream: ">"}, count=100, block=100)
            for _, entries in reply:
                for entry_id, fields in entries:
                    got.append(
                        {
                            "type": fields.get("type"),
                            "payload": json.loads(fields["payload"]),
                            "task_id": fields.get("task_id"),
                        }
                    )
                    client.xack(stream, group, entry_id)
            if len(got) >= count:
                break
        return got
    finally:
        client.close()


# helpers --------------------------------------------------------------------------------------


@pytest.fixture
def bus(redis_url: str) -> Iterator[EventBus]:
    with eventbus.connect(redis_url) as connected:
        yield connected


@pytest.fixture
def stream() -> str:
    return f"legacy-{uuid.uuid4().hex[:10]}"


def read_records(bus: EventBus, topic: str, partition: int = 0) -> list[Record]:
    async def read() -> list[Record]:
        return await bus.aio.transport.read(topic, partition, None, limit=1000)

    return asyncio.run_coroutine_threadsafe(read(), bus._portal.loop).result(DEADLINE)


def run_until(runner: eventbus.Runner, done: Any) -> None:
    thread = threading.Thread(target=runner.run)
    thread.start()
    try:
        wait_until(done, DEADLINE, "the runner to finish its work")
    finally:
        runner.stop()
        thread.join(DEADLINE)
    assert not thread.is_alive()


def adopt(bus: EventBus, stream: str, layout: StreamLayout = LAYOUT) -> None:
    """What `eventbus topics adopt` stores: the layout on the (one-partition) stream."""
    bus.alter_topic(bus.describe_topic(stream).spec.model_copy(update={"layout": layout}))


# tests ----------------------------------------------------------------------------------------


def test_legacy_and_eventbus_services_read_each_others_entries(
    redis_url: str, bus: EventBus, stream: str
) -> None:
    legacy_produce(redis_url, stream, [{"task_id": 1, "title": "from legacy"}])
    adopt(bus, stream)
    legacy_produce(redis_url, stream, [{"task_id": i, "title": "from legacy"} for i in (2, 3)])
    for i in (4, 5):
        bus.publish(stream, TaskCreated(task_id=i, title="from eventbus"), key=str(i))

    seen_by_legacy = legacy_consume(redis_url, stream, "legacy-workers", 5)
    assert [(e["type"], e["task_id"], e["payload"]["task_id"]) for e in seen_by_legacy] == [
        ("TaskCreated", str(i), i) for i in range(1, 6)
    ]
    assert seen_by_legacy[3]["payload"] == {"task_id": 4, "title": "from eventbus"}

    handled: list[tuple[str | None, str | None, TaskCreated]] = []

    def handler(delivery: eventbus.Delivery) -> None:
        event = delivery.event
        handled.append((event.type, event.key, event.data))

    runner = bus.runner(handler, stream, group=unique("g"), model=TaskCreated)
    run_until(runner, lambda: len(handled) == 5)
    assert [h[0] for h in handled] == ["TaskCreated"] * 5
    assert [h[1] for h in handled] == [str(i) for i in range(1, 6)]
    assert [h[2].task_id for h in handled] == list(range(1, 6))
    assert all(isinstance(h[2], TaskCreated) for h in handled)
    assert runner.stats.dead_lettered == 0


def test_subscribe_reads_legacy_entries_typed(redis_url: str, bus: EventBus, stream: str) -> None:
    legacy_produce(redis_url, stream, [{"task_id": i, "title": f"t{i}"} for i in range(3)])
    adopt(bus, stream)
    with bus.subscribe(stream, group=unique("g"), model=TaskCreated) as sub:
        got = drain(sub, 3, DEADLINE)
    assert [d.event.data for d in got] == [TaskCreated(task_id=i, title=f"t{i}") for i in range(3)]
    assert [d.event.key for d in got] == ["0", "1", "2"]


def test_misfit_legacy_entries_are_dead_lettered_with_the_reason(
    redis_url: str, bus: EventBus, stream: str
) -> None:
    legacy_produce(redis_url, stream, [{"task_id": 1, "title": "ok"}])
    adopt(bus, stream)
    client = redis.Redis.from_url(redis_url)
    client.xadd(stream, {"payload": '{"task_id": 2, "title": "no type"}', "task_id": "2"})
    client.xadd(stream, {"type": "TaskCreated", "payload": "{not json", "task_id": "3"})
    client.close()
    legacy_produce(redis_url, stream, [{"task_id": 4, "title": "ok again"}])

    handled: list[int] = []
    runner = bus.runner(
        lambda d: handled.append(d.event.data.task_id), stream, group=unique("g"), model=TaskCreated
    )
    run_until(runner, lambda: handled == [1, 4] and runner.stats.dead_lettered == 2)

    dead = read_records(bus, f"{stream}.dlq")
    reasons = [r.headers["eb-dlq-reason"].decode() for r in dead]
    assert "no field 'type'" in reasons[0] and stream in reasons[0]
    assert "field 'payload' is not JSON" in reasons[1]
    assert json.loads(dead[0].value)["task_id"] == "2"  # the entry's fields, kept


def test_replay_shows_misfits_as_raw_events(redis_url: str, bus: EventBus, stream: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.xadd(stream, {"note": "no type, no payload"})
    client.close()
    adopt(bus, stream)
    (item,) = list(bus.replay(stream))
    assert item.event.type is None and item.event.data == {"note": "no type, no payload"}
    with pytest.raises(SerializationError, match="does not fit"):
        list(bus.replay(stream, model=TaskCreated))


def test_non_utf8_fields_survive_exactly(redis_url: str, bus: EventBus, stream: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.xadd(
        stream,
        {
            b"type": b"Caf\xe9",
            b"payload": b'{"task_id": 1, "title": "x"}',
            b"task_id": b"1",
            b"\xff\xfeodd": b"\x80\x81",
        },
    )
    client.close()
    adopt(bus, stream)
    (record,) = read_records(bus, stream)
    assert record.raw_fields is not None
    exact = {k.encode("utf-8", "surrogateescape"): v for k, v in record.raw_fields.items()}
    assert exact[b"\xff\xfeodd"] == b"\x80\x81"
    assert exact[b"type"] == b"Caf\xe9"
    assert record.headers["eb-type"] == b"Caf\xe9"
    (item,) = list(bus.replay(stream))
    assert item.event.type == "Caf\ufffd"
    assert item.event.data == {"task_id": 1, "title": "x"}


def test_flat_layout_round_trips(redis_url: str, bus: EventBus, stream: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.xadd(stream, {"event": "TaskCreated", "task_id": "1", "title": "flat"})
    adopt(bus, stream, StreamLayout(type="event"))
    bus.publish(stream, {"task_id": 2, "title": "flat too", "tags": ["a"]}, type="TaskCreated")
    with pytest.raises(SerializationError, match="flat stream layout"):
        bus.publish(stream, [1, 2], type="TaskCreated")
    with pytest.raises(SerializationError, match="give the event a type"):
        bus.publish(stream, {"task_id": 3})

    events = [r.event for r in bus.replay(stream)]
    assert [e.data for e in events] == [
        {"task_id": "1", "title": "flat"},
        {"task_id": "2", "title": "flat too", "tags": '["a"]'},
    ]
    assert [e.type for e in events] == ["TaskCreated", "TaskCreated"]
    entries = client.xrange(stream)
    client.close()
    assert len(entries) == 2  # the refused publishes wrote nothing
    written = entries[1][1]
    assert (written["event"], written["task_id"], written["title"], written["tags"]) == (
        "TaskCreated",
        "2",
        "flat too",
        '["a"]',
    )


def test_ids_of_legacy_entries_are_deterministic(
    redis_url: str, bus: EventBus, stream: str
) -> None:
    entry_ids = legacy_produce(redis_url, stream, [{"task_id": i, "title": "t"} for i in range(3)])
    adopt(bus, stream)
    published = bus.publish(stream, TaskCreated(task_id=9, title="eb"), key="9")
    first = [r.event.id for r in bus.replay(stream)]
    with eventbus.connect(redis_url) as other:  # another reader, another process's view
        second = [r.event.id for r in other.replay(stream)]
    assert first == second
    assert first[:3] == [
        str(uuid.uuid5(uuid.NAMESPACE_URL, f"redis-stream-entry:{stream}/0/{i}")) for i in entry_ids
    ]
    assert len(set(first)) == 4
    eb_record = read_records(bus, stream)[-1]
    assert eb_record.offset == published.offset
    assert first[3] == eb_record.headers["eb-id"].decode()  # eventbus's own id, kept


def test_id_and_time_fields(redis_url: str, bus: EventBus, stream: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.xadd(
        stream,
        {"type": "T", "payload": "{}", "event_id": "legacy-1", "ts": "1700000000123"},
    )
    client.xadd(stream, {"type": "T", "payload": "{}", "ts": "yesterday"})
    layout = StreamLayout(type="type", data="payload", id="event_id", time="ts", time_format="ms")
    adopt(bus, stream, layout)
    when = datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)
    bus.publish_many(stream, [eventbus.Event(type="T", data={}, id="eb-1", time=when)])
    first, misfit, mine = read_records(bus, stream)
    assert mine.headers["eb-id"] == b"eb-1" and mine.decode_error is None
    assert misfit.decode_error is not None and "'ts'" in misfit.decode_error
    events = [r.event for r in bus.replay(stream)]
    assert events[0].id == "legacy-1"
    assert events[0].time == datetime.fromtimestamp(1700000000.123, UTC)
    assert events[2].id == "eb-1" and events[2].time == when.replace(microsecond=250000)
    raw = client.xrange(stream)[2][1]
    client.close()
    assert raw["event_id"] == "eb-1" and raw["ts"] == str(int(when.timestamp() * 1000))
    assert first.headers["eb-id"] == b"legacy-1"


def test_keys_partition_a_topic_with_a_layout(bus: EventBus, redis_url: str) -> None:
    topic = unique("tasks")
    bus.create_topic(TopicSpec(name=topic, partitions=3, layout=LAYOUT))
    assert bus.describe_topic(topic).spec.layout == LAYOUT
    keys = [str(i) for i in range(12)]
    positions = [bus.publish(topic, TaskCreated(task_id=int(k), title="p"), key=k) for k in keys]
    assert [p.partition for p in positions] == [partition_for_key(k.encode(), 3) for k in keys]
    with bus.subscribe(topic, group=unique("g"), model=TaskCreated) as sub:
        got = drain(sub, 12, DEADLINE)
    assert sorted(d.event.key or "" for d in got) == sorted(keys)
    assert all(d.event.data.task_id == int(d.event.key or -1) for d in got)


def test_apply_stores_the_layout_once(bus: EventBus) -> None:
    topic = unique("tasks")
    spec = TopicSpec(name=topic, layout=LAYOUT)
    assert [c.action for c in bus.apply([spec]).changes] == ["create"]
    assert bus.plan([spec]).empty
    assert bus.plan([TopicSpec(name=topic)]).empty  # no layout given: the stored one stays
    changed = spec.model_copy(update={"layout": StreamLayout(type="kind", data="body")})
    the_plan = bus.plan([changed])
    assert list(the_plan.changes[0].fields) == ["layout"]
    bus.apply([changed])
    bus.apply([TopicSpec(name=topic, retention_ms=60_000)])
    assert bus.describe_topic(topic).spec.layout == changed.layout
