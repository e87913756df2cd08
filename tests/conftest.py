"""Project-wide test set-up: the real-server fixtures, and provisioning on a fresh machine.

``python -m pytest`` (the README's test command) installs what the tests need when it is
missing, before any test runs: Debian's redis-server, redis-tools, kcat, a JRE and Maven
(apt-get, as root or with sudo) and Apache Kafka's jars (Maven Central). See docs/servers.md.
``EVENTBUS_PROVISION=0`` turns this off; then tests that need a missing server skip with the
reason (or fail with ``EVENTBUS_REQUIRE_SERVERS=1``)."""

import os
import sys

import pytest

from eventbus.testing import servers

pytest_plugins = ["eventbus.testing.fixtures"]


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("EVENTBUS_PROVISION", "1").strip().lower() in {"0", "false", "no", "off"}:
        return
    if not servers.missing_tools() and servers.kafka_jars_present():
        return

    def say(line: str) -> None:
        print(f"eventbus tests: {line}", file=sys.stderr, flush=True)

    try:
        servers.provision(log=say)
    except servers.ServerError as exc:  # the tests that need it say so again, one by one
        say(f"could not provision the test servers: {exc}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The observability tests install an OpenTelemetry SDK as the process-wide provider,
    which cannot be taken back: run them last, so no other test sees trace headers."""
    items.sort(key=lambda item: item.path.name == "test_observability.py")
