"""Conformance scenarios for budgeted batches (:mod:`eventbus.batching`), on every transport.

Subclass :class:`BatchingSuite` with a ``url`` fixture, like
:class:`~eventbus.testing.conformance.ConformanceSuite`. The scenarios run N workers (threads,
each with its own bus connection) over a stream of weighted, keyed items and check:

- every batch's weight is within the budget, except a batch of one item heavier than it;
- no item is in two live workers' un-acked batches at once;
- nothing is lost when a worker dies (``kill()``) holding a batch: its items come back to the
  others after the session (or visibility) timeout;
- per-key order: an item is never handed out before every earlier item of its key was handed
  out (redeliveries may repeat items, never skip ahead), and items are acked in key order;
- visibility timeout, nack, max_wait, max_items, callable weights, bad weights (dead letter),
  and the async API.

Class attributes tune timing (``session_timeout``, ``visibility_timeout``, ``deadline``) and
``fast_path`` (passed to ``subscribe_batches``: None lets the transport decide).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import eventbus
from eventbus.batching import subscribe_batches
from eventbus.sync import BatchSubscription, EventBus, SyncBatch, subscribe_batches_sync
from eventbus.testing.conformance import unique, wait_until

__all__ = ["BatchingSuite", "Ledger"]

WEIGHT = "tokens"


def weighted(seq: int, key: str, weight: float) -> eventbus.Event:
    """An item: data is ``{"seq", "key", "w"}``, the weight also in the ``tokens`` header."""
    return eventbus.Event(
        data={"seq": seq, "key": key, "w": weight}, key=key, headers={WEIGHT: f"{weight:g}"}
    )


def workload(count: int, keys: int, budget: float, oversize: int, seed: int) -> list[Any]:
    """``count`` items over ``keys`` keys with weights up to budget/3, plus ``oversize``
    items heavier than the budget; per-key sequence numbers start at 0."""
    rng = random.Random(seed)
    per_key: dict[str, int] = {}
    heavy = set(rng.sample(range(count), oversize))
    out = []
    for i in range(count):
        key = f"k{rng.randrange(keys)}"
        seq = per_key.get(key, 0)
        per_key[key] = seq + 1
        weight = budget * 1.5 if i in heavy else float(rng.randint(1, int(budget // 3)))
        out.append(weighted(seq, key, weight))
    return out


@dataclass
class Ledger:
    """What every worker received and acked, checked as it happens (thread-safe)."""

    budget: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    holder: dict[tuple[str, int], str] = field(default_factory=dict)
    handed: dict[str, int] = field(default_factory=dict)
    """Per key: the highest seq handed out so far (to anyone)."""
    acked: dict[str, list[int]] = field(default_factory=dict)
    dead: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    batches: int = 0
    weights: list[float] = field(default_factory=list)
    by_worker: dict[str, int] = field(default_factory=dict)
    """Batches received per worker."""

    def received(self, worker: str, batch: SyncBatch) -> None:
        items = [(d.event.data["key"], d.event.data["seq"]) for d in batch.deliveries]
        with self.lock:
            self.batches += 1
            self.by_worker[worker] = self.by_worker.get(worker, 0) + 1
            self.weights.append(batch.weight)
            if batch.weight > self.budget and len(batch) != 1:
                self.problems.append(f"{worker}: batch of {len(batch)} weighs {batch.weight}")
            if sum(d.event.data["w"] for d in batch.deliveries) != batch.weight:
                self.problems.append(f"{worker}: batch weight does not match its items")
            for key, seq in items:
                other = self.holder.get((key, seq))
                if other is not None and other != worker and other not in self.dead:
                    self.problems.append(f"{key}#{seq} in {worker}'s and {other}'s batches")
                self.holder[(key, seq)] = worker
                if seq > self.handed.get(key, -1) + 1:
                    self.problems.append(
                        f"{worker} got {key}#{seq} before {key}#{self.handed.get(key, -1) + 1}"
                    )
                self.handed[key] = max(self.handed.get(key, -1), seq)

    def done(self, worker: str, batch: SyncBatch) -> None:
        with self.lock:
            for d in batch.deliveries:
                key, seq = d.event.data["key"], d.event.data["seq"]
                self.acked.setdefault(key, []).append(seq)
                if self.holder.get((key, seq)) == worker:
                    del self.holder[(key, seq)]

    def count_acked(self) -> int:
        with self.lock:
            return sum(len(v) for v in self.acked.values())

    def check(self, items: list[Any]) -> None:
        assert not self.problems, "\n".join(self.problems[:20])
        expected: dict[str, list[int]] = {}
        for item in items:
            expected.setdefault(item.data["key"], []).append(item.data["seq"])
        assert self.acked == expected, "every item acked once, in key order"


class Worker:
    """A thread with its own bus, taking batches until stopped; acks each batch it gets."""

    def __init__(
        self,
        url: str,
        name: str,
        ledger: Ledger,
        settings: dict[str, Any],
        topic: str,
        *,
        hold_first: bool = False,
    ) -> None:
        self.url, self.name, self.ledger = url, name, ledger
        self.settings, self.topic, self.hold_first = settings, topic, hold_first
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.holding = threading.Event()
        self.error: BaseException | None = None
        self.sub: BatchSubscription | None = None
        self.thread = threading.Thread(target=self._main, name=f"worker-{name}", daemon=True)

    def start(self) -> Worker:
        self.thread.start()
        return self

    def _main(self) -> None:
        try:
            with eventbus.connect(self.url) as bus:
                self.sub = subscribe_batches_sync(
                    bus, self.topic, consumer=self.name, **self.settings
                )
                self.ready.set()
                self._loop(self.sub)
                if not self.holding.is_set():
                    self.sub.close()
        except BaseException as exc:  # reported by join()
            self.error = exc
            self.ready.set()

    def _loop(self, sub: BatchSubscription) -> None:
        while not self.stop.is_set():
            batch = sub.fetch(max_wait=0.2)
            if batch is None:
                continue
            self.ledger.received(self.name, batch)
            if self.hold_first:
                self.holding.set()  # keep it un-acked until killed
                self.stop.wait()
                return
            batch.ack()
            self.ledger.done(self.name, batch)

    def kill(self) -> None:
        """Crash: the subscription is killed while it holds an un-acked batch."""
        with self.ledger.lock:
            self.ledger.dead.add(self.name)
        assert self.sub is not None
        self.sub.kill()
        self.stop.set()

    def join(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), f"worker {self.name} did not stop"
        if self.error is not None:
            raise self.error


class BatchingSuite:
    """The batching scenarios. Subclasses provide the ``url`` fixture."""

    session_timeout: float = 6.0
    visibility_timeout: float = 2.0
    deadline: float = 20.0
    fast_path: bool | None = None

    @pytest.fixture
    def bus(self, url: str) -> Iterator[EventBus]:
        with eventbus.connect(url) as bus:
            yield bus

    @pytest.fixture
    def make_topic(self, bus: EventBus) -> Callable[..., str]:
        def make(partitions: int = 3) -> str:
            name = unique("batch")
            bus.create_topic(name, partitions=partitions)
            return name

        return make

    def settings(self, group: str, budget: float, **kw: Any) -> dict[str, Any]:
        out: dict[str, Any] = {
            "group": group,
            "budget": budget,
            "weight": WEIGHT,
            "max_wait": 0.3,
            "session_timeout": self.session_timeout,
            "visibility_timeout": self.visibility_timeout,
            "fast_path": self.fast_path,
        }
        out.update(kw)
        return out

    def subscribe(self, bus: EventBus, topic: str, group: str, budget: float, **kw: Any) -> Any:
        return subscribe_batches_sync(bus, topic, **self.settings(group, budget, **kw))

    def settle(self, bus: EventBus, group: str, members: int, partitions: int) -> None:
        """Wait until the group has ``members`` members sharing every partition."""

        def settled() -> bool:
            try:
                info = bus.describe_group(group)
            except eventbus.errors.GroupNotFoundError:
                return False
            owned = [a for m in info.members for a in m.assignments]
            return (
                len(info.members) == members
                and all(m.assignments for m in info.members)
                and len(owned) == len(set(owned)) == partitions
            )

        wait_until(settled, self.deadline, f"{members} members sharing {partitions} partitions")

    # scenarios ----------------------------------------------------------------------------
    def test_one_worker_batches_fit_the_budget_and_oversize_items_go_alone(
        self, bus: EventBus, make_topic: Callable[..., str]
    ) -> None:
        topic = make_topic(partitions=3)
        budget = 100.0
        items = workload(150, keys=9, budget=budget, oversize=4, seed=1)
        bus.publish_many(topic, items)
        ledger = Ledger(budget)
        with self.subscribe(bus, topic, unique("g"), budget) as sub:
            if self.fast_path:
                assert sub.aio.fast_path
            deadline = time.monotonic() + self.deadline
            while ledger.count_acked() < len(items) and time.monotonic() < deadline:
                batch = sub.fetch()
                if batch is not None:
                    ledger.received("w", batch)
                    batch.ack()
                    ledger.done("w", batch)
        ledger.check(items)
        oversize = [w for w in ledger.weights if w > budget]
        assert len(oversize) == 4, "each oversize item came alone"
        full = [w for w in ledger.weights if w <= budget]
        assert sum(full) / (len(full) * budget) > 0.7, f"batches poorly filled: {full}"

    def test_workers_share_the_stream_without_overlap_and_keep_key_order(
        self, bus: EventBus, url: str, make_topic: Callable[..., str]
    ) -> None:
        topic = make_topic(partitions=8)
        group = unique("g")
        budget = 60.0
        ledger = Ledger(budget)
        settings = self.settings(group, budget)
        workers = [Worker(url, f"w{i}", ledger, settings, topic).start() for i in range(4)]
        try:
            for w in workers:
                assert w.ready.wait(self.deadline), f"{w.name} did not join"
            self.settle(bus, group, 4, 8)
            items = workload(400, keys=16, budget=budget, oversize=3, seed=2)
            bus.publish_many(topic, items)
            wait_until(lambda: ledger.count_acked() >= len(items), self.deadline, "all acked")
        finally:
            for w in workers:
                w.join()
        ledger.check(items)
        # the work was shared (all four usually; a late cooperative rebalance on Kafka can
        # leave one member without partitions while the others drain the stream)
        assert len(ledger.by_worker) >= 2, f"batches per worker: {ledger.by_worker}"

    def test_worker_killed_mid_batch_loses_nothing(
        self, bus: EventBus, url: str, make_topic: Callable[..., str]
    ) -> None:
        topic = make_topic(partitions=3)
        group = unique("g")
        budget = 50.0
        ledger = Ledger(budget)
        settings = self.settings(group, budget)
        # "w9" sorts last: when it dies its partition moves and no other one does
        live = [Worker(url, f"w{i}", ledger, settings, topic).start() for i in range(2)]
        doomed = Worker(url, "w9", ledger, settings, topic, hold_first=True).start()
        try:
            for w in [*live, doomed]:
                assert w.ready.wait(self.deadline), f"{w.name} did not join"
            self.settle(bus, group, 3, 3)
            items = workload(150, keys=12, budget=budget, oversize=0, seed=3)
            bus.publish_many(topic, items)
            assert doomed.holding.wait(self.deadline), "the doomed worker got no batch"
            doomed.kill()
            wait_until(
                lambda: ledger.count_acked() >= len(items),
                self.deadline + self.session_timeout + self.visibility_timeout,
                "every item acked by the survivors",
            )
        finally:
            for w in live:
                w.join()
            doomed.join()
        ledger.check(items)

    def test_slow_batch_is_not_redelivered_while_its_member_lives(
        self, bus: EventBus, make_topic: Callable[..., str]
    ) -> None:
        topic = make_topic(partitions=1)
        bus.publish_many(topic, [weighted(i, f"k{i % 2}", 10.0) for i in range(4)])
        with self.subscribe(bus, topic, unique("g"), 100.0, visibility_timeout=1.0) as sub:
            first = sub.fetch()
            assert first is not None and len(first) == 4
            # the batch is worked on for three visibility timeouts: nothing comes back
            end = time.monotonic() + 3.0
            while time.monotonic() < end:
                assert sub.fetch(max_wait=0.2) is None, "a held item was delivered again"
            first.ack()
            assert sub.fetch(max_wait=0.5) is None

    def test_unacked_batch_comes_back_after_max_lease_in_key_order(
        self, bus: EventBus, make_topic: Callable[..., str]
    ) -> None:
        topic = make_topic(partitions=1)
        items = [weighted(i // 2, f"k{i % 2}", 10.0) for i in range(6)]  # k0#0 k1#0 k0#1 ...
        bus.publish_many(topic, items)
        with self.subscribe(bus, topic, unique("g"), 100.0, max_lease=1.0) as sub:
            first = sub.fetch()
            assert first is not None and len(first) == 6
            again: list[Any] = []
            deadline = time.monotonic() + self.deadline
            while len(again) < 6 and time.monotonic() < deadline:
                batch = sub.fetch(max_wait=0.2)
                if batch is not None:
                    again.extend(batch.deliveries)
                    batch.ack()
            assert [d.event.id for d in again] == [d.event.id for d in first.deliveries]
            assert all(d.attempt >= 2 for d in again)
            assert sub.fetch(max_wait=0.5) is None, "acked items do not come back"

    def test_nacked_batch_comes_back(self, bus: EventBus, make_topic: Callable[..., str]) -> None:
        topic = make_topic(partitions=1)
        bus.publish_many(topic, [weighted(i, "k", 5.0) for i in range(4)])
        with self.subscribe(bus, topic, unique("g"), 100.0) as sub:
            first = sub.fetch()
            assert first is not None and len(first) == 4
            first.nack()
            again: list[Any] = []
            deadline = time.monotonic() + self.deadline
            while len(again) < 4 and time.monotonic() < deadline:
                batch = sub.fetch(max_wait=0.2)
                if batch is not None:
                    again.extend(batch.deliveries)
                    batch.ack()
        assert sorted(d.event.data["seq"] for d in again) == [0, 1, 2, 3]
        assert all(d.attempt == 2 for d in again)

    def test_max_wait_returns_a_partial_batch_and_nothing_when_empty(
        self, bus: EventBus, make_topic: Callable[..., str]
    ) -> None:
        topic = make_topic(partitions=1)
        with self.subscribe(bus, topic, unique("g"), 1000.0, max_wait=0.5) as sub:
            started = time.monotonic()
            assert sub.fetch() is None
            assert time.monotonic() - started >= 0.45, "an empty wait lasts max_wait"
            bus.publish_many(topic, [weighted(0, "a", 1.0), weighted(0, "b", 2.0)])
            got: list[Any] = []
            deadline = time.monotonic() + self.deadline
            while len(got) < 2 and time.monotonic() < deadline:
                batch = sub.fetch()
                if batch is not None:
                    assert batch.weight < batch.budget  # partial: returned after max_wait
                    got.extend(batch.deliveries)
                    batch.ack()
        assert sorted(d.event.data["key"] for d in got) == ["a", "b"]

    def test_callable_weight_and_max_items(
        self, bus: EventBus, make_topic: Callable[..., str]
    ) -> None:
        topic = make_topic(partitions=2)
        bus.publish_many(topic, [eventbus.Event(data={"n": i}, key=f"k{i}") for i in range(20)])
        sizes: list[int] = []
        seen: list[int] = []
        kw: dict[str, Any] = {"weight": lambda e: 1.0, "max_items": 3, "fast_path": None}
        with self.subscribe(bus, topic, unique("g"), 100.0, **kw) as sub:
            deadline = time.monotonic() + self.deadline
            while len(seen) < 20 and time.monotonic() < deadline:
                batch = sub.fetch(max_wait=0.2)
                if batch is not None:
                    sizes.append(len(batch))
                    seen.extend(d.event.data["n"] for d in batch.deliveries)
                    batch.ack()
        assert sorted(seen) == list(range(20))
        assert max(sizes) == 3

    def test_item_without_a_weight_goes_to_the_dead_letter_topic(
        self, bus: EventBus, make_topic: Callable[..., str]
    ) -> None:
        topic = make_topic(partitions=1)
        bus.publish_many(
            topic,
            [weighted(0, "k", 3.0), eventbus.Event(data={"seq": 1}, key="k"), weighted(2, "k", 4)],
        )
        with self.subscribe(bus, topic, unique("g"), 100.0) as sub:
            got: list[Any] = []
            deadline = time.monotonic() + self.deadline
            while len(got) < 2 and time.monotonic() < deadline:
                batch = sub.fetch(max_wait=0.2)
                if batch is not None:
                    got.extend(batch.deliveries)
                    batch.ack()
        assert [d.event.data["seq"] for d in got] == [0, 2]
        dead = list(bus.replay(f"{topic}.dlq"))
        assert [r.event.data for r in dead] == [{"seq": 1}]

    def test_async_api(self, url: str, make_topic: Callable[..., str]) -> None:
        topic = make_topic(partitions=2)

        async def main() -> list[int]:
            async with eventbus.connect_async(url) as bus:
                await bus.publish_many(topic, [weighted(i, f"k{i % 3}", 7.0) for i in range(12)])
                settings = self.settings(unique("g"), 21.0)
                seen: list[int] = []
                async with await subscribe_batches(bus, topic, **settings) as sub:
                    async for batch in sub:
                        assert batch.weight <= 21.0
                        seen.extend(d.event.data["seq"] for d in batch.deliveries)
                        await batch.ack()
                        if len(seen) == 12:
                            break
                return seen

        seen = asyncio.run(asyncio.wait_for(main(), self.deadline))
        assert len(seen) == 12
