"""The conformance suite on Redis Streams (a real server; unique topic and group names)."""

import pytest

from eventbus.testing.conformance import ConformanceSuite

pytestmark = pytest.mark.redis


class TestRedisConformance(ConformanceSuite):
    @pytest.fixture
    def url(self, redis_url: str) -> str:
        return redis_url
