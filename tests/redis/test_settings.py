"""URL and options parsing (no server needed)."""

from __future__ import annotations

import asyncio

import pytest
from redis import exceptions as rx

from eventbus._registry import open_transport
from eventbus.adapters.redis_streams import RedisSettings, RedisTransport
from eventbus.adapters.redis_streams._errors import translate
from eventbus.errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectionFailedError,
    EventBusError,
    GroupNotFoundError,
    OperationTimeoutError,
)


def test_url_parts_and_defaults() -> None:
    s = RedisSettings.from_url("redis://user:pa%3Ass@example.com:6380/3")
    assert (s.host, s.port, s.db, s.username, s.password) == (
        "example.com", 6380, 3, "user", "pa:ss",
    )  # fmt: skip
    assert not s.tls and not s.cluster and not s.auto_create
    assert s.url == "redis://user:***@example.com:6380/3"


def test_repr_never_shows_the_password() -> None:
    s = RedisSettings.from_url(
        "rediss://u:topsecret@h:1/0?ssl_ca_certs=/ca.pem", {"redis_options": {"password": "x"}}
    )
    assert "topsecret" not in repr(s)
    assert "topsecret" not in str(s)
    assert s.tls and s.ssl_ca_certs == "/ca.pem"
    kwargs = s.client_kwargs()
    assert kwargs["ssl"] is True and kwargs["ssl_ca_certs"] == "/ca.pem"


def test_options_override_query_and_pass_through() -> None:
    s = RedisSettings.from_url(
        "redis://h:1/0?socket_timeout=3&auto_create=true&health_check_interval=7",
        {"socket_timeout": "4", "redis_options": {"client_name": "x"}},
    )
    assert s.socket_timeout == 4 and s.auto_create
    assert s.redis_options == {"client_name": "x", "health_check_interval": 7.0}
    assert s.client_kwargs()["client_name"] == "x"


def test_blocking_reads_stay_below_the_socket_timeout() -> None:
    s = RedisSettings.from_url("redis://h:1/0?socket_timeout=0.2&poll_interval=5")
    assert s.block_ms < 200


@pytest.mark.parametrize(
    "url",
    [
        "redis://h:1/abc",
        "redis://h:1/0?socket_timeout=soon",
        "redis://h:1/0?cluster=maybe",
        "redis://h:1/2?cluster=true",
        "redis://u:pw@h:notaport/0",
        "redis://u:pw@h:99999/0",
        "rediss://u,x:pw@127.0.0.1:99999/0",
    ],
)
def test_bad_urls_raise_configuration_errors_without_secrets(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        RedisSettings.from_url(url)
    assert "pw" not in str(info.value).replace("pwd", "")


@pytest.mark.parametrize("url", ["redis://h1:6379,h2:6379/0", "redis://u:pw@h1:1,h2:2/0?x=1"])
def test_a_host_list_is_refused_with_the_cluster_hint(url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"one host.*\?cluster=true") as info:
        RedisSettings.from_url(url)
    assert "pw" not in str(info.value)


def test_refused_credentials_are_not_retried() -> None:
    retry = RedisSettings.from_url("redis://h:1/0").client_kwargs()["retry"]
    calls: list[int] = []

    async def refused() -> None:
        calls.append(1)
        raise rx.AuthenticationError("WRONGPASS invalid username-password pair")

    async def dropped() -> None:
        calls.append(1)
        raise rx.ConnectionError("connection reset")

    async def fail(_exc: Exception) -> None:
        return None

    with pytest.raises(rx.AuthenticationError):
        asyncio.run(retry.call_with_retry(refused, fail))
    assert len(calls) == 1
    calls.clear()
    retry.update_retries(2)
    with pytest.raises(rx.ConnectionError):
        asyncio.run(retry.call_with_retry(dropped, fail))
    assert len(calls) == 3  # other connection errors are still retried


def test_registry_builds_the_transport_for_both_schemes() -> None:
    for url in ("redis://127.0.0.1:1/0", "rediss://127.0.0.1:1/0"):
        transport = open_transport(url)
        assert isinstance(transport, RedisTransport)
        caps = transport.capabilities
        assert caps.transport == "redis" and caps.native_delivery_count
        assert not caps.retention_by_size and not caps.compaction
    assert open_transport("redis://h:1/0?cluster=true").capabilities.atomic_dead_letter is False


@pytest.mark.parametrize(
    ("exc", "kind", "text"),
    [
        (rx.ConnectionError("refused"), ConnectionFailedError, "cannot reach Redis"),
        (rx.TimeoutError("slow"), OperationTimeoutError, "socket_timeout"),
        (rx.ResponseError("WRONGPASS invalid username-password pair"), AuthenticationError, "ACL"),
        (rx.NoPermissionError("NOPERM no permissions"), AuthenticationError, "permission"),
        (rx.ReadOnlyError("READONLY You can't write"), ConnectionFailedError, "primary"),
        (rx.OutOfMemoryError("OOM command not allowed"), EventBusError, "maxmemory"),
        (rx.ResponseError("NOGROUP No such key"), GroupNotFoundError, "does not exist"),
        (rx.SlotNotCoveredError("slot 7 not covered"), ConnectionFailedError, "Cluster"),
    ],
)
def test_driver_errors_are_translated(exc: Exception, kind: type, text: str) -> None:
    mapped = translate(exc, "redis://u:***@h:1/0", "publish")
    assert type(mapped) is kind
    assert text in str(mapped) and "redis://u:***@h:1/0" in str(mapped)
