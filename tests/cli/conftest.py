"""Fixtures for the CLI tests (helpers are in clihelp.py).

``bus_url`` is parametrized over memory, Redis and Kafka (the real servers come from the
``redis_url`` / ``kafka_url`` session fixtures); ``mem_url`` is a fresh named memory broker.
Each memory URL ``memory://cli-<uuid>`` is one broker shared by every in-process run.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _no_ambient_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """No ``EVENTBUS_URL`` and an empty ``eventbus dev`` state dir, so that a command without
    ``--url`` finds no server unless the test provides one (the developer's own ``eventbus dev
    up`` must not leak in)."""
    state = tmp_path_factory.mktemp("dev-state")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("EVENTBUS_URL", raising=False)
        mp.setenv("EVENTBUS_STATE_DIR", str(state))
        yield state


@pytest.fixture
def mem_url() -> str:
    """A memory broker of its own for this test."""
    return f"memory://cli-{uuid.uuid4().hex[:10]}"


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("kafka", marks=pytest.mark.kafka),
    ]
)
def bus_url(request: pytest.FixtureRequest) -> str:
    """A server URL per transport: memory, a real Redis, a real Kafka broker."""
    if request.param == "memory":
        return f"memory://cli-{uuid.uuid4().hex[:10]}"
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
def name() -> str:
    """A topic or group name unique to the test (servers are shared by the session)."""
    return f"cli-{uuid.uuid4().hex[:10]}"
