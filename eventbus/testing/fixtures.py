"""pytest plugin: real Redis and Kafka servers for eventbus tests.

Enable with ``pytest_plugins = ["eventbus.testing.fixtures"]`` in a conftest.

Fixtures:

* ``redis_url`` (session): ``redis://127.0.0.1:PORT/0``
* ``kafka_url`` (session): ``kafka://127.0.0.1:PORT``; ``kafka_bootstrap`` gives ``host:port``
* ``topic_name`` (function): a topic/stream name unique to the test

Where a server comes from, first match wins:

1. ``EVENTBUS_TEST_REDIS_URL`` / ``EVENTBUS_TEST_KAFKA_URL`` (checked to answer);
2. testcontainers, when a Docker engine answers a ping within a second (Redis 7, Redpanda);
   set ``EVENTBUS_TEST_DOCKER=0`` to skip this step;
3. local processes from :mod:`eventbus.testing.servers` (``redis-server``, Apache Kafka jars).

A server that cannot be provided skips the test with the reason, or fails it when
``EVENTBUS_REQUIRE_SERVERS=1`` (CI). Servers started here are stopped at the end of the session.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import secrets
import warnings
from collections.abc import Iterator
from typing import Any, NoReturn
from urllib.parse import urlsplit

import pytest

from eventbus.testing import servers

__all__ = ["kafka_bootstrap", "kafka_url", "redis_url", "topic_name", "unavailable"]

REDIS_IMAGE = os.environ.get("EVENTBUS_TEST_REDIS_IMAGE", "redis:7")
REDPANDA_IMAGE = os.environ.get(
    "EVENTBUS_TEST_REDPANDA_IMAGE", "docker.redpanda.com/redpandadata/redpanda:v24.2.18"
)
_TRUE = {"1", "true", "yes", "on"}


def servers_required() -> bool:
    """True when a missing server must fail the test instead of skipping it."""
    return os.environ.get("EVENTBUS_REQUIRE_SERVERS", "").strip().lower() in _TRUE


def unavailable(reason: str) -> NoReturn:
    """Skip the test for ``reason`` (a missing server or tool), or fail it in CI
    (``EVENTBUS_REQUIRE_SERVERS=1``), where everything a test needs must be installed."""
    if servers_required():
        pytest.fail(f"{reason} (EVENTBUS_REQUIRE_SERVERS=1)", pytrace=False)
    pytest.skip(reason)


def docker_available(timeout: float = 1.0) -> bool:
    """True if a Docker engine answers a ping quickly (and the docker SDK is installed)."""
    if os.environ.get("EVENTBUS_TEST_DOCKER", "").strip().lower() in {"0", "false", "no", "off"}:
        return False
    host = os.environ.get("DOCKER_HOST", "")
    if not host and not os.path.exists("/var/run/docker.sock"):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            docker: Any = importlib.import_module("docker")  # untyped SDK, from testcontainers
            client = docker.from_env(timeout=max(1, int(timeout)))
            try:
                return bool(client.ping())
            finally:
                client.close()
    except Exception:
        return False


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    host = parts.hostname or servers.LOOPBACK
    return host, parts.port or default_port


def _check_env_redis(url: str) -> str:
    host, port = _host_port(url, 6379)
    if urlsplit(url).scheme == "redis" and not urlsplit(url).password:
        ok = servers.wait_until(lambda: servers.redis_answers(port, host), timeout=5)
        if not ok:
            unavailable(f"EVENTBUS_TEST_REDIS_URL={url} does not answer PING")
    return url


def _check_env_kafka(url: str) -> str:
    host, port = _host_port(url, 9092)
    if not servers.kafka_answers(f"{host}:{port}", timeout=15):
        unavailable(f"EVENTBUS_TEST_KAFKA_URL={url} does not answer a metadata request")
    return url


@contextlib.contextmanager
def _redis_container() -> Iterator[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from testcontainers.community.redis import RedisContainer

    container: Any = RedisContainer(REDIS_IMAGE)
    container.start()
    try:
        host = container.get_container_host_ip()
        if host == "localhost":
            host = servers.LOOPBACK
        yield f"redis://{host}:{container.get_exposed_port(6379)}/0"
    finally:
        container.stop()


@contextlib.contextmanager
def _redpanda_container() -> Iterator[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from testcontainers.community.kafka import RedpandaContainer

    container: Any = RedpandaContainer(REDPANDA_IMAGE)
    container.start(timeout=60)
    try:
        # match the local Kafka broker's settings that tests rely on
        for key, value in (
            ("auto_create_topics_enabled", "false"),
            ("group_initial_rebalance_delay", "0"),
            ("group_min_session_timeout_ms", "1000"),
        ):
            container.exec(["rpk", "cluster", "config", "set", key, value])
        yield f"kafka://{container.get_bootstrap_server()}"
    finally:
        container.stop()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis server (env, testcontainers, or a local ``redis-server``)."""
    env = os.environ.get("EVENTBUS_TEST_REDIS_URL")
    if env:
        yield _check_env_redis(env)
        return
    if docker_available():
        with contextlib.ExitStack() as stack:
            try:
                url = stack.enter_context(_redis_container())
            except Exception as exc:
                unavailable(f"Redis via testcontainers ({REDIS_IMAGE}) failed: {exc}")
            yield url
        return
    try:
        server = servers.start_redis()
    except servers.ServerError as exc:
        unavailable(f"no Redis server: {exc}")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kafka_url() -> Iterator[str]:
    """URL of a real Kafka-API broker (env, testcontainers Redpanda, or local Apache Kafka)."""
    env = os.environ.get("EVENTBUS_TEST_KAFKA_URL")
    if env:
        yield _check_env_kafka(env)
        return
    if docker_available():
        with contextlib.ExitStack() as stack:
            try:
                url = stack.enter_context(_redpanda_container())
            except Exception as exc:
                unavailable(f"Kafka via testcontainers ({REDPANDA_IMAGE}) failed: {exc}")
            yield url
        return
    try:
        server = servers.start_kafka()
    except servers.ServerError as exc:
        unavailable(f"no Kafka broker: {exc}")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_url: str) -> str:
    """``host:port`` of the ``kafka_url`` broker, for client configs (``bootstrap.servers``)."""
    host, port = _host_port(kafka_url, 9092)
    return f"{host}:{port}"


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def unique_name(label: str, prefix: str = "t", max_len: int = 200) -> str:
    """``<prefix>-<label sanitized>-<8 hex>``: only ``[A-Za-z0-9._-]``, at most ``max_len``."""
    suffix = secrets.token_hex(4)
    clean = _UNSAFE.sub("-", label).strip("-") or "test"
    room = max_len - len(prefix) - len(suffix) - 2
    return f"{prefix}-{clean[:room].rstrip('-')}-{suffix}"


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> str:
    """A topic (stream) name unique to this test run, e.g. ``t-test_publish-redis-1a2b3c4d``."""
    return unique_name(request.node.name)
