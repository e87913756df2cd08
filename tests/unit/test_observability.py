"""Tracing and metrics with the OpenTelemetry SDK's in-memory exporter and reader."""

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="needs the dev extra (opentelemetry-sdk)")

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import eventbus
from eventbus.testing.conformance import wait_until

EXPORTER = InMemorySpanExporter()
READER = InMemoryMetricReader()


@pytest.fixture(scope="module", autouse=True)
def providers() -> Iterator[None]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))
    yield


def _counter(name: str, topic: str) -> float:
    data = READER.get_metrics_data()
    total = 0.0
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name != name:
                    continue
                for point in metric.data.data_points:
                    if point.attributes.get("messaging.destination.name") == topic:
                        total += getattr(point, "value", getattr(point, "count", 0))
    return total


def _run(bus: eventbus.EventBus, handler: Any, topic: str, done: Any, **kw: Any) -> None:
    runner = bus.runner(handler, topic, group="g", backoff=0.01, **kw)
    thread = threading.Thread(target=runner.run)
    thread.start()
    try:
        wait_until(done, 30, "handlers")
    finally:
        runner.stop()
        thread.join(30)


def test_one_trace_from_publisher_through_a_copy_to_the_handler() -> None:
    EXPORTER.clear()
    source_url = f"memory://otel-src-{uuid.uuid4().hex[:6]}"
    target_url = f"memory://otel-dst-{uuid.uuid4().hex[:6]}"
    with eventbus.connect(source_url) as source, eventbus.connect(target_url) as target:
        source.create_topic("orders")
        target.create_topic("orders")
        source.publish("orders", {"n": 1}, key="k")
        for item in source.replay("orders"):  # the backfill path: copy the event as it is
            target.publish("orders", item.event)
        seen: list[str] = []
        _run(target, lambda d: seen.append(d.event.id), "orders", lambda: len(seen) == 1)
    spans = EXPORTER.get_finished_spans()
    by_name = {s.name: s for s in spans}
    assert {"send orders", "process orders"} <= set(by_name)
    trace_ids = {s.context.trace_id for s in spans if s.name.endswith("orders")}
    assert len(trace_ids) == 1, "publish, copy and handling belong to one trace"
    process = by_name["process orders"]
    assert process.kind == trace.SpanKind.CONSUMER
    assert process.attributes is not None
    assert process.attributes["messaging.system"] == "memory"
    assert process.attributes["messaging.consumer.group.name"] == "g"
    assert process.attributes["messaging.message.id"] == seen[0]
    sends = [s for s in spans if s.name == "send orders"]
    assert all(s.kind == trace.SpanKind.PRODUCER for s in sends)
    assert process.parent is not None
    assert process.parent.span_id in {s.context.span_id for s in sends}


def test_metrics_count_exactly() -> None:
    url = f"memory://otel-m-{uuid.uuid4().hex[:6]}"
    topic = f"m-{uuid.uuid4().hex[:6]}"
    with eventbus.connect(url) as bus:
        bus.create_topic(topic)
        bus.publish_many(topic, ["ok1", "flaky", "poison", "ok2"])
        bus.publish(topic, "ok3")
        failed_once: set[str] = set()

        def handler(d: eventbus.Delivery) -> None:
            if d.event.data == "poison":
                raise RuntimeError("poison")
            if d.event.data == "flaky" and "flaky" not in failed_once:
                failed_once.add("flaky")
                raise RuntimeError("flaky")

        runner_done = lambda: _counter("eventbus.acked", topic) == 4  # noqa: E731
        _run(
            bus,
            handler,
            topic,
            lambda: runner_done() and _counter("eventbus.dead_lettered", topic) == 1,
            max_attempts=2,
        )
        bus.describe_group("g")
    assert _counter("eventbus.published", topic) == 5
    assert _counter("eventbus.consumed", topic) == 5
    assert _counter("eventbus.acked", topic) == 4
    assert _counter("eventbus.dead_lettered", topic) == 1
    # 4 good calls + 1 flaky failure + 2 poison attempts
    assert _counter("eventbus.handler.duration", topic) == 7
    assert _counter("eventbus.consumer.lag", topic) == 0


def test_backlog_gauge_follows_describe_group() -> None:
    url = f"memory://otel-b-{uuid.uuid4().hex[:6]}"
    topic = f"b-{uuid.uuid4().hex[:6]}"
    with eventbus.connect(url) as bus:
        bus.create_topic(topic, partitions=2)
        bus.publish_many(topic, [eventbus.Event(data=i, key=f"k{i}") for i in range(5)])
        bus.reset_group("gb", topic, "earliest")
        bus.describe_group("gb")
        assert _counter("eventbus.consumer.backlog", topic) == 5
        with bus.subscribe(topic, group="gb") as sub:
            got = sub.fetch(2, timeout=5)
            assert got
            bus.describe_group("gb")
            assert _counter("eventbus.consumer.backlog", topic) == 5  # delivered, not acked
            for delivery in got:
                delivery.ack()
            bus.describe_group("gb")
            assert _counter("eventbus.consumer.backlog", topic) == 5 - len(got)
