"""How the fixtures pick a server, and skip vs fail when none can be had."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from eventbus.testing import fixtures, servers

pytestmark = pytest.mark.timeout(120)

_INNER = """
def test_needs_redis(redis_url):
    assert redis_url

def test_needs_kafka(kafka_url):
    assert kafka_url
"""


def _run_inner(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_inner.py").write_text(_INNER)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTBUS_")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rsf", "-p", "eventbus.testing.fixtures",
         "-p", "no:cacheprovider", "test_inner.py"],
        cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=100, check=False,
    )  # fmt: skip


def _dead_port() -> int:
    return servers.free_port()  # nothing listens there right after we let it go


def test_unreachable_env_servers_skip_with_reason(tmp_path: Path) -> None:
    port = _dead_port()
    result = _run_inner(
        tmp_path,
        EVENTBUS_TEST_REDIS_URL=f"redis://127.0.0.1:{port}/0",
        EVENTBUS_TEST_KAFKA_URL=f"kafka://127.0.0.1:{port}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 skipped" in result.stdout
    assert "does not answer PING" in result.stdout
    assert "does not answer a metadata request" in result.stdout


def test_unreachable_env_servers_fail_when_required(tmp_path: Path) -> None:
    port = _dead_port()
    result = _run_inner(
        tmp_path,
        EVENTBUS_TEST_REDIS_URL=f"redis://127.0.0.1:{port}/0",
        EVENTBUS_TEST_KAFKA_URL=f"kafka://127.0.0.1:{port}",
        EVENTBUS_REQUIRE_SERVERS="1",
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "2 error" in result.stdout
    assert "EVENTBUS_REQUIRE_SERVERS=1" in result.stdout


def test_missing_programs_skip_naming_the_package(tmp_path: Path) -> None:
    # no redis-server, java or mvn on PATH, no Docker: local processes cannot start
    result = _run_inner(tmp_path, PATH="/nonexistent", EVENTBUS_TEST_DOCKER="0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 skipped" in result.stdout
    assert "apt-get install redis-server" in result.stdout
    assert "apt-get install openjdk-17-jre-headless" in result.stdout


def test_env_url_is_used_as_is(redis_url: str) -> None:
    # the session server answers, so an env URL pointing at it passes the check unchanged
    assert fixtures._check_env_redis(redis_url) == redis_url
