"""Redis with AOF (appendfsync always) stopped and restarted under publish load.

A thread publishes numbered events one by one (publish timeout 2 s, socket timeouts 1 s) while
the test stops the server (SIGTERM and SIGKILL in turn), leaves it down until publishes have
failed, and restarts it on the same port and data dir.

Checked: every publish that returned a position is there afterwards, at that position
(lost == 0); every publish during an outage either raised ConnectionFailedError /
OperationTimeoutError or succeeded, and none took longer than its timeout plus 1.5 s; publishing
works again after every restart without reconnecting by hand.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

import eventbus
from eventbus.errors import ConnectionFailedError, EventBusError, OperationTimeoutError
from eventbus.testing import servers
from tests.reliability.conftest import poll, scale
from tests.reliability.helpers import Publisher, publish_figures

TIMEOUT = 2.0
SLACK = 1.5


@pytest.mark.timeout(scale(180, 600))
def test_redis_aof_restart_under_publish_load(
    tmp_path: Path, topic_name: str, figures: object
) -> None:
    fig = figures("Redis restart, AOF appendfsync always, under publish load", "redis")  # type: ignore[operator]
    restarts = scale(4, 20)
    data = tmp_path / "redis-data"
    server = servers.start_redis(appendonly=True, appendfsync="always", data_dir=data)
    port = server.port
    url = f"{server.url}?socket_timeout=1&socket_connect_timeout=1"
    try:
        with eventbus.connect(url, publish_timeout=TIMEOUT) as bus:
            bus.create_topic(topic_name, partitions=2)
            publisher = Publisher(bus, topic_name)
            publisher.start()
            mark = time.monotonic()
            try:
                for trial in range(restarts):
                    poll(lambda: publisher.ok_since(mark) >= 50, 30, "publishes to succeed")  # noqa: B023
                    down = time.monotonic()
                    popen = server._popen
                    assert popen is not None
                    if trial % 2:
                        popen.send_signal(signal.SIGKILL)
                        popen.wait(10)
                    server.stop()  # SIGTERM (or reaps the killed one); keeps the data dir
                    poll(lambda: publisher.failed_since(down) >= 2, 30, "publishes to fail")  # noqa: B023
                    server = servers.start_redis(
                        appendonly=True, appendfsync="always", port=port, data_dir=data
                    )
                    mark = time.monotonic()
                    fig.trials += 1
                    fig.faults += 1
                poll(lambda: publisher.ok_since(mark) >= 50, 30, "publishes after the last restart")
            finally:
                publisher.halt.set()
                publisher.join(TIMEOUT + SLACK + 5)
            stored = {
                (item.position.partition, str(item.position.offset)): item.event.data["n"]
                for item in bus.replay(topic_name)
            }
    finally:
        server.stop()

    attempts = publisher.attempts
    returned = [a for a in attempts if a.error is None]
    missing = publish_figures(fig, publisher, None, stored)
    fig.lost = len(missing)
    fig.extra["stored_after_failed_publish"] = len(set(stored.values())) - len(returned)
    assert not missing, f"returned publishes missing after restart: {missing[:20]}"
    unexpected = [
        a.error
        for a in attempts
        if a.error is not None
        and not isinstance(a.error, ConnectionFailedError | OperationTimeoutError)
    ]
    assert not unexpected, f"unexpected errors: {unexpected[:5]}"
    slow = [a for a in attempts if a.seconds > TIMEOUT + SLACK]
    assert not slow, f"publishes over their deadline: {[(a.n, a.seconds) for a in slow[:5]]}"
    assert all(isinstance(a.error, EventBusError) for a in attempts if a.error is not None)
