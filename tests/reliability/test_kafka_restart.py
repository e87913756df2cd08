"""The Kafka broker restarted under publish and consume load (own broker, same ports and data).

A thread publishes numbered events one by one (publish timeout 3 s) and another consumes them
in a group, acking each batch, while the test stops the broker (SIGTERM, then SIGKILL) until
publishes fail, and starts it again on the same ports and data dir.

Checked: every publish that returned is in the topic at its position and was consumed
(lost == 0); failed publishes raised OperationTimeoutError / ConnectionFailedError within their
timeout plus slack; after the load, a new member of the group gets nothing but a fresh marker
event (the group resumes from its committed offsets, which survived the restarts).
"""

from __future__ import annotations

import time

import pytest

import eventbus
from eventbus.errors import ConnectionFailedError, OperationTimeoutError
from eventbus.testing import servers
from tests.reliability.conftest import poll, scale
from tests.reliability.helpers import Consumer, Publisher, publish_figures
from tests.reliability.kafka_broker import start_again, stop_broker

TIMEOUT = 3.0
SLACK = 2.0


@pytest.mark.kafka
@pytest.mark.timeout(scale(240, 900))
def test_kafka_broker_restart_under_load(topic_name: str, figures: object) -> None:
    fig = figures("Kafka broker restart under publish and consume load", "kafka")  # type: ignore[operator]
    restarts = scale(2, 10)
    broker = servers.start_kafka()
    group = f"g-{topic_name}"
    try:
        with eventbus.connect(broker.url, publish_timeout=TIMEOUT) as bus:
            bus.create_topic(topic_name, partitions=3)
            consumer = Consumer(bus, topic_name, group)
            consumer.start()
            publisher = Publisher(bus, topic_name, timeout=TIMEOUT)
            publisher.start()
            mark = time.monotonic()
            try:
                for trial in range(restarts):
                    poll(lambda: publisher.ok_since(mark) >= 30, 60, "publishes to succeed")  # noqa: B023
                    down = time.monotonic()
                    stop_broker(broker, hard=bool(trial % 2))
                    poll(lambda: publisher.failed_since(down) >= 1, 30, "a publish to fail")  # noqa: B023
                    broker = start_again(broker)
                    mark = time.monotonic()
                    fig.trials += 1
                    fig.faults += 1
                poll(lambda: publisher.ok_since(mark) >= 30, 60, "publishes after the restart")
            finally:
                publisher.halt.set()
                publisher.join(TIMEOUT + SLACK + 5)
            returned = {a.n for a in publisher.attempts if a.error is None}
            poll(lambda: returned <= set(consumer.seen), 90, "the consumer to see every event")
            consumer.halt.set()
            consumer.join(30)
            stored = {
                (item.position.partition, str(item.position.offset)): item.event.data["n"]
                for item in bus.replay(topic_name)
            }
            # a new member resumes at the committed offsets: only the marker comes
            marker = bus.publish(topic_name, {"n": -1}, key="marker", timeout=30)
            with bus.subscribe(topic_name, group=group, session_timeout=3.0) as sub:
                got: list[int] = []
                poll(
                    lambda: got.extend(d.event.data["n"] for d in sub.fetch(50, 0.5)) or -1 in got,
                    60,
                    "the marker event",
                )
            fig.extra["after_restart_new_member_got"] = len(got)
            fig.extra["marker"] = str(marker)
    finally:
        broker.stop()

    attempts = publisher.attempts
    missing = publish_figures(fig, publisher, consumer, stored)
    fig.lost = len(missing)
    assert not missing, f"returned publishes missing after restart: {missing[:20]}"
    bad = [
        a.error
        for a in attempts
        if a.error is not None
        and not isinstance(a.error, ConnectionFailedError | OperationTimeoutError)
    ]
    assert not bad, f"unexpected publish errors: {bad[:5]}"
    slow = [(a.n, a.seconds) for a in attempts if a.seconds > TIMEOUT + SLACK]
    assert not slow, f"publishes over their deadline: {slow[:5]}"
    assert got == [-1], f"the group re-read events it had committed: {got[:20]}"
