"""Redis Cluster resharding: the slot holding a topic's keys moves while producers and a group run.

A local three-node cluster (``tests/redis/cluster.py``) holds three topics of three partitions.
Per topic, one thread publishes numbered events one at a time and another in batches of six
spread over the partitions (``publish_many``: one script over several keys of the slot; publish
timeout 5 s), and one group member fetches and acks them (``subscribe``, ack after handling).
Meanwhile the test moves the slot of one topic after another to another node, several times,
as ``redis-cli --cluster reshard`` does: ``SETSLOT IMPORTING`` / ``MIGRATING``, then ``MIGRATE
... KEYS`` one key at a time (after each key, the test waits until the other topics' publishers
made 10 calls, so the moving topic's publishers and member keep meeting the half-moved slot),
then ``SETSLOT NODE`` on every node.

Checked: every publish that returned a position is stored there and consumed (lost == 0),
duplicates are counted; publishes and consumer calls see no error at all (MOVED, ASK and
TRYAGAIN are retried inside the library), and none takes longer than its timeout plus 1.5 s;
after the load nothing is left pending in the group (acks made after a move reached the
streams' new node, whose group state moved with them).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

import eventbus
from eventbus.adapters.redis_streams import _layout as layout
from eventbus.transport import Position
from tests.redis import cluster as local
from tests.reliability.conftest import poll, scale
from tests.reliability.helpers import Attempt, Consumer, Publisher

TIMEOUT = 5.0
SLACK = 1.5
TOPICS = 3
PARTITIONS = 3
GROUP = "resharding"
BATCH = 6
BATCH_BASE = 10_000_000


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[local.LocalCluster]:
    started = local.start_cluster()
    try:
        yield started
    finally:
        started.stop()


def _pending(client: redis.RedisCluster, topic: str) -> int:
    """Entries delivered to the group and not acked, over the topic's partitions."""
    total = 0
    for p in range(PARTITIONS):
        try:
            total += int(client.xpending(layout.stream_key(topic, p), GROUP)["pending"])
        except redis.ResponseError:  # the group is not on this partition yet
            continue
    return total


class BatchPublisher(Publisher):
    """Publishes ``BATCH`` events keyed over every partition per ``publish_many`` call (one
    script over several keys of the slot), numbered from ``BATCH_BASE``; one Attempt each."""

    def run(self) -> None:
        n = BATCH_BASE
        while not self.halt.is_set():
            events = [eventbus.Event(data={"n": n + k}, key=f"b{k}") for k in range(BATCH)]
            t0 = time.monotonic()
            positions: list[Position | None] = [None] * BATCH
            error: BaseException | None = None
            try:
                positions = list(self.bus.publish_many(self.topic, events, timeout=self.timeout))
            except Exception as exc:  # recorded and checked by the test
                error = exc
            now = time.monotonic()
            for k in range(BATCH):
                self.attempts.append(Attempt(n + k, positions[k], error, now - t0, now))
            n += BATCH


def _stop(workers: list[Publisher] | list[Publisher | Consumer]) -> None:
    for w in workers:
        w.halt.set()
    for w in workers:
        w.join(TIMEOUT + SLACK + 10)


def _move_slots(
    redis_cluster: local.LocalCluster,
    admin: redis.RedisCluster,
    topics: list[str],
    slots: list[int],
    publishers: list[Publisher],
    moves: int,
    fig: Any,
) -> tuple[int, int]:
    """Move the topics' slots in turn, each to the next node; returns (keys moved, entries
    pending in the group right after the moves)."""
    ports = redis_cluster.ports

    def half_moved(i: int) -> Callable[[], None]:
        """Waits until the other topics' publishers made 10 calls: meanwhile topic ``i``'s
        publisher and group member keep calling into the half-moved slot (its own calls wait
        while their keys are split over two nodes, so they cannot be the clock)."""

        def wait() -> None:
            others = [p for p in publishers if p.topic != topics[i]]
            calls = [len(p.attempts) for p in others]
            poll(
                lambda: all(len(p.attempts) >= n + 10 for p, n in zip(others, calls, strict=True)),
                30,
                "publishes to other topics during a slot migration",
            )

        return wait

    keys_moved = carried = 0
    for move in range(moves):
        i = move % len(topics)
        mark = time.monotonic()
        poll(
            lambda: all(p.ok_since(mark) >= 20 for p in publishers),  # noqa: B023
            30,
            "publishes to succeed before a move",
        )
        owner = local.slot_owner(ports[0], slots[i])
        target = ports[(ports.index(owner) + 1) % len(ports)]
        keys_moved += local.migrate_slot(
            redis_cluster, slots[i], target, batch=1, between=half_moved(i)
        )
        carried += _pending(admin, topics[i])
        fig.trials += 1
        fig.faults += 1
    mark = time.monotonic()
    poll(lambda: all(p.ok_since(mark) >= 20 for p in publishers), 30, "publishes after the moves")
    return keys_moved, carried


@pytest.mark.timeout(scale(150, 600))
def test_redis_cluster_slot_moves_under_load(
    redis_cluster: local.LocalCluster, figures: object
) -> None:
    fig = figures(  # type: ignore[operator]
        "Redis Cluster slot moved (resharding) under publish and consume load", "redis cluster"
    )
    moves = scale(9, 30)
    ports = redis_cluster.ports
    topics = [f"reshard-{i}-{uuid.uuid4().hex[:8]}" for i in range(TOPICS)]
    slots = [local.key_slot(ports[0], layout.meta_key(t)) for t in topics]
    admin = redis.RedisCluster(host="127.0.0.1", port=ports[0])
    url = f"{redis_cluster.url}&socket_timeout=5&socket_connect_timeout=2"
    started = time.monotonic()
    try:
        with eventbus.connect(url, publish_timeout=TIMEOUT) as bus:
            for t in topics:
                bus.create_topic(t, partitions=PARTITIONS)
            publishers = [Publisher(bus, t, timeout=TIMEOUT) for t in topics] + [
                BatchPublisher(bus, t, timeout=TIMEOUT) for t in topics
            ]
            consumers = [Consumer(bus, t, GROUP) for t in topics]
            for worker in [*publishers, *consumers]:
                worker.start()
            try:
                keys_moved, carried = _move_slots(
                    redis_cluster, admin, topics, slots, publishers, moves, fig
                )
                _stop(publishers)
                returned = {
                    (p.topic, a.n): a for p in publishers for a in p.attempts if a.error is None
                }
                wanted = [{n for (t2, n) in returned if t2 == t} for t in topics]
                poll(
                    lambda: all(w <= set(c.seen) for c, w in zip(consumers, wanted, strict=True)),
                    60,
                    "the group to consume every returned publish",
                )
            finally:
                _stop([*publishers, *consumers])
            stored = {
                (t, item.position.partition, str(item.position.offset)): item.event.data["n"]
                for t in topics
                for item in bus.replay(t)
            }
        left_pending = sum(_pending(admin, t) for t in topics)
    finally:
        admin.close()
    fig.extra["seconds_under_load"] = round(time.monotonic() - started, 1)

    attempts = [a for p in publishers for a in p.attempts]
    fig.published = len(returned)
    fig.extra["events_publish_attempted"] = len(attempts)
    fig.extra["keys_migrated"] = keys_moved
    fig.extra["pending_entries_carried"] = carried
    fig.extra["left_pending"] = left_pending
    for a in attempts:
        if a.error is not None:
            fig.error(a.error)
    for c in consumers:
        for name, count in c.errors.items():
            fig.errors[f"consumer {name}"] = fig.errors.get(f"consumer {name}", 0) + count
    missing = [
        (t, a.n)
        for (t, _n), a in returned.items()
        if a.position is None
        or stored.get((t, a.position.partition, str(a.position.offset))) != a.n
    ]
    seen = {t: set(c.seen) for t, c in zip(topics, consumers, strict=True)}
    unconsumed = [(t, n) for (t, n) in returned if n not in seen[t]]
    fig.lost = len(set(missing) | set(unconsumed))
    fig.duplicates = sum(len(c.seen) - len(set(c.seen)) for c in consumers)
    fig.extra["max_publish_seconds"] = round(max(a.seconds for a in attempts), 3)
    fig.extra["slowest_fetch_or_ack_seconds"] = round(max(c.slowest for c in consumers), 3)
    fig.notes.append(
        f"{TOPICS} topics of {PARTITIONS} partitions on 3 nodes; {moves} slot moves, "
        f"{keys_moved} keys migrated one at a time"
    )

    assert not missing, f"returned publishes not stored at their position: {missing[:20]}"
    assert not unconsumed, f"returned publishes never consumed: {unconsumed[:20]}"
    errors = [repr(a.error) for a in attempts if a.error is not None]
    assert not errors, f"publishes failed during slot moves: {errors[:5]}"
    assert not any(c.errors for c in consumers), [dict(c.errors) for c in consumers]
    slow = [a for a in attempts if a.seconds > TIMEOUT + SLACK]
    assert not slow, f"publishes over their deadline: {[(a.n, a.seconds) for a in slow[:5]]}"
    assert left_pending == 0, f"{left_pending} entries still pending after every ack"
