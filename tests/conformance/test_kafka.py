"""The conformance suite on Kafka (a real broker from the ``kafka_url`` fixture)."""

import pytest

from eventbus.testing.conformance import ConformanceSuite

pytestmark = pytest.mark.kafka


class TestKafkaConformance(ConformanceSuite):
    @pytest.fixture
    def url(self, kafka_url: str) -> str:
        return kafka_url
