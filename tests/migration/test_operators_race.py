"""Two operators writing the control record at the same time (issue #18, hole 5).

The control record is written by compare-and-set: of two writers that read the same version,
exactly one writes the next one and the other gets ControlConflictError. Checked on the Redis
source (a Lua script), on a Kafka source (a fenced transactional id), and end to end: two
operators advancing the same topic while producers publish and worker processes consume.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from eventbus._registry import open_transport
from eventbus.errors import ConfigurationError
from eventbus.migration import Migration
from eventbus.migration.control import ControlConflictError, ControlStore, MigrationState
from tests.migration.procs import migrate_url
from tests.migration.scenario import ProcessWorkers, Tally, producing
from tests.migration.test_topologies import _finish, _traffic, _with_history

ROUNDS = 8


async def _race(url: str, rounds: int) -> None:
    """Two stores on two connections save the same expected version, ``rounds`` times:
    each time exactly one wins, and the log holds each version once, in order."""
    name = f"race-{uuid.uuid4().hex[:6]}"
    a, b = open_transport(url), open_transport(url)
    await a.connect()
    await b.connect()
    try:
        one, two = ControlStore(a, name), ControlStore(b, name)
        await one.ensure()
        await one.save(MigrationState(name=name), expected_version=None)
        for i in range(rounds):
            version = (await one.require()).version
            results = await asyncio.gather(
                one.save(MigrationState(name=name, source="one"), expected_version=version),
                two.save(MigrationState(name=name, source="two"), expected_version=version),
                return_exceptions=True,
            )
            won = [r for r in results if isinstance(r, MigrationState)]
            lost = [r for r in results if isinstance(r, BaseException)]
            assert len(won) == 1, f"round {i}: {results}"
            assert len(lost) == 1 and isinstance(lost[0], ControlConflictError), lost
            current = await two.require()
            assert current.version == version + 1
            assert current.source == won[0].source
        versions = [
            MigrationState.model_validate_json(r.value).version
            for r in await a.read(one.topic, 0, None, limit=1000)
        ]
        assert versions == list(range(1, rounds + 2)), versions
    finally:
        await a.close()
        await b.close()


@pytest.mark.redis
def test_control_record_compare_and_set_on_redis(redis_url: str) -> None:
    asyncio.run(_race(redis_url, ROUNDS))


@pytest.mark.kafka
def test_control_record_compare_and_set_on_kafka(kafka_url: str) -> None:
    asyncio.run(_race(kafka_url, 3))


def test_control_record_compare_and_set_on_memory() -> None:
    asyncio.run(_race(f"memory://race-{uuid.uuid4().hex[:6]}", ROUNDS))


@pytest.mark.redis
@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_two_operators_advance_at_once_under_traffic(
    redis_url: str, kafka_url: str, tmp_path: Path
) -> None:
    """Two operators run ``advance`` on the same topic at once while producers publish and
    two worker processes consume: the topic moves exactly one stage (generation 1), one
    operator is told to run the command again; the migration then runs to target-only with
    every event handled once, in per-key order."""
    name, group, topic = (f"{p}-{uuid.uuid4().hex[:6]}" for p in ("m", "g", "t"))
    history = _with_history(redis_url, [topic])
    url = migrate_url(name, redis_url, kafka_url)
    tally = Tally()
    traffic = _traffic(tally)

    async def operate() -> None:
        first = await Migration.open(name, redis_url, kafka_url)
        second = await Migration.open(name, redis_url, kafka_url)
        try:
            await first.init([topic])
            await traffic()
            results = await asyncio.gather(
                first.advance(topic), second.advance(topic), return_exceptions=True
            )
            won = [r for r in results if isinstance(r, MigrationState)]
            assert len(won) == 1, results
            lost = next(r for r in results if isinstance(r, BaseException))
            assert isinstance(lost, ConfigurationError), lost
            state = await first.control.require()
            assert state.topics[topic].stage == "dual-source-primary"
            assert state.topics[topic].generation == 1
            await traffic()
            await first.backfill(topic)
            await second.verify(topic)
            report = await first.verify(topic)
            assert report.ok, report.summary()
            await first.advance(topic)
            await second.cutover(group, topic)
            await first.advance(topic)
            await traffic()
        finally:
            await first.close()
            await second.close()

    with ProcessWorkers(url, topic, group, tmp_path) as workers:
        workers.start()
        with producing(url, topic, tally, count=2):
            asyncio.run(asyncio.wait_for(operate(), 90))
        _finish(workers, tally, history)
