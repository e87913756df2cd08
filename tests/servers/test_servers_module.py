"""eventbus.testing.servers: lifecycle, persistence option and error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventbus.testing import servers

pytestmark = pytest.mark.timeout(120)


def _redis(port: int, *command: str) -> bytes:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, protocol=2)
    try:
        reply = client.execute_command(*command)
    finally:
        client.close()
    return reply if isinstance(reply, bytes) else str(reply).encode()


@pytest.mark.redis
def test_redis_starts_on_loopback_and_stops_cleanly() -> None:
    server = servers.start_redis()
    try:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert servers.redis_answers(server.port)
        assert _redis(server.port, "CONFIG", "GET", "appendonly")  # answers
        assert server.alive()
    finally:
        server.stop()
    assert not server.workdir.exists()
    assert not server.alive()
    assert not servers.redis_answers(server.port)


@pytest.mark.redis
def test_redis_aof_survives_restart_on_same_dir(tmp_path: Path) -> None:
    data = tmp_path / "redis-data"
    first = servers.start_redis(appendonly=True, appendfsync="always", data_dir=data)
    try:
        _redis(first.port, "XADD", "s", "*", "k", "v")
    finally:
        first.stop()
    assert data.is_dir()  # a caller-owned dir is kept
    second = servers.start_redis(appendonly=True, data_dir=data, port=first.port)
    try:
        assert _redis(second.port, "XLEN", "s") == b"1"
    finally:
        second.stop()


def test_missing_redis_server_names_the_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(servers.MissingToolError, match="apt-get install redis-server"):
        servers.start_redis()


def test_missing_maven_names_the_debian_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("EVENTBUS_KAFKA_LIBS", str(tmp_path / "libs"))
    with pytest.raises(servers.MissingToolError, match="apt-get install maven"):
        servers.ensure_kafka_jars()


def test_missing_java_names_the_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(servers.MissingToolError, match="openjdk-17-jre-headless"):
        servers.start_kafka()


def test_stop_pid_ignores_processes_that_are_not_ours() -> None:
    import os

    # our own pid with a marker it does not carry: must not be signalled
    assert servers.stop_pid(os.getpid(), marker="/definitely/not/our/server/dir") is False


def test_cluster_id_format() -> None:
    cid = servers.kafka_cluster_id()
    assert len(cid) == 22 and not cid.startswith("-")
