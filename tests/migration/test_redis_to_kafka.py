"""The whole migration, live, from a real Redis to a real Apache Kafka: three producer threads
publish keyed events continuously through ``migrate://`` and a consumer group of two worker
processes handles them, while the operator moves the topic through every stage to
``target-only``. Every event handled, none twice, per-key order held."""

from collections import Counter
from pathlib import Path

import pytest

from tests.migration.scenario import check, run_scenario

pytestmark = [pytest.mark.redis, pytest.mark.kafka]


@pytest.mark.timeout(180)
def test_migration_end_to_end_redis_to_kafka_with_worker_processes(
    redis_url: str, kafka_url: str, tmp_path: Path
) -> None:
    tally = run_scenario(redis_url, kafka_url, processes=tmp_path, deadline=120)
    assert len(tally.published) > 100
    check(tally)
    workers = Counter(h.worker for h in tally.handled)
    assert len(workers) == 2, f"both worker processes handled events: {workers}"
    print(f"\npublished {len(tally.published)}, handled by worker: {dict(workers)}")
