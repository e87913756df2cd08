"""The Redis Cluster client sends a command again while its slot is being migrated, and the
edge names the migration when it gives up (no server needed: redis-py's command is stubbed)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis import exceptions as rx
from redis.asyncio.cluster import RedisCluster

from eventbus.adapters.redis_streams._cluster import MigrationTolerantCluster
from eventbus.adapters.redis_streams._errors import slot_in_migration, translate
from eventbus.errors import ConnectionFailedError, OperationTimeoutError

URL = "redis://127.0.0.1:7000/0?cluster=true"


def test_migration_errors_are_recognised() -> None:
    assert slot_in_migration(rx.ClusterError("TTL exhausted."))
    assert slot_in_migration(rx.TryAgainError("Multiple keys request during rehashing of slot"))
    assert slot_in_migration(rx.AskError("1 127.0.0.1:7001"))
    assert not slot_in_migration(rx.ClusterDownError("CLUSTERDOWN The cluster is down"))
    assert not slot_in_migration(rx.ClusterError("something else"))


def test_edge_names_the_migration() -> None:
    mapped = translate(rx.ClusterError("TTL exhausted."), URL, "publish to 't'")
    assert isinstance(mapped, OperationTimeoutError)
    assert "migrated" in str(mapped) and "socket_timeout" in str(mapped)
    down = translate(rx.ClusterDownError("CLUSTERDOWN"), URL, "publish to 't'")
    assert isinstance(down, ConnectionFailedError)


def _client(monkeypatch: pytest.MonkeyPatch, failures: list[BaseException]) -> Any:
    calls: list[tuple[Any, ...]] = []

    async def fake(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        if failures:
            raise failures.pop(0)
        return b"OK"

    monkeypatch.setattr(RedisCluster, "execute_command", fake)
    client = MigrationTolerantCluster(host="127.0.0.1", port=7000, socket_timeout=0.3)
    client.calls = calls
    return client


def test_sent_again_until_the_migration_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    client = _client(monkeypatch, [rx.ClusterError("TTL exhausted."), rx.TryAgainError("x")])
    assert asyncio.run(client.execute_command("EVALSHA", "sha", 1, "k")) == b"OK"
    assert len(client.calls) == 3


def test_gives_up_after_socket_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    client = _client(monkeypatch, [rx.ClusterError("TTL exhausted.")] * 1000)
    with pytest.raises(rx.ClusterError):
        asyncio.run(asyncio.wait_for(client.execute_command("GET", "k"), 5))
    assert 3 <= len(client.calls) < 1000


def test_other_errors_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    client = _client(monkeypatch, [rx.ResponseError("NOGROUP x")])
    with pytest.raises(rx.ResponseError):
        asyncio.run(client.execute_command("XACK", "k", "g", "0-1"))
    assert len(client.calls) == 1
