"""The conformance suite through ``migrate://`` (the migration transport), memory to memory.

Its topics are not under migration, so every call goes through the migration transport's
consumer and publisher to the source: the wrapper must keep every promise of the contract.
Redis -> Kafka runs in tests/migration/test_conformance_redis_to_kafka.py."""

import uuid
from urllib.parse import quote

import pytest

from eventbus.testing.conformance import ConformanceSuite


def migrate_url(source: str, target: str) -> str:
    name = f"conf-{uuid.uuid4().hex[:8]}"
    return f"migrate://{name}?source={quote(source, safe='')}&target={quote(target, safe='')}"


class TestMigrateMemoryConformance(ConformanceSuite):
    @pytest.fixture
    def url(self) -> str:
        tag = uuid.uuid4().hex[:8]
        return migrate_url(f"memory://src-{tag}", f"memory://dst-{tag}")
