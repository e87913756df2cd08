"""One set of subscribe settings for subscribe, the runner and batches, validated once
(issue #22): the same bad value fails the same way everywhere, and the runner takes a time
as its start like the others."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

import eventbus
from eventbus.errors import ConfigurationError
from eventbus.subscription import SubscribeOptions
from eventbus.transport import Position

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("visibility_timeout", 0, "visibility_timeout must be"),
        ("session_timeout", -1.0, "session_timeout must be"),
        ("max_lease", 0, "max_lease must be"),
        ("batch_size", 0, "batch_size must be at least 1"),
        ("start", Position(0, 3), "reset_group"),
        ("start", "yesterday", "is not a start"),
    ],
)
def test_bad_settings_fail_alike_in_subscribe_runner_and_batches(
    setting: str, value: Any, message: str
) -> None:
    with pytest.raises(eventbus.errors.EventBusError, match=message):
        SubscribeOptions(**{setting: value})
    with eventbus.connect(f"memory://{uuid.uuid4().hex}") as bus:
        bus.create_topic("t")
        with pytest.raises(eventbus.errors.EventBusError, match=message):
            bus.subscribe("t", group="g", **{setting: value})
        if setting != "batch_size" or value >= 1:  # batches have no batch_size setting
            with pytest.raises(eventbus.errors.EventBusError, match=message):
                bus.subscribe_batches("t", group="g", budget=1, weight="w", **{setting: value})
        with pytest.raises(eventbus.errors.EventBusError, match=message):
            bus.runner(lambda d: None, "t", group="g", **{setting: value})  # at once, not at run


def test_runner_starts_a_new_group_at_a_time() -> None:
    with eventbus.connect(f"memory://{uuid.uuid4().hex}") as bus:
        bus.create_topic("t")
        bus.publish_many("t", [{"n": n} for n in range(3)])
        last_ms = max(r.timestamp_ms for r in bus.replay("t"))
        since = datetime.now(UTC)
        deadline = time.monotonic() + 5
        while since.timestamp() * 1000 < last_ms + 1:  # a millisecond after the first three
            assert time.monotonic() < deadline
            since = datetime.now(UTC)
        bus.publish_many("t", [{"n": n} for n in range(3, 6)])
        seen: list[int] = []
        done = threading.Event()

        def handle(delivery: eventbus.Delivery) -> None:
            seen.append(delivery.event.data["n"])
            if len(seen) == 3:
                done.set()

        runner = bus.runner(handle, "t", group="g", start=since)
        worker = threading.Thread(target=runner.run, daemon=True)
        worker.start()
        assert done.wait(10)
        runner.stop()
        worker.join(10)
        assert sorted(seen) == [3, 4, 5]


def test_settings_are_a_value() -> None:
    settings = SubscribeOptions(start="latest", batch_size=5)
    assert settings.consumer_options().start == "latest"
    assert settings == SubscribeOptions(start="latest", batch_size=5)
    with pytest.raises(ConfigurationError):
        SubscribeOptions(batch_size=0)


def test_pick_takes_the_options_among_keyword_arguments() -> None:
    picked = SubscribeOptions.pick({"start": "latest", "batch_size": 5, "concurrency": 8})
    assert picked == SubscribeOptions(start="latest", batch_size=5)
    with pytest.raises(ConfigurationError, match="batch_size"):
        SubscribeOptions.pick({"batch_size": 0})
