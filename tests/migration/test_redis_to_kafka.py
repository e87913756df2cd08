"""The whole migration, live, from a real Redis to a real Apache Kafka."""

import pytest

from tests.migration.scenario import check, run_scenario

pytestmark = [pytest.mark.redis, pytest.mark.kafka]


@pytest.mark.timeout(240)
def test_migration_end_to_end_redis_to_kafka(redis_url: str, kafka_url: str) -> None:
    tally = run_scenario(redis_url, kafka_url, deadline=180)
    assert len(tally.published) > 30
    check(tally)
