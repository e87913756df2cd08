"""Leases: a record held by a live member (queued locally or in a slow handler) stays with it
past the visibility timeout, goes back when the member dies or exceeds ``max_lease``, and a
stopping runner hands back what it has not started."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import eventbus
from eventbus.sync import Delivery, EventBus
from eventbus.testing.conformance._base import SuiteBase, drain, unique, wait_until


class LeaseTests(SuiteBase):
    """Leases of held records and slow handlers."""

    def test_stuck_member_loses_record_after_max_lease(
        self, bus: EventBus, url: str, make_topic: Callable[..., str]
    ) -> None:
        topic = make_topic(partitions=1)
        group = unique("g")
        bus.publish(topic, "slow")
        stuck = self.subscribe(bus, topic, group, consumer="stuck", max_lease=1.0)
        drain(stuck, 1, self.deadline, ack=False)
        # the member lives but never settles the record: past max_lease it comes back
        (again,) = drain(stuck, 1, self.deadline)
        assert again.attempt == 2
        stuck.close()

    def test_held_records_stay_with_a_live_member_past_the_visibility_timeout(
        self, bus: EventBus, url: str, make_topic: Callable[..., str]
    ) -> None:
        topic = make_topic(partitions=1)
        group = unique("g")
        bus.publish_many(topic, list(range(5)))
        with eventbus.connect(url) as other_bus:
            holder = self.subscribe(bus, topic, group, consumer="m-1")
            held = drain(holder, 5, self.deadline, ack=False)
            other = self.subscribe(other_bus, topic, group, consumer="m-2")
            # neither the holder nor another member gets them again while the holder lives
            end = time.monotonic() + 3 * self.visibility_timeout
            again = []
            while time.monotonic() < end:
                for sub in (holder, other):
                    again += sub.fetch(10, timeout=0.2)
            assert again == [], "a record held by a live member was delivered again"
            # the holder dies without a word: the other member gets every one of them
            holder.kill()
            back = drain(other, 5, self.deadline + self.session_timeout)
            other.close()
        assert sorted(d.event.data for d in back) == [d.event.data for d in held]

    def _handled_once(
        self,
        bus: EventBus,
        topics: str | tuple[str, ...],
        total: int,
        seconds: float,
        members: int = 1,
        **settings: Any,
    ) -> dict[tuple[str, str | None], list[int]]:
        """Run ``members`` runners whose handler takes ``seconds`` until ``total`` events were
        handled; assert none was handled twice; return the order seen per (topic, key)."""
        lock = threading.Lock()
        seen: list[tuple[str, str | None, int]] = []
        active: set[tuple[str, str | None]] = set()
        overlaps: list[tuple[str, str | None]] = []

        def handler(d: Delivery) -> None:
            lane = (d.topic, d.event.key if d.event.key is not None else str(d.position))
            with lock:
                if d.event.key is not None and lane in active:
                    overlaps.append(lane)
                active.add(lane)
            time.sleep(seconds)  # simulated slow work (an LLM call), not a wait
            with lock:
                active.discard(lane)
                seen.append((d.topic, d.event.key, d.event.data))

        settings.setdefault("visibility_timeout", self.visibility_timeout)
        settings.setdefault("session_timeout", self.session_timeout)
        group = unique("g")
        runners = [bus.runner(handler, topics, group=group, **settings) for _ in range(members)]
        threads = [threading.Thread(target=r.run) for r in runners]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: len(seen) >= total, self.deadline * 2, "every event handled")
            # a duplicate would show up within another visibility timeout
            settle = time.monotonic() + 2 * self.visibility_timeout
            wait_until(lambda: time.monotonic() > settle or len(seen) > total, 60, "settling")
        finally:
            for r in runners:
                r.stop()
            for thread in threads:
                thread.join(self.deadline)
        assert not any(t.is_alive() for t in threads)
        counts: dict[tuple[str, int], int] = {}
        for topic, _, value in seen:
            counts[(topic, value)] = counts.get((topic, value), 0) + 1
        twice = {k: n for k, n in counts.items() if n > 1}
        assert twice == {}, f"handled more than once: {twice}"
        assert len(seen) == total
        assert overlaps == []
        order: dict[tuple[str, str | None], list[int]] = {}
        for topic, key, value in seen:
            order.setdefault((topic, key), []).append(value)
        return order

    def test_slow_handlers_with_a_deep_local_queue_handle_each_event_once(
        self, bus: EventBus, make_topic: Callable[..., str]
    ) -> None:
        # handlers slower than the visibility timeout divided by the queue depth: every event
        # waits locally longer than the visibility timeout before it starts
        topic = make_topic(partitions=1)
        bus.publish_many(topic, list(range(24)))
        self._handled_once(
            bus, topic, 24, 0.25, concurrency=2, batch_size=12, visibility_timeout=1.0
        )

    def test_handler_longer_than_the_visibility_timeout_runs_once_in_the_group(
        self, bus: EventBus, url: str, make_topic: Callable[..., str]
    ) -> None:
        topic = make_topic(partitions=2)
        bus.publish_many(topic, [eventbus.Event(data=i, key=f"k{i}") for i in range(6)])
        self._handled_once(bus, topic, 6, 2.5, members=2, concurrency=2, visibility_timeout=1.0)

    def test_slow_handlers_over_several_topics_keep_key_order_without_duplicates(
        self, bus: EventBus, make_topic: Callable[..., str]
    ) -> None:
        topics = (make_topic(partitions=2), make_topic(partitions=1))
        for topic in topics:
            bus.publish_many(topic, [eventbus.Event(data=i, key=f"k{i % 3}") for i in range(12)])
        order = self._handled_once(
            bus, topics, 24, 0.15, concurrency=3, batch_size=8, visibility_timeout=1.0
        )
        for lane, values in order.items():
            assert values == sorted(values), f"{lane} handled out of order: {values}"

    def test_stopping_a_slow_runner_hands_back_its_queue_unstarted(
        self, bus: EventBus, make_topic: Callable[..., str]
    ) -> None:
        topic = make_topic(partitions=1)
        group = unique("g")
        bus.publish_many(topic, list(range(8)))
        lock = threading.Lock()
        seen: list[tuple[str, int]] = []

        def slow(name: str) -> Callable[[Delivery], None]:
            def handler(d: Delivery) -> None:
                with lock:
                    seen.append((name, d.event.data))
                time.sleep(0.5)  # simulated slow work, not a wait

            return handler

        first = bus.runner(slow("first"), topic, group=group, concurrency=2)
        thread = threading.Thread(target=first.run)
        thread.start()
        try:
            wait_until(lambda: len(seen) >= 1, self.deadline, "the first handler to start")
            first.stop()
            thread.join(self.deadline)
            assert not thread.is_alive()
            started_by_first = len(seen)
            assert started_by_first < 8, "a stopping runner started its whole queue"
            second = bus.runner(slow("second"), topic, group=group, concurrency=4)
            self._run_until(second, lambda: len(seen) >= 8)
        finally:
            first.stop()
        values = sorted(v for _, v in seen)
        assert values == list(range(8)), f"handled more or less than once: {seen}"
