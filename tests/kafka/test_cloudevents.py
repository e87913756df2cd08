"""CloudEvents on a real Kafka broker, against clients eventbus did not write.

- ``envelope=cloudevents``: a plain confluent-kafka Consumer and kcat see the ``ce_`` headers,
  ``content-type`` and the JSON data as the value;
- ``envelope=cloudevents-structured``: the value is a CloudEvent JSON object with the data;
- what a raw confluent-kafka Producer writes in either mode (as a Java, Dapr or Knative service
  would) is read by eventbus as typed events, by a group and by replay;
- a malformed CloudEvent is dead-lettered with the reason, and consumption goes on;
- ``envelope=eventbus`` writes exactly what the codec built, byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from pydantic import BaseModel

from eventbus import Event, JsonCodec
from eventbus.aio import AsyncEventBus, connect_async
from eventbus.event import encode_event
from eventbus.testing.fixtures import unavailable
from tests.kafka.conftest import connected, make_topic, run, unique, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]


class Order(BaseModel):
    order_id: int
    total: float


WHEN = datetime.now(UTC).replace(microsecond=890123)
"""Recent: time retention (7 days) may delete a record with an old timestamp at once."""
STAMP = WHEN.isoformat().encode()


def _order_event(n: int) -> Event:
    return Event(
        id=f"evt-{n}-{uuid.uuid4().hex[:8]}",
        data=Order(order_id=n, total=n * 1.5),
        key=f"customer-{n}",
        type="com.example.order.placed",
        headers={"trace": f"t{n}"},
        time=WHEN,
    )


@contextlib.asynccontextmanager
async def bus_for(url: str, envelope: str | None = None) -> AsyncIterator[AsyncEventBus]:
    options = {} if envelope is None else {"envelope": envelope}
    async with connect_async(url, options=options) as bus:
        yield bus


def consume_raw(bootstrap: str, topic: str, count: int, timeout: float = 30.0) -> list[Any]:
    """Read ``count`` records of partition 0 with a plain confluent-kafka Consumer."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique("raw"),
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        got: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            assert time.monotonic() < deadline, f"read {len(got)} of {count} records"
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                got.append(msg)
        return got
    finally:
        consumer.close()


def produce_raw(bootstrap: str, topic: str, records: list[dict[str, Any]]) -> None:
    """Write records with a plain confluent-kafka Producer, as a Java or Dapr service would."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    errors: list[Any] = []
    for record in records:
        producer.produce(
            topic,
            record["value"],
            record.get("key"),
            partition=0,
            headers=record["headers"],
            on_delivery=lambda err, _msg: errors.append(err) if err is not None else None,
        )
    assert producer.flush(30) == 0
    assert errors == []


def _headers(msg: Any) -> dict[str, bytes]:
    return {k: v for k, v in (msg.headers() or [])}


def test_binary_mode_is_read_by_a_plain_consumer(kafka_url: str, kafka_bootstrap: str) -> None:
    events = [_order_event(n) for n in range(3)]

    async def main() -> str:
        async with connected(kafka_url) as t:
            topic = await make_topic(t)
        async with bus_for(kafka_url, "cloudevents") as bus:
            await bus.publish_many(topic, events)
            await bus.publish(topic, {"untyped": True})
        return topic

    topic = run(main())
    msgs = consume_raw(kafka_bootstrap, topic, 4)
    for event, msg in zip(events, msgs[:3], strict=True):
        headers = _headers(msg)
        assert headers == {
            "ce_specversion": b"1.0",
            "ce_id": event.id.encode(),
            "ce_type": b"com.example.order.placed",
            "ce_source": b"/eventbus",
            "ce_time": STAMP,
            "content-type": b"application/json",
            "trace": event.headers["trace"].encode(),
        }
        assert msg.key() == event.key.encode()  # type: ignore[union-attr]
        assert json.loads(msg.value()) == event.data.model_dump()
        assert msg.timestamp()[1] == int(WHEN.timestamp() * 1000)
    untyped = _headers(msgs[3])
    assert untyped["ce_type"] == b"eventbus.event" and untyped["ce_source"] == b"/eventbus"
    assert json.loads(msgs[3].value()) == {"untyped": True}
    assert datetime.fromisoformat(untyped["ce_time"].decode()).tzinfo is not None


def test_structured_mode_value_is_a_cloudevent(kafka_url: str, kafka_bootstrap: str) -> None:
    event = _order_event(1)

    async def main() -> str:
        async with connected(kafka_url) as t:
            topic = await make_topic(t)
        async with connect_async(
            kafka_url, options={"envelope": "cloudevents-structured", "ce_source": "/svc/orders"}
        ) as bus:
            await bus.publish(topic, Event(**{**dict(event), "id": event.id}))
            await bus.publish(topic, {"n": 2})
        return topic

    topic = run(main())
    first, second = consume_raw(kafka_bootstrap, topic, 2)
    assert _headers(first) == {
        "content-type": b"application/cloudevents+json; charset=UTF-8",
        "trace": b"t1",
    }
    assert first.key() == b"customer-1"
    assert json.loads(first.value()) == {
        "specversion": "1.0",
        "id": event.id,
        "type": "com.example.order.placed",
        "source": "/svc/orders",
        "time": STAMP.decode(),
        "datacontenttype": "application/json",
        "data": {"order_id": 1, "total": 1.5},
    }
    body = json.loads(second.value())
    assert body["type"] == "eventbus.event" and body["data"] == {"n": 2}


def _kcat(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    if shutil.which("kcat") is None:
        unavailable("kcat is not installed (apt-get install kcat)")
    done = subprocess.run(
        ["kcat", "-b", bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-J", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def test_kcat_shows_the_cloudevents_headers_and_values(
    kafka_url: str, kafka_bootstrap: str
) -> None:
    event = _order_event(5)

    async def main() -> tuple[str, str]:
        async with connected(kafka_url) as t:
            binary, structured = await make_topic(t), await make_topic(t)
        async with bus_for(kafka_url, "cloudevents") as bus:
            await bus.publish(binary, event)
        async with bus_for(kafka_url, "cloudevents-structured") as bus:
            await bus.publish(structured, event)
        return binary, structured

    binary, structured = run(main())
    [row] = _kcat(kafka_bootstrap, binary)
    pairs = row["headers"]
    shown = dict(zip(pairs[::2], pairs[1::2], strict=True))
    assert shown == {
        "ce_specversion": "1.0",
        "ce_id": event.id,
        "ce_type": "com.example.order.placed",
        "ce_source": "/eventbus",
        "ce_time": STAMP.decode(),
        "content-type": "application/json",
        "trace": "t5",
    }
    assert row["key"] == "customer-5"
    assert json.loads(row["payload"]) == {"order_id": 5, "total": 7.5}
    [row] = _kcat(kafka_bootstrap, structured)
    assert row["headers"][:2] == ["content-type", "application/cloudevents+json; charset=UTF-8"]
    body = json.loads(row["payload"])
    assert body["id"] == event.id and body["data"] == {"order_id": 5, "total": 7.5}


JAVA_BINARY = {
    "key": b"customer-41",
    "value": b'{"order_id":41,"total":99.5}',
    "headers": [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"0b1c-java-41"),
        ("ce_type", b"com.example.order.placed"),
        ("ce_source", b"https://example.com/java-orders"),
        ("ce_time", b"2026-06-07T08:09:10.123456789Z"),
        ("ce_subject", b"order-41"),
        ("content-type", b"application/json"),
        ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    ],
}
DAPR_STRUCTURED = {
    "key": b"customer-42",
    "value": json.dumps(
        {
            "specversion": "1.0",
            "id": "5929aaac-a5e2-4ca1-859c-edfe73f11565",
            "type": "com.dapr.event.sent",
            "source": "checkout",
            "time": "2026-06-07T08:09:11Z",
            "datacontenttype": "application/json",
            "pubsubname": "orderpubsub",
            "topic": "orders",
            "data": {"order_id": 42, "total": 1.25},
        }
    ).encode(),
    "headers": [("content-type", b"application/cloudevents+json; charset=utf-8")],
}


def test_eventbus_reads_cloudevents_a_raw_producer_wrote(
    kafka_url: str, kafka_bootstrap: str
) -> None:
    async def setup() -> str:
        async with connected(kafka_url) as t:
            return await make_topic(t)

    topic = run(setup())
    produce_raw(kafka_bootstrap, topic, [JAVA_BINARY, DAPR_STRUCTURED])

    async def main() -> None:
        async with bus_for(kafka_url) as bus:  # reading needs no option
            sub = await bus.subscribe(topic, group=unique("g"), model=Order, session_timeout=6)
            got = []
            deadline = time.monotonic() + 30
            while len(got) < 2:
                assert time.monotonic() < deadline, f"got {len(got)} of 2 events"
                batch = await sub.fetch(timeout=0.5)
                await sub.ack(batch)
                got.extend(batch)
            java, dapr = (d.event for d in got)
            assert java.id == "0b1c-java-41"
            assert java.type == "com.example.order.placed"
            assert java.source == "https://example.com/java-orders"
            assert java.time == datetime(2026, 6, 7, 8, 9, 10, 123456, tzinfo=UTC)
            assert java.key == "customer-41"
            assert java.data == Order(order_id=41, total=99.5)
            assert java.headers == {
                "ce_subject": "order-41",
                "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            }
            assert dapr.id == "5929aaac-a5e2-4ca1-859c-edfe73f11565"
            assert dapr.type == "com.dapr.event.sent" and dapr.source == "checkout"
            assert dapr.time == datetime(2026, 6, 7, 8, 9, 11, tzinfo=UTC)
            assert dapr.key == "customer-42"
            assert dapr.data == Order(order_id=42, total=1.25)
            assert dapr.headers == {"ce_pubsubname": "orderpubsub", "ce_topic": "orders"}
            replayed = [r.event async for r in bus.replay(topic, model=Order)]
            assert [(e.id, e.data) for e in replayed] == [
                (java.id, java.data),
                (dapr.id, dapr.data),
            ]
            await sub.close()

    run(main())


@pytest.mark.parametrize("envelope", ["cloudevents", "cloudevents-structured"])
def test_round_trip_through_a_group_is_the_same_event(kafka_url: str, envelope: str) -> None:
    events = [_order_event(n) for n in range(5)]

    async def main() -> None:
        async with connected(kafka_url) as t:
            topic = await make_topic(t, partitions=2)
        async with bus_for(kafka_url, envelope) as bus:
            await bus.publish_many(topic, events)
            sub = await bus.subscribe(topic, group=unique("g"), model=Order, session_timeout=6)
            seen: dict[str, Event] = {}
            deadline = time.monotonic() + 30
            while len(seen) < len(events):
                assert time.monotonic() < deadline, f"got {len(seen)} of {len(events)} events"
                batch = await sub.fetch(timeout=0.5)
                await sub.ack(batch)
                seen.update((d.event.id, d.event) for d in batch)
            await sub.close()
        for event in events:
            back = seen[event.id]
            assert (back.type, back.source, back.time, back.key, back.headers, back.data) == (
                event.type,
                "/eventbus",
                event.time,
                event.key,
                event.headers,
                event.data,
            )

    run(main())


def test_malformed_cloudevents_are_dead_lettered_and_consumption_goes_on(
    kafka_url: str, kafka_bootstrap: str
) -> None:
    bad_json = {
        "value": b"{not json",
        "headers": [("content-type", b"application/cloudevents+json")],
    }
    no_type = {
        "value": b'{"order_id":1,"total":1}',
        "headers": [("ce_specversion", b"1.0"), ("ce_id", b"x-1"), ("ce_source", b"/s")],
    }

    async def setup() -> str:
        async with connected(kafka_url) as t:
            return await make_topic(t)

    topic = run(setup())
    produce_raw(kafka_bootstrap, topic, [JAVA_BINARY, bad_json, no_type, DAPR_STRUCTURED])

    async def main() -> None:
        handled: list[str] = []
        async with connected(kafka_url) as t:
            try:
                async with bus_for(kafka_url, "cloudevents") as bus:

                    def handler(delivery: Any) -> None:
                        handled.append(delivery.event.id)

                    runner = bus.runner(
                        handler, topic, group=unique("g"), model=Order, session_timeout=6
                    )
                    task = asyncio.create_task(runner.run())
                    try:
                        await wait_for(
                            _true(lambda: len(handled) == 2 and runner.stats.dead_lettered == 2),
                            60,
                            "two events handled and two dead-lettered",
                        )
                    finally:
                        runner.stop()
                        await asyncio.wait_for(task, 60)
                assert handled == ["0b1c-java-41", "5929aaac-a5e2-4ca1-859c-edfe73f11565"]
                dlq = f"{topic}.dlq"
                info = await t.describe_topic(dlq)
                dead = [r for p in info.partitions for r in await t.read(dlq, p.partition, None)]
                dead.sort(key=lambda r: r.headers["eb-dlq-source"])  # any order: by offset
                assert [r.headers["eb-dlq-source"] for r in dead] == [
                    f"{topic}/0/1".encode(),
                    f"{topic}/0/2".encode(),
                ]
                assert [r.value for r in dead] == [bad_json["value"], no_type["value"]]
                reasons = [r.headers["eb-dlq-reason"].decode() for r in dead]
                assert (
                    f"record {topic}/0/1 is not a valid CloudEvent: the structured value "
                    "is not JSON" in reasons[0]
                )
                assert "required attribute 'type' is missing" in reasons[1]
                assert dead[0].headers["content-type"] == b"application/cloudevents+json"
                assert dead[1].headers["ce_id"] == b"x-1"  # the original headers, untranslated
            finally:
                with contextlib.suppress(Exception):
                    await t.delete_topic(f"{topic}.dlq")

    run(main())


def _true(check: Any) -> Any:
    async def condition() -> bool:
        return bool(check())

    return condition


def test_eventbus_envelope_writes_the_same_bytes(kafka_url: str, kafka_bootstrap: str) -> None:
    event = _order_event(3)
    expected = encode_event(event, JsonCodec())

    async def main() -> str:
        async with connected(kafka_url) as t:
            topic = await make_topic(t)
        async with bus_for(kafka_url) as bus:
            await bus.publish(topic, event)
        async with bus_for(kafka_url, "eventbus") as bus:
            await bus.publish(topic, event)
        return topic

    topic = run(main())
    for msg in consume_raw(kafka_bootstrap, topic, 2):
        assert msg.value() == expected.value
        assert msg.key() == expected.key
        assert msg.headers() == list(expected.headers.items())
        assert msg.timestamp()[1] == expected.timestamp_ms
