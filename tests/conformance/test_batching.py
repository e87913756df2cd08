"""Budgeted batches (eventbus.batching) on every transport: memory, Redis (with and without
the server-side fast path) and Kafka."""

from __future__ import annotations

import uuid

import pytest

from eventbus.testing.batching import BatchingSuite


class TestMemoryBatching(BatchingSuite):
    session_timeout = 2.0
    visibility_timeout = 2.0

    @pytest.fixture
    def url(self) -> str:
        return f"memory://batching-{uuid.uuid4().hex[:8]}"


@pytest.mark.redis
class TestRedisBatching(BatchingSuite):
    session_timeout = 2.0
    visibility_timeout = 2.0
    fast_path = False

    @pytest.fixture
    def url(self, redis_url: str) -> str:
        return redis_url


@pytest.mark.redis
class TestRedisBatchingFastPath(BatchingSuite):
    """The same scenarios through the Lua budget claim (capability ``budget_fetch``)."""

    session_timeout = 2.0
    visibility_timeout = 2.0
    fast_path = True

    @pytest.fixture
    def url(self, redis_url: str) -> str:
        return redis_url  # RedisConsumer.fetch_budget is the fast path


@pytest.mark.kafka
class TestKafkaBatching(BatchingSuite):
    @pytest.fixture
    def url(self, kafka_url: str) -> str:
        return kafka_url
