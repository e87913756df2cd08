"""The conformance suite through ``migrate://`` from a real Redis to a real Kafka.

The suite's topics are not under migration, so events and groups live on the source (Redis)
while topics are created on both sides: the migration transport's publisher, consumer
wrapper and admin must keep every promise of the contract over real servers."""

import pytest

from eventbus.testing.conformance import ConformanceSuite
from tests.conformance.test_migrate import migrate_url

pytestmark = [pytest.mark.redis, pytest.mark.kafka]


class TestMigrateRedisToKafkaConformance(ConformanceSuite):
    @pytest.fixture
    def url(self, redis_url: str, kafka_url: str) -> str:
        return migrate_url(redis_url, kafka_url)
