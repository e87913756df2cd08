"""``redis+sentinel://`` URLs and the ``wait_replicas`` option: parsing (no server), and WAIT
against the shared single node (it has no replicas, so any wait falls short).

The failover itself (a primary, a replica and three Sentinels) is exercised by
tests/reliability/test_redis_failover.py."""

from __future__ import annotations

import re
import time

import pytest
from redis import exceptions as rx

import eventbus
from eventbus import StreamLayout, TopicSpec
from eventbus._registry import open_transport
from eventbus.adapters.redis_streams import RedisSettings, RedisTransport
from eventbus.adapters.redis_streams._errors import demoted, translate
from eventbus.errors import ConfigurationError, ConnectionFailedError, OperationTimeoutError


def test_sentinel_url_parts() -> None:
    s = RedisSettings.from_url(
        "redis+sentinel://app:pa%3Ass@s1:26379,s2,[::1]:26381/orders/2?wait_replicas=1"
        "&sentinel_password=sentinel-secret"
    )
    assert s.sentinels == (("s1", 26379), ("s2", 26379), ("::1", 26381))
    assert (s.service_name, s.db, s.username, s.password) == ("orders", 2, "app", "pa:ss")
    assert (s.wait_replicas, s.wait_timeout_ms) == (1, 100)
    assert s.sentinel_password == "sentinel-secret"
    for secret in ("pa:ss", "pa%3Ass", "sentinel-secret"):
        assert secret not in repr(s)
    kwargs = s.client_kwargs()
    assert "host" not in kwargs and "port" not in kwargs and kwargs["db"] == 2
    assert s.sentinel_kwargs()["password"] == "sentinel-secret"
    assert RedisSettings.from_url("redis+sentinel://s1/orders?db=3").db == 3


@pytest.mark.parametrize(
    ("url", "text"),
    [
        ("redis+sentinel://u:hunter2@s1:26379", "name the service"),
        ("redis+sentinel://u:hunter2@s1:26379/", "name the service"),
        ("redis+sentinel://u:hunter2@s1:0/svc", "from 1 to 65535"),
        ("redis+sentinel://u:hunter2@s1:70000,s2/svc", "from 1 to 65535"),
        ("redis+sentinel://u:hunter2@s1:ab,s2/svc", "from 1 to 65535"),
        ("redis+sentinel://u:hunter2@s1,,s2/svc", "host or host:port"),
        ("redis+sentinel://u:hunter2@s1/svc/0/x", "/service_name or /service_name/db"),
        ("redis+sentinel://u:hunter2@s1/s%20v", "/service_name or /service_name/db"),
        ("redis+sentinel://u:hunter2@s1/svc/x", "database number"),
        ("redis+sentinel://u:hunter2@s1/svc?cluster=true", "not a Redis Cluster"),
        ("redis+sentinel://u:hunter2@s1/svc?bogus=1", "unknown URL option"),
        ("redis://u:hunter2@h/0?sentinel_password=x", "redis+sentinel:// URLs only"),
        ("redis://u:hunter2@h/0?wait_replicas=1&wait_timeout_ms=0", "at least 1"),
        ("redis://u:hunter2@h/0?wait_replicas=-1", "at least 0"),
        ("redis://u:hunter2@h/0?wait_replicas=1.5", "whole number"),
        ("redis://u:hunter2@h/0?wait_replicas=1&wait_timeout_ms=5000&socket_timeout=2", "shorter"),
        ("redis://u:hunter2@h/0?wait_replicas=1&cluster=true", "not supported with cluster"),
    ],
)
def test_bad_sentinel_and_wait_options(url: str, text: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(text)) as caught:
        RedisSettings.from_url(url)
    assert "hunter2" not in str(caught.value)


def test_the_registry_knows_the_scheme() -> None:
    transport = open_transport("redis+sentinel://s1:26379,s2:26380/svc")
    assert isinstance(transport, RedisTransport)
    assert transport.settings.service_name == "svc"


def test_failover_errors_are_eventbus_errors() -> None:
    settings = RedisSettings.from_url("redis+sentinel://s1/svc")
    plain = RedisSettings.from_url("redis://h/0")
    demoted_exc = rx.ConnectionError("The previous master is now a slave")
    assert demoted(settings, demoted_exc) and demoted(settings, rx.ReadOnlyError("x"))
    assert not demoted(plain, demoted_exc) and not demoted(settings, rx.ConnectionError("x"))
    from redis.asyncio.sentinel import MasterNotFoundError

    for exc, text in [
        (demoted_exc, "demoted"),
        (MasterNotFoundError("No master found for 'svc'"), "no Sentinel named"),
        (rx.ResponseError("UNBLOCKED force unblock from blocking operation"), "stopped being"),
        (rx.ReadOnlyError("You can't write against a read only replica."), "read-only replica"),
    ]:
        mapped = translate(exc, settings.url, "publish")
        assert isinstance(mapped, ConnectionFailedError), (exc, mapped)
        assert text in str(mapped)


def test_wait_falls_short_without_replicas(redis_url: str, topic: str) -> None:
    """The shared server has no replica: WAIT 1 answers 0 after the timeout, the publish
    raises OperationTimeoutError saying the events were written to the primary."""
    url = f"{redis_url.split('?')[0]}?wait_replicas=1&wait_timeout_ms=50"
    with eventbus.connect(url) as bus, eventbus.connect(redis_url) as plain:
        bus.create_topic(topic, partitions=2)
        started = time.monotonic()
        with pytest.raises(OperationTimeoutError, match="written to the primary") as caught:
            bus.publish_many(topic, [{"n": n} for n in range(10)])
        assert time.monotonic() - started < 2
        assert "0 of the 1 replica" in str(caught.value)
        assert sorted(i.event.data["n"] for i in plain.replay(topic)) == list(range(10))
        # the script path (declared layouts) sends the WAIT in its pipeline too
        layout = StreamLayout(type="type", data="payload")
        bus.alter_topic(TopicSpec(name=topic, partitions=2, layout=layout))
        with pytest.raises(OperationTimeoutError, match="written to the primary"):
            bus.publish(topic, eventbus.Event(type="T", data={"n": 10}))
        assert len(list(plain.replay(topic))) == 11
