"""The end-to-end migration scenario, shared by the memory and the real-server tests."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import quote

import eventbus
from eventbus.migration import Migration
from eventbus.testing.conformance import wait_until


def migrate_url(name: str, source: str, target: str) -> str:
    return (
        f"migrate://{name}?source={quote(source, safe='')}&target={quote(target, safe='')}"
        "&poll_interval=0.1"
    )


@dataclass
class Tally:
    published: list[str] = field(default_factory=list)
    handled: list[str] = field(default_factory=list)
    order_violations: list[str] = field(default_factory=list)
    last_seq: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


async def operate(name: str, topic: str, group: str, source_url: str, target_url: str) -> None:
    """The operator's runbook, step by step, while services keep running."""
    migration = await Migration.open(name, source_url, target_url)
    try:
        await migration.init([topic])
        await migration.advance(topic)  # dual-source-primary
        await migration.backfill(topic)
        report = await migration.verify(topic)
        assert report.ok, report.summary()
        await migration.advance(topic)  # dual-target-primary
        await migration.cutover(group, topic)
        await migration.advance(topic)  # target-only
    finally:
        await migration.close()


def run_scenario(
    source_url: str, target_url: str, *, partitions: int = 3, deadline: float = 90
) -> Tally:
    """Producers and a two-member group keep running on migrate:// while an operator moves
    the topic through every stage to target-only. Returns what was published and handled."""
    name = f"m{uuid.uuid4().hex[:6]}"
    topic = f"orders-{uuid.uuid4().hex[:6]}"
    group = "workers"
    url = migrate_url(name, source_url, target_url)
    tally = Tally()
    stop = threading.Event()

    with eventbus.connect(source_url) as admin:
        admin.create_topic(topic, partitions=partitions)
        # history written before the migration starts
        admin.publish_many(
            topic, [eventbus.Event(data={"seq": i}, key="history") for i in range(30)]
        )
    tally.published += []  # history ids are collected below from the source

    def produce(n: int) -> None:
        with eventbus.connect(url) as bus:
            seq = 0
            while not stop.is_set():
                ev = eventbus.Event(data={"seq": seq}, key=f"p{n}-k{seq % 4}")
                bus.publish(topic, ev)
                with tally.lock:
                    tally.published.append(ev.id)
                seq += 1
                time.sleep(0.005)  # allowed: a producer's pace, not a wait for a condition

    def handle(d: eventbus.Delivery) -> None:
        key, seq = d.event.key or "", d.event.data["seq"]
        with tally.lock:
            tally.handled.append(d.event.id)
            if key != "history" and tally.last_seq.get(key, -1) >= seq:
                tally.order_violations.append(f"{key}:{seq}")
            tally.last_seq[key] = max(seq, tally.last_seq.get(key, -1))

    consumers = [eventbus.connect(url) for _ in range(2)]
    runners = [
        bus.runner(handle, topic, group=group, consumer=f"w{i}", session_timeout=6.0)
        for i, bus in enumerate(consumers)
    ]
    threads = [threading.Thread(target=r.run) for r in runners]
    threads += [threading.Thread(target=produce, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()

    try:
        asyncio.run(asyncio.wait_for(operate(name, topic, group, source_url, target_url), deadline))
    finally:
        stop.set()
        for t in threads[2:]:
            t.join(deadline)
    with eventbus.connect(source_url) as admin:
        history = [r.event.id for r in admin.replay(topic) if r.event.key == "history"]
    expected = set(history) | set(tally.published)
    try:
        wait_until(lambda: set(tally.handled) >= expected, deadline, "every event handled")
    finally:
        for r in runners:
            r.stop()
        for t in threads[:2]:
            t.join(deadline)
        for bus in consumers:
            bus.close()
    tally.published = history + tally.published
    return tally


def check(tally: Tally) -> None:
    counts = Counter(tally.handled)
    twice = [i for i, n in counts.items() if n > 1]
    lost = set(tally.published) - set(counts)
    assert not lost, f"{len(lost)} events lost"
    assert not twice, f"{len(twice)} events handled twice"
    assert not tally.order_violations, tally.order_violations[:10]
