"""The memory row: the core's own cost per event, with no server in the way.

``publish_many`` on ``memory://`` against encoding alone (``bus.encode`` of the same keyed
events, what every transport pays before any I/O). Also the smoke test's case.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import eventbus
from benchmarks.harness import Clock, Env, Row, Side, chunks, keys, payload


@contextlib.contextmanager
def publish_many(env: Env, size: int, count: int | None = None) -> Iterator[Row]:
    data, ks = payload(size), keys()
    bus = eventbus.connect("memory://")
    topic = env.name("mem")
    bus.create_topic(topic, partitions=1)

    def eb(n: int) -> float:
        with Clock() as clock:
            for lo, hi in chunks(n):
                bus.publish_many(
                    topic, [eventbus.Event(data=data, key=ks[i % len(ks)]) for i in range(lo, hi)]
                )
        return clock.seconds

    def encode_only(n: int) -> float:
        with Clock() as clock:
            for lo, hi in chunks(n):
                for i in range(lo, hi):
                    bus.encode(data, key=ks[i % len(ks)])
        return clock.seconds

    try:
        yield Row(
            key=f"memory.publish_many.{size}",
            title="publish_many on memory:// (core cost)",
            transport="memory",
            payload=size,
            count=count if count is not None else env.count(20_000, 50_000),
            sides=[
                Side("eventbus sync publish_many", "eventbus", eb),
                Side("bus.encode only (no transport)", "reference", encode_only),
            ],
            note="the ratio is the share of time outside encoding",
        )
    finally:
        bus.close()
