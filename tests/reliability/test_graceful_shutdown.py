"""Graceful shutdown under load: SIGTERM to a runner process whose handler calls runner.stop().

Each trial starts ``consumer_app.py`` (concurrency 4, handlers that take 30 ms and log when they
start and when they finish), waits until it handled a random number of events, sends SIGTERM
and waits for a clean exit. A last consumer then drains the topic.

Checked: the process exits 0; every handler that started finished (no ``S`` without ``H``);
nothing a stopped process handled is handled again (its acks were committed); lost == 0.
"""

from __future__ import annotations

import random
import signal
from collections import Counter
from pathlib import Path

import pytest

import eventbus
from tests.reliability.conftest import poll, scale
from tests.reliability.helpers import ConsumerLog, kill, publish_numbered, start_consumer


@pytest.mark.timeout(scale(240, 600))
@pytest.mark.parametrize("kind", ["redis", "kafka"])
def test_sigterm_finishes_in_flight_and_commits(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, topic_name: str, figures: object
) -> None:
    url: str = request.getfixturevalue(f"{kind}_url")
    fig = figures("graceful SIGTERM under load", kind)  # type: ignore[operator]
    stops = scale(3, 15)
    total = scale(240, 2000)
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    fig.extra["seed"] = seed
    group = f"g-{topic_name}"
    log = ConsumerLog(tmp_path / "handled.log")
    args = ("--delay", "0.03", "--batch-size", "20", "--concurrency", "4",
            "--session-timeout", "2", "--log-start")  # fmt: skip
    in_flight_at_stop: list[int] = []

    with eventbus.connect(url) as bus:
        bus.create_topic(topic_name, partitions=3)
        publish_numbered(bus, topic_name, 0, total)
        fig.published = total
        for trial in range(stops):
            before = log.count()
            target = before + rng.randint(5, max(6, (total - before) // (stops + 1)))
            proc = start_consumer(url, topic_name, group, log.path, *args)
            poll(
                lambda: log.count() >= target or proc.poll() is not None,  # noqa: B023
                60,
                f"trial {trial}: {target} handled events",
            )
            entries = log.read().entries
            started = {e.n for e in entries if e.kind == "S" and e.pid == proc.pid}
            finished = {e.n for e in entries if e.kind == "H" and e.pid == proc.pid}
            in_flight_at_stop.append(len(started - finished))
            code = kill(proc, signal.SIGTERM, timeout=60)
            fig.trials += 1
            fig.faults += 1
            err = Path(f"{log.path}.err").read_text()
            assert code == 0, f"trial {trial}: exit code {code}\n{err}"
            entries = log.read().entries
            started = {e.n for e in entries if e.kind == "S" and e.pid == proc.pid}
            finished = {e.n for e in entries if e.kind == "H" and e.pid == proc.pid}
            assert started == finished, f"handlers cut short: {sorted(started - finished)}"
            assert f"EXIT {proc.pid}" in log.text()

        proc = start_consumer(url, topic_name, group, log.path, *args)
        poll(
            lambda: len({e.n for e in log.read().handled()}) >= total or proc.poll() is not None,
            120,
            "the last consumer to handle every event",
        )
        assert kill(proc, signal.SIGTERM, timeout=60) == 0

    handled = log.read().handled()
    counts = Counter(e.n for e in handled)
    fig.lost = total - len(set(counts) & set(range(total)))
    fig.duplicates = sum(c - 1 for c in counts.values())
    fig.extra["in_flight_at_sigterm"] = in_flight_at_stop
    assert fig.lost == 0, f"{fig.lost} events never handled (seed {seed})"
    again = sorted(n for n, c in counts.items() if c > 1)
    assert not again, f"acked events were delivered again after a graceful stop: {again[:20]}"
