"""The conformance suite once more, on the local three-node Redis Cluster."""

import pytest

from eventbus.testing.conformance import ConformanceSuite
from tests.redis.cluster import LocalCluster

pytestmark = [pytest.mark.redis, pytest.mark.slow]


class TestRedisClusterConformance(ConformanceSuite):
    @pytest.fixture
    def url(self, redis_cluster: LocalCluster) -> str:
        return redis_cluster.url
