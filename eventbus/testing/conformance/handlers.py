"""The runner and failing handlers: retries then the dead-letter topic, typed validation
that dead-letters invalid payloads, dead-letter writes retried until they land, per-key order
under concurrency, keyless events in parallel around a slow one, and a graceful shutdown
that loses nothing acked."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import eventbus
from eventbus.sync import Delivery, EventBus
from eventbus.testing.conformance._base import SuiteBase, Task, drain, unique, wait_until
from eventbus.topics import TopicSpec


class HandlerTests(SuiteBase):
    """The runner: retries, dead letters, concurrency, shutdown."""

    def test_runner_dead_letters_after_last_attempt_and_goes_on(
        self, bus: EventBus, make_topic: Callable[..., str]
    ) -> None:
        topic = make_topic(partitions=1)
        bus.publish_many(topic, ["poison", "fine"])
        handled: list[str] = []
        attempts: list[int] = []

        def handler(d: Delivery) -> None:
            if d.event.data == "poison":
                attempts.append(d.attempt)
                raise ValueError("cannot handle poison")
            handled.append(d.event.data)

        runner = bus.runner(handler, topic, group=unique("g"), max_attempts=3, backoff=0.01)
        self._run_until(runner, lambda: handled == ["fine"] and runner.stats.dead_lettered == 1)
        assert attempts == [1, 2, 3]
        dead = list(bus.replay(f"{topic}.dlq"))
        assert [r.event.data for r in dead] == ["poison"]
        dlq_headers = self._raw_headers(bus, f"{topic}.dlq")
        assert "cannot handle poison" in dlq_headers["eb-dlq-reason"]
        assert dlq_headers["eb-dlq-attempts"] == "3"

    def test_typed_consumption_dead_letters_invalid_payloads(
        self, bus: EventBus, make_topic: Callable[..., str]
    ) -> None:
        topic = make_topic(partitions=1)
        bus.publish(topic, Task(task_id=1, title="ok"))
        bus.publish(topic, {"task_id": "not a number"})
        bus.publish(topic, Task(task_id=2, title="also ok"))
        with self.subscribe(bus, topic, unique("g"), model=Task) as sub:
            got = drain(sub, 2, self.deadline)
        assert [d.event.data for d in got] == [
            Task(task_id=1, title="ok"),
            Task(task_id=2, title="also ok"),
        ]
        assert got[0].event.type == "Task"
        dead = list(bus.replay(f"{topic}.dlq"))
        assert [r.event.data for r in dead] == [{"task_id": "not a number"}]
        assert (
            "does not validate as Task" in self._raw_headers(bus, f"{topic}.dlq")["eb-dlq-reason"]
        )

    def test_failing_dead_letter_write_is_retried_and_the_runner_goes_on(
        self, bus: EventBus, make_topic: Callable[..., str]
    ) -> None:
        topic = make_topic(partitions=1)
        dlq = f"{topic}.dlq"
        # a dead-letter topic that refuses the copy (too large) until the operator fixes it
        bus.create_topic(dlq, partitions=1, max_event_bytes=64)
        bus.publish_many(
            topic,
            [
                eventbus.Event(data="poison", key="a"),
                eventbus.Event(data="after-poison", key="a"),
                eventbus.Event(data="other", key="b"),
            ],
        )
        handled: list[str] = []

        def handler(d: Delivery) -> None:
            if d.event.data == "poison":
                raise ValueError("cannot handle poison")
            handled.append(d.event.data)

        runner = bus.runner(
            handler, topic, group=unique("g"), max_attempts=1, backoff=0.05, max_backoff=0.2
        )
        thread = threading.Thread(target=runner.run)
        thread.start()
        try:
            wait_until(
                lambda: runner.stats.dead_letter_failures >= 2 and "other" in handled,
                self.deadline,
                "failed dead-letter writes while other keys go on",
            )
            assert "after-poison" not in handled, "key order: it waits behind the poison"
            bus.alter_topic(TopicSpec(name=dlq, partitions=1))
            wait_until(
                lambda: runner.stats.dead_lettered == 1 and "after-poison" in handled,
                self.deadline,
                "the dead-letter write to work and the key to go on",
            )
        finally:
            runner.stop()
            thread.join(self.deadline)
        assert not thread.is_alive()
        assert [r.event.data for r in bus.replay(dlq)] == ["poison"]
        assert sorted(handled) == ["after-poison", "other"]

    def test_runner_concurrency_keeps_per_key_order(
        self, bus: EventBus, make_topic: Callable[..., str]
    ) -> None:
        topic = make_topic(partitions=2)
        total = 200
        bus.publish_many(
            topic, [eventbus.Event(data={"seq": i}, key=f"k{i % 7}") for i in range(total)]
        )
        lock = threading.Lock()
        active: set[str] = set()
        order: dict[str, list[int]] = {}
        overlaps: list[str] = []
        peak = [0]

        def handler(d: Delivery) -> None:
            key = d.event.key or ""
            with lock:
                if key in active:
                    overlaps.append(key)
                active.add(key)
                peak[0] = max(peak[0], len(active))
            time.sleep(0.001)  # simulated work inside the handler, not a wait
            with lock:
                active.discard(key)
                order.setdefault(key, []).append(d.event.data["seq"])

        runner = bus.runner(handler, topic, group=unique("g"), concurrency=8)
        self._run_until(runner, lambda: runner.stats.handled == total)
        assert overlaps == []
        for key, seqs in order.items():
            assert seqs == sorted(seqs), f"key {key} handled out of order"
        assert sum(len(s) for s in order.values()) == total
        assert peak[0] > 1, "handlers of different keys should overlap"

    def test_runner_keyless_events_run_in_parallel_around_a_slow_one(
        self, bus: EventBus, make_topic: Callable[..., str]
    ) -> None:
        topic = make_topic(partitions=2)
        total = 60
        bus.publish_many(topic, [eventbus.Event(data={"seq": i}) for i in range(total)])
        lock = threading.Lock()
        active, peak = [0], [0]
        finished: list[int] = []
        others_done = threading.Event()
        slow_waited: list[bool] = []

        def handler(d: Delivery) -> None:
            seq = d.event.data["seq"]
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            if seq == 0:  # an agent's long call: the other keyless events go on around it
                slow_waited.append(others_done.wait(self.deadline))
            else:
                time.sleep(0.001)  # simulated work inside the handler, not a wait
            with lock:
                active[0] -= 1
                finished.append(seq)
                if len(finished) == total - 1 and 0 not in finished:
                    others_done.set()

        runner = bus.runner(handler, topic, group=unique("g"), concurrency=4)
        self._run_until(runner, lambda: runner.stats.handled == total)
        assert slow_waited == [True], "keyless events waited behind a slow one"
        assert sorted(finished) == list(range(total))
        assert 1 < peak[0] <= 4

    def test_graceful_shutdown_loses_nothing_acked(
        self, bus: EventBus, make_topic: Callable[..., str]
    ) -> None:
        topic = make_topic(partitions=2)
        group = unique("g")
        bus.publish_many(topic, [eventbus.Event(data=i, key=str(i)) for i in range(50)])
        first: list[int] = []
        runner = bus.runner(lambda d: first.append(d.event.data), topic, group=group)
        self._run_until(runner, lambda: len(first) >= 20)
        bus.publish_many(topic, [eventbus.Event(data=i, key=str(i)) for i in range(50, 60)])
        second: list[int] = []
        runner = bus.runner(lambda d: second.append(d.event.data), topic, group=group)
        self._run_until(runner, lambda: len(first) + len(second) >= 60)
        assert sorted(first + second) == list(range(60))
