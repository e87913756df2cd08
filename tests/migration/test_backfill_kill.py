"""The backfill killed for real, Redis -> Kafka.

``eventbus migrate backfill`` runs as a child process. It is SIGKILLed at random points of its
progress (a seeded RNG picks how many more records must reach Kafka before each kill; the test
waits for that, with a deadline, and kills), several times, then runs to completion. A second
test stops a backfill (SIGSTOP: a paused VM, a long GC pause, a partitioned host), runs another
one to completion meanwhile, and wakes the first one up (SIGCONT).

Checked: each partition on Kafka holds exactly the source partition's events, each once, in
source order, with their keys and payloads (read committed). The stalled backfill must stop when it
wakes up (fenced by the one that took over) instead of copying its remaining events again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

import eventbus
from eventbus.migration import Migration
from eventbus.testing.conformance import wait_until
from tests.migration.checks import held
from tests.migration.procs import Children, cli

pytestmark = [pytest.mark.redis, pytest.mark.kafka]

SEED = 7_301
EVENTS = 60_000
PARTITIONS = 3
KILLS = 5
MAX_KILLS = 10


def _prepare(redis_url: str, kafka_url: str, topic: str) -> str:
    """A Redis topic with history, and a migration of it in dual-source-primary."""
    with eventbus.connect(redis_url) as bus:
        bus.create_topic(topic, partitions=PARTITIONS)
        for start in range(0, EVENTS, 2000):
            bus.publish_many(
                topic,
                [
                    eventbus.Event(data={"n": n}, key=f"k{n % 64}")
                    for n in range(start, start + 2000)
                ],
            )
    name = f"bk{uuid.uuid4().hex[:6]}"

    async def begin() -> None:
        m = await Migration.open(name, redis_url, kafka_url)
        try:
            await m.init([topic])
            await m.advance(topic)
        finally:
            await m.close()

    asyncio.run(begin())
    return name


def _check(name: str, redis_url: str, kafka_url: str, topic: str) -> None:
    """Each partition on Kafka holds the source partition's events, once each, in order."""
    both = held(name, redis_url, kafka_url, topic, PARTITIONS)
    assert sum(map(len, both.source.values())) == EVENTS
    both.assert_identical()


def _backfill_argv(name: str, redis_url: str, kafka_url: str, topic: str) -> list[str]:
    return cli(
        "migrate", "backfill", topic, "--name", name, "--from", redis_url, "--to", kafka_url,
        "-o", "json",
    )  # fmt: skip


class KafkaOffsets:
    """The target topic's end offsets as committed and uncommitted readers see them: the
    last stable offset (LSO) and the high watermark (HW). HW > LSO on a partition means a
    transaction with copies in it is open there."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        base = {
            "bootstrap.servers": bootstrap,
            "group.id": f"probe-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "logger": logging.getLogger("tests.migration.kafka"),
        }
        self.committed = Consumer({**base, "isolation.level": "read_committed"})
        self.uncommitted = Consumer({**base, "isolation.level": "read_uncommitted"})
        self.last = [0] * PARTITIONS

    def close(self) -> None:
        self.committed.close()
        self.uncommitted.close()

    def _ends(self, consumer: Consumer) -> list[int] | None:
        try:
            return [
                consumer.get_watermark_offsets(
                    TopicPartition(self.topic, p), timeout=5.0, cached=False
                )[1]
                for p in range(PARTITIONS)
            ]
        except KafkaException:  # e.g. leader metadata not settled yet on a new topic: ask again
            return None

    def probe(self) -> tuple[int, bool]:
        """(offsets used so far: copies, aborted copies and markers; whether a partition holds
        copies of a transaction not committed yet)."""
        hw = self._ends(self.uncommitted)  # first: a commit in between cannot look open
        lso = self._ends(self.committed)
        if hw is None:
            return sum(self.last), False
        self.last = hw
        return sum(hw), lso is not None and any(h > s for s, h in zip(lso, hw, strict=True))

    def records(self) -> int:
        """Data records an uncommitted reader sees (committed and aborted copies)."""
        total = 0
        for p in range(PARTITIONS):
            tp = TopicPartition(self.topic, p)
            low, high = self.uncommitted.get_watermark_offsets(tp, timeout=10.0, cached=False)
            self.uncommitted.assign([TopicPartition(self.topic, p, low)])
            deadline = time.monotonic() + 60
            while self.uncommitted.position([tp])[0].offset < high:
                assert time.monotonic() < deadline, f"reading partition {p} made no progress"
                for msg in self.uncommitted.consume(1000, 0.2):
                    total += msg.error() is None
            self.uncommitted.unassign()
        return total


def _kill_mid_batch(
    kids: Children, run: str, proc: subprocess.Popen[bytes], offsets: KafkaOffsets, goal: int
) -> bool:
    """Once Kafka shows ``goal`` offsets used, SIGKILL the backfill inside an open batch if
    possible; True if it died with its batch open (written, not committed).

    Seeing a batch open is not enough: its commit may already be on the wire. So the process
    is frozen (SIGSTOP: none of its threads sends anything more) and watched: a commit on the
    wire closes the batch within moments (then it is let go and the next batch is tried),
    while a batch still open after a second is one it will never commit. Then SIGKILL. If no
    such batch shows within 3000 more offsets, it is killed wherever it is."""
    deadline = time.monotonic() + 60
    while True:
        used, open_batch = offsets.probe()
        if used >= goal and open_batch:
            kids.signal(run, signal.SIGSTOP)
            closes = time.monotonic() + 1.0
            while offsets.probe()[1] and time.monotonic() < closes:
                time.sleep(0.005)  # allowed: polling interval of a condition wait
            if offsets.probe()[1]:  # frozen with its batch open: it never commits it
                kids.kill(run, signal.SIGKILL)
                return True
            kids.signal(run, signal.SIGCONT)  # it was committing: try the next batch
        elif used >= goal + 3000:
            kids.kill(run, signal.SIGKILL)
            return False
        assert proc.poll() is None, f"{run} ended before its kill:\n{kids.log(run)}"
        assert time.monotonic() < deadline, f"{run} made no progress"
        time.sleep(0.001)  # allowed: polling interval of a condition wait


@pytest.mark.timeout(180)
def test_backfill_killed_at_random_points_and_resumed(
    redis_url: str, kafka_url: str, kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    """Each kill waits for a random amount of progress (seeded), then kills the backfill
    inside an open batch (the worst moment: copies written, not committed), see
    :func:`_kill_mid_batch`."""
    rng = random.Random(SEED)
    name = _prepare(redis_url, kafka_url, topic_name)
    argv = _backfill_argv(name, redis_url, kafka_url, topic_name)
    kills = mid_batch = 0
    offsets = KafkaOffsets(kafka_bootstrap, topic_name)
    try:
        with Children(tmp_path) as kids:
            # KILLS kills, and more (up to MAX_KILLS) until one left its batch open
            while kills < KILLS or (mid_batch == 0 and kills < MAX_KILLS):
                run = f"backfill-{kills}"
                goal = offsets.probe()[0] + rng.randint(100, 1500)
                proc = kids.start(run, argv)
                mid_batch += _kill_mid_batch(kids, run, proc, offsets, goal)
                kills += 1
            kids.start("backfill-final", argv)
            code = kids.wait("backfill-final", 120)
            assert code == 0, kids.log("backfill-final")
        aborted = offsets.records() - EVENTS
    finally:
        offsets.close()
    _check(name, redis_url, kafka_url, topic_name)
    assert mid_batch >= 1, f"none of {kills} kills landed inside an open transaction"
    assert aborted > 0, "no copies of a killed batch were left behind to abort"
    print(
        f"\nbackfill: {kills} SIGKILLs, {mid_batch} inside an open transaction; {aborted} "
        "copies of killed batches aborted (invisible to committed reads); 0 duplicates"
    )


@pytest.mark.timeout(180)
def test_stalled_backfill_is_fenced_when_it_wakes_up(
    redis_url: str, kafka_url: str, topic_name: str, tmp_path: Path
) -> None:
    name = _prepare(redis_url, kafka_url, topic_name)
    argv = _backfill_argv(name, redis_url, kafka_url, topic_name)
    with Children(tmp_path) as kids, eventbus.connect(kafka_url) as kafka:
        stalled = kids.start("stalled", argv)
        wait_until(
            lambda: kafka.describe_topic(topic_name).count >= 3000 or stalled.poll() is not None,
            60,
            "the first backfill to copy 3000 events",
        )
        assert stalled.poll() is None, kids.log("stalled")
        kids.signal("stalled", signal.SIGSTOP)
        kids.start("takeover", argv)
        assert kids.wait("takeover", 120) == 0, kids.log("takeover")
        kids.signal("stalled", signal.SIGCONT)
        woke = kids.wait("stalled", 60)
        log = kids.log("stalled")
    _check(name, redis_url, kafka_url, topic_name)
    assert woke != 0, f"the stalled backfill went on copying after another took over:\n{log}"
    assert "fenced" in log, log
