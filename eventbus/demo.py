"""The demo of the main job: a small agent workflow migrated live from one transport to another.

A planner publishes tasks with keys (one key per agent) and two workers in a group handle them,
all through ``migrate://``. Meanwhile the operator's runbook moves the task topic
through every stage (dual-write, backfill, verify, Kafka primary, cutover, Kafka only), and the
demo ends with a tally: published, handled, lost, handled twice, per-key order violations.
By default both sides are embedded in-memory brokers named "redis" and "kafka".
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import eventbus
from eventbus.migration import Migration

__all__ = ["Tally", "run_demo"]


@dataclass
class Tally:
    """What happened during the demo."""

    published: int = 0
    handled: int = 0
    lost: int = 0
    handled_twice: int = 0
    order_violations: int = 0
    stages: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "published": self.published,
            "handled": self.handled,
            "lost": self.lost,
            "handled_twice": self.handled_twice,
            "order_violations": self.order_violations,
            "stages": self.stages,
        }


@dataclass
class _Book:
    lock: threading.Lock = field(default_factory=threading.Lock)
    published: list[str] = field(default_factory=list)
    handled: Counter[str] = field(default_factory=Counter)
    last_step: dict[str, int] = field(default_factory=dict)
    violations: int = 0

    def handle(self, delivery: eventbus.Delivery) -> None:
        """The workers' handler: count the task, and whether its agent's steps went back."""
        agent, step = delivery.event.data["agent"], delivery.event.data["step"]
        with self.lock:
            self.handled[delivery.event.id] += 1
            if self.last_step.get(agent, -1) >= step:
                self.violations += 1
            self.last_step[agent] = step

    def wait_handled(self, deadline: float) -> set[str]:
        """The ids published, once each was handled (or ``deadline`` seconds passed)."""
        with self.lock:
            expected = set(self.published)
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            with self.lock:
                if expected <= set(self.handled):
                    break
            time.sleep(0.05)  # waiting for the workers to finish the last tasks
        return expected

    def count(self, expected: set[str], tally: Tally) -> None:
        """Fill ``tally`` from what was published and handled."""
        with self.lock:
            tally.published = len(self.published)
            tally.handled = sum(1 for i in expected if self.handled[i])
            tally.lost = len(expected - set(self.handled))
            tally.handled_twice = sum(1 for n in self.handled.values() if n > 1)
            tally.order_violations = self.violations


def _url(name: str, source: str, target: str) -> str:
    return (
        f"migrate://{name}?source={quote(source, safe='')}&target={quote(target, safe='')}"
        "&poll_interval=0.1"
    )


def _plan(url: str, tasks: str, book: _Book, stop: threading.Event, rate: float) -> None:
    """The planner: a task per step, keyed by one of six agents, until ``stop``."""
    with eventbus.connect(url) as bus:
        step = 0
        while not stop.is_set():
            agent = f"agent-{step % 6}"
            event = eventbus.Event(data={"agent": agent, "step": step}, key=agent)
            bus.publish(tasks, event)
            with book.lock:
                book.published.append(event.id)
            step += 1
            time.sleep(1.0 / rate)  # the planner's pace


def run_demo(
    source: str | None = None,
    target: str | None = None,
    *,
    rate: float = 200.0,
    say: Callable[[str], None] = print,
    deadline: float = 120.0,
) -> Tally:
    """Run the demo (see the module docstring) and return its tally."""
    run_id = uuid.uuid4().hex[:6]
    source = source or f"memory://redis-{run_id}"
    target = target or f"memory://kafka-{run_id}"
    # names of this run only: on shared servers an earlier run's group reads other topics
    name, tasks, group = f"demo-{run_id}", f"tasks-{run_id}", f"workers-{run_id}"
    url = _url(name, source, target)
    book = _Book()
    stop = threading.Event()
    with eventbus.connect(source) as admin:
        admin.create_topic(tasks, partitions=3)
    say(f"agent workflow on {tasks}: a planner and two workers (group {group!r})")
    buses = [eventbus.connect(url) for _ in range(2)]
    runners = [
        b.runner(book.handle, tasks, group=group, consumer=f"worker-{i}")
        for i, b in enumerate(buses)
    ]
    threads = [threading.Thread(target=r.run, daemon=True) for r in runners]
    planner = threading.Thread(target=_plan, args=(url, tasks, book, stop, rate), daemon=True)
    threads.append(planner)
    for thread in threads:
        thread.start()
    tally = Tally()
    try:
        asyncio.run(
            asyncio.wait_for(_operate(name, source, target, tasks, group, tally, say), deadline)
        )
    finally:
        stop.set()
        planner.join(deadline)
    expected = book.wait_handled(deadline)
    for runner in runners:
        runner.stop()
    for thread in threads[:-1]:
        thread.join(deadline)
    for bus in buses:
        bus.close()
    book.count(expected, tally)
    say(
        f"tally: published {tally.published}, handled {tally.handled}, lost {tally.lost}, "
        f"handled twice {tally.handled_twice}, per-key order violations "
        f"{tally.order_violations}"
    )
    return tally


async def _lags(m: Migration, group: str) -> str:
    lags = []
    for side, transport in (("redis", m.source), ("kafka", m.target)):
        try:
            lags.append(f"{side} lag {(await transport.describe_group(group)).lag}")
        except eventbus.EventBusError:
            lags.append(f"{side} lag -")
    return ", ".join(lags)


async def _operate(
    name: str,
    source: str,
    target: str,
    topic: str,
    group: str,
    tally: Tally,
    say: Callable[[str], None],
) -> None:
    m = await Migration.open(name, source, target)

    async def stage(text: str) -> None:
        state = await m.control.require()
        current = state.topics[topic].stage
        tally.stages.append(current)
        say(f"[{current}] {text} ({await _lags(m, group)})")

    try:
        await asyncio.sleep(0.5)  # let the workflow run on the source first
        await m.init([topic])
        await stage("migration initialised; services publish and consume through migrate://")
        await m.advance(topic)
        await stage("dual-write: every task goes to redis, then a copy to kafka")
        copied = await m.backfill(topic)
        await stage(f"backfill copied {copied} earlier tasks into kafka, in order")
        report = await m.verify(topic)
        say(f"verify: {report.summary()}")
        if not report.ok:
            raise eventbus.errors.ConfigurationError("verification failed: " + report.summary())
        await m.advance(topic)
        await stage("kafka is primary now; redis still receives copies")
        moved = await m.cutover(group, topic)
        skipped = moved.skipped
        await stage(f"group {group!r} cut over to kafka ({skipped} handled tasks skipped)")
        await m.advance(topic)
        await stage("kafka only")
        await asyncio.sleep(0.5)  # let the workflow run on the target for a moment
    finally:
        await m.close()
