"""Fixtures for the Redis adapter tests. ``redis_url`` comes from eventbus.testing.fixtures
(loaded by tests/conftest.py); these add unique names, a local cluster and an ACL server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from eventbus.testing import servers
from eventbus.testing.fixtures import unavailable
from tests.redis.cluster import LocalCluster, start_cluster

ACL_USER = "alice"
ACL_PASSWORD = "s3cret-Pa55word"
RO_USER = "bob"
RO_PASSWORD = "bob-pa55"


@pytest.fixture
def topic() -> str:
    """A topic name no other test (or engineer) uses."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """A three-node local Redis Cluster, for the session."""
    try:
        cluster = start_cluster()
    except servers.MissingToolError as exc:
        unavailable(str(exc))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def acl_redis() -> Iterator[int]:
    """Port of a redis-server with ACL users: alice (all), bob (PING only)."""
    server = servers.start_redis(
        extra_args=[
            "--user",
            ACL_USER,
            "on",
            f">{ACL_PASSWORD}",
            "~*",
            "&*",
            "+@all",
            "--user",
            RO_USER,
            "on",
            f">{RO_PASSWORD}",
            "~*",
            "+ping",
            "+hello",
            "+client",
        ]
    )
    try:
        yield server.port
    finally:
        server.stop()
