"""Network faults between the client and Redis, through a TCP proxy the test controls.

A publisher thread (publish timeout 2 s) and a consumer thread (fetch 0.5 s, ack per event)
talk to Redis through :mod:`tests.reliability.proxy` (socket timeouts 1 s) while the test, in
each trial, cuts every connection, black-holes the path, delays it a little (0.2 s, under the
socket timeout) and a lot (1.5 s, over it), and refuses new connections; then heals it.

Checked: no publish takes longer than its timeout plus 1.5 s and no fetch or ack longer than
4 s (deadlines hold while the network is broken); failures are ConnectionFailedError or
OperationTimeoutError only; both threads work again after each fault without help; every
publish that returned is stored and consumed (lost == 0).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest

import eventbus
from eventbus.errors import ConnectionFailedError, OperationTimeoutError
from tests.reliability.conftest import poll, scale
from tests.reliability.helpers import Consumer, Publisher
from tests.reliability.proxy import Proxy

TIMEOUT = 2.0
SLACK = 1.5
CALL_LIMIT = 4.0


@pytest.mark.redis
@pytest.mark.timeout(scale(180, 600))
def test_redis_through_faulty_network(redis_url: str, topic_name: str, figures: object) -> None:
    fig = figures("network cut / black hole / delay / refuse (TCP proxy)", "redis")  # type: ignore[operator]
    trials = scale(2, 12)
    target = urlsplit(redis_url)
    with Proxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}{target.path or '/0'}"
        url += "?socket_timeout=1&socket_connect_timeout=1&poll_interval=0.2"
        with eventbus.connect(url, publish_timeout=TIMEOUT) as bus:
            bus.create_topic(topic_name, partitions=3)
            consumer = Consumer(bus, topic_name, f"g-{topic_name}", session_timeout=10.0)
            publisher = Publisher(bus, topic_name, timeout=TIMEOUT)
            consumer.start()
            publisher.start()

            def healthy() -> None:
                mark = time.monotonic()
                seen = len(consumer.seen)
                poll(
                    lambda: publisher.ok_since(mark) >= 20 and len(consumer.seen) >= seen + 20,
                    30,
                    "publish and consume to work again",
                )

            def fault(name: str, start: Callable[[], object], hold: float, fails: bool) -> None:
                healthy()
                began = time.monotonic()
                start()
                fig.faults += 1
                if fails:
                    poll(lambda: publisher.failed_since(began) >= 1, 30, f"{name}: a failure")
                else:
                    time.sleep(hold)  # allowed: the fault's length is what is injected
                proxy.normal()
                fig.extra.setdefault("faults", Counter())[name] += 1

            try:
                for _ in range(trials):
                    fault("cut", proxy.cut, 0.0, False)
                    fault("black hole", proxy.blackhole, 0.0, True)
                    fault("delay 0.2 s", lambda: proxy.delay(0.2), 2.0, False)
                    fault("delay 1.5 s", lambda: proxy.delay(1.5), 0.0, True)
                    fault("refuse + cut", lambda: (proxy.refuse(), proxy.cut()), 0.0, True)
                    fig.trials += 1
                healthy()
            finally:
                publisher.halt.set()
                publisher.join(TIMEOUT + SLACK + 5)
            ok = [a for a in publisher.attempts if a.error is None]
            returned = {a.n for a in ok}
            poll(lambda: returned <= set(consumer.seen), 60, "the consumer to see every event")
            consumer.halt.set()
            consumer.join(30)
            stored = {
                (i.position.partition, str(i.position.offset)): i.event.data["n"]
                for i in bus.replay(topic_name)
            }

    fig.published = len(ok)
    fig.extra["publish_calls"] = len(publisher.attempts)
    fig.extra["proxy_connections"] = proxy.connections
    fig.extra["faults"] = dict(fig.extra.get("faults", {}))
    for a in publisher.attempts:
        if a.error is not None:
            fig.error(a.error)
    for name, count in consumer.errors.items():
        fig.errors[f"consumer {name}"] = count
    missing = [
        a.n
        for a in ok
        if a.position is None or stored.get((a.position.partition, str(a.position.offset))) != a.n
    ]
    not_consumed = returned - set(consumer.seen)
    fig.lost = len(missing) + len(not_consumed)
    counts = Counter(consumer.seen)
    fig.duplicates = sum(c - 1 for c in counts.values())
    slowest_publish = max(a.seconds for a in publisher.attempts)
    fig.extra["slowest_publish_s"] = round(slowest_publish, 3)
    fig.extra["slowest_fetch_or_ack_s"] = round(consumer.slowest, 3)
    assert not missing, f"returned publishes not stored: {missing[:20]}"
    assert not not_consumed, f"stored events never consumed: {sorted(not_consumed)[:20]}"
    bad = [
        a.error
        for a in publisher.attempts
        if a.error is not None
        and not isinstance(a.error, ConnectionFailedError | OperationTimeoutError)
    ]
    assert not bad, f"unexpected publish errors: {bad[:5]}"
    assert set(consumer.errors) <= {"ConnectionFailedError", "OperationTimeoutError"}, dict(
        consumer.errors
    )
    assert slowest_publish <= TIMEOUT + SLACK, f"a publish took {slowest_publish:.2f}s"
    assert consumer.slowest <= CALL_LIMIT, f"a fetch or ack took {consumer.slowest:.2f}s"
