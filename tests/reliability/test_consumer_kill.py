"""A consumer process killed with SIGKILL mid-batch, several times, on Redis and Kafka.

Each trial starts ``consumer_app.py`` (a runner that logs every handled event, fsynced, before
its handler returns), lets it handle a random number of events and kills it with SIGKILL. Right
after each kill the test asks the server what the group has not acked (Redis: the PEL; Kafka:
everything at or after the committed offset). At the end a last consumer drains the topic.

Checked: every published event is handled at least once (lost == 0); an event handled by a
killed process is handled again only if the server listed it as un-acked after that kill; no
process handles an event twice.
"""

from __future__ import annotations

import itertools
import random
import signal
from collections import defaultdict
from pathlib import Path

import pytest

import eventbus
from tests.reliability.conftest import poll, scale
from tests.reliability.helpers import (
    ConsumerLog,
    kafka_committed,
    kill,
    publish_numbered,
    redis_pending,
    start_consumer,
    unacked_kafka,
)

PARTITIONS = 3


@pytest.mark.timeout(scale(300, 900))
@pytest.mark.parametrize("kind", ["redis", "kafka"])
def test_consumer_sigkill_mid_batch(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, topic_name: str, figures: object
) -> None:
    url: str = request.getfixturevalue(f"{kind}_url")
    fig = figures("consumer SIGKILL mid-batch", kind)  # type: ignore[operator]
    kills = scale(4, 25)
    total = scale(400, 5000)
    session = "1" if kind == "redis" else "2"
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    fig.extra["seed"] = seed
    group = f"g-{topic_name}"
    log = ConsumerLog(tmp_path / "handled.log")
    args = ("--delay", "0.003", "--batch-size", "20", "--concurrency", "4",
            "--session-timeout", session)  # fmt: skip
    unacked_after_kill: dict[int, set[int]] = {}

    with eventbus.connect(url) as bus:
        bus.create_topic(topic_name, partitions=PARTITIONS)
        positions = publish_numbered(bus, topic_name, 0, total)
        fig.published = total
        by_position = {(p.partition, str(p.offset)): n for n, p in positions.items()}

        for trial in range(kills):
            before = log.count()
            share = max(10, (total - before) // (kills - trial + 1))
            target = before + rng.randint(5, share)
            proc = start_consumer(url, topic_name, group, log.path, *args)
            poll(
                lambda: log.count() >= target or proc.poll() is not None,  # noqa: B023
                60,
                f"trial {trial}: {target} handled events",
            )
            assert proc.poll() is None, f"consumer exited early:\n{log.path}.err"
            kill(proc, signal.SIGKILL)
            fig.trials += 1
            fig.faults += 1
            if kind == "redis":
                pending = redis_pending(url, topic_name, group, PARTITIONS)
                unacked_after_kill[proc.pid] = {by_position[x] for x in pending}
            else:
                committed = kafka_committed(bus, group, topic_name)
                unacked_after_kill[proc.pid] = unacked_kafka(positions, committed)

        proc = start_consumer(url, topic_name, group, log.path, *args)
        poll(
            lambda: len({e.n for e in log.read().handled()}) >= total or proc.poll() is not None,
            120,
            "the last consumer to handle every event",
        )
        assert kill(proc, signal.SIGTERM) == 0, (tmp_path / "handled.log.err").read_text()

    handled = log.read().handled()
    seen: dict[int, list[int]] = defaultdict(list)
    for entry in handled:
        seen[entry.n].append(entry.pid)
    fig.lost = total - len(set(seen) & set(range(total)))
    fig.duplicates = len(handled) - len(seen)
    wrongly_redelivered = []
    twice_in_one_process = []
    for n, pids in seen.items():
        for first, again in itertools.pairwise(pids):
            if first == again:
                twice_in_one_process.append(n)
            elif n not in unacked_after_kill.get(first, set()):
                wrongly_redelivered.append(n)
    fig.extra["redelivered_after_kill"] = fig.duplicates
    fig.extra["unacked_at_kills"] = [len(v) for v in unacked_after_kill.values()]
    assert fig.lost == 0, f"{fig.lost} events never handled (seed {seed})"
    assert not wrongly_redelivered, f"acked events came back: {sorted(wrongly_redelivered)[:20]}"
    assert not twice_in_one_process, f"handled twice by one process: {twice_in_one_process[:20]}"
