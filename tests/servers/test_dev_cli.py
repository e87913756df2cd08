"""`eventbus dev up/status/down` starts detached servers that outlive the command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from eventbus.testing import servers

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


def _eventbus(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("eventbus")
    argv = [exe] if exe else [sys.executable, "-c", "from eventbus.cli import main; main()"]
    return subprocess.run(
        [*argv, *args], env=env, capture_output=True, text=True, timeout=200, check=False
    )


def _json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_version() -> None:
    result = _eventbus(dict(os.environ), "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("eventbus ")


@pytest.mark.redis
@pytest.mark.kafka
def test_dev_up_status_down(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["EVENTBUS_STATE_DIR"] = str(tmp_path / "state")  # isolated; jars still from the cache
    env.pop("EVENTBUS_TEST_REDIS_URL", None)
    env.pop("EVENTBUS_TEST_KAFKA_URL", None)
    pids: list[int] = []
    try:
        up = _json(_eventbus(env, "dev", "up", "--output", "json"))
        pids = [up["redis_pid"], up["kafka_pid"]]
        assert up["redis_url"].startswith("redis://127.0.0.1:")
        assert up["kafka_url"].startswith("kafka://127.0.0.1:")
        assert up["redis_running"] and up["kafka_running"]
        # the CLI has exited; the servers are still there and answer their protocols
        redis_port = int(up["redis_url"].rsplit(":", 1)[1].split("/")[0])
        assert servers.redis_answers(redis_port)
        assert servers.kafka_answers(up["kafka_url"].removeprefix("kafka://"), timeout=10)

        # a command without --url uses the dev servers (Redis first) and says so
        env.pop("EVENTBUS_URL", None)
        listed = _eventbus(env, "topics", "list", "-o", "json")
        assert listed.returncode == 0, listed.stderr
        assert f"note: using {up['redis_url']}" in listed.stderr
        assert json.loads(listed.stdout) == []

        again = _json(_eventbus(env, "dev", "up", "--output", "json"))
        assert (again["redis_pid"], again["kafka_pid"]) == (up["redis_pid"], up["kafka_pid"])
        assert again["redis"]["reused"] and again["kafka"]["reused"]

        status = _json(_eventbus(env, "dev", "status", "--output", "json"))
        assert status["redis_running"] and status["kafka_running"]
        assert status["redis_url"] == up["redis_url"]

        shell = _eventbus(env, "dev", "status", "--output", "env")
        assert f"export EVENTBUS_TEST_KAFKA_URL={up['kafka_url']}" in shell.stdout

        table = _eventbus(env, "dev", "status")
        assert table.returncode == 0 and "running" in table.stdout

        down = _json(_eventbus(env, "dev", "down", "--output", "json"))
        assert down["stopped"] == {"redis": True, "kafka": True}
        assert servers.wait_until(
            lambda: not any(servers.pid_alive(pid) for pid in pids), timeout=30
        )
        after = _json(_eventbus(env, "dev", "status", "--output", "json"))
        assert after["redis_url"] is None and not after["kafka_running"]
        gone = _eventbus(env, "topics", "list")
        assert gone.returncode == 2 and "no server given" in gone.stderr
    finally:
        for pid in pids:
            servers.stop_pid(pid, marker=str(tmp_path / "state"))


def test_dev_rejects_conflicting_flags(tmp_path: Path) -> None:
    env = dict(os.environ, EVENTBUS_STATE_DIR=str(tmp_path))
    result = _eventbus(env, "dev", "up", "--redis-only", "--kafka-only")
    assert result.returncode != 0
    assert "exclude each other" in result.stderr


@pytest.mark.kafka
def test_dev_up_kafka_cluster(tmp_path: Path) -> None:
    env = dict(os.environ, EVENTBUS_STATE_DIR=str(tmp_path / "state"))
    env.pop("EVENTBUS_TEST_KAFKA_URL", None)
    pids: list[int] = []
    try:
        up = _json(
            _eventbus(env, "dev", "up", "--kafka-only", "--kafka-brokers", "3", "-o", "json")
        )
        brokers = up["kafka_url"].removeprefix("kafka://").split(",")
        assert len(brokers) == 3 and up["kafka_running"]
        state = json.loads((tmp_path / "state" / "state.json").read_text())
        pids = [node["pid"] for node in state["kafka"]["extra"]["nodes"]]
        assert len(set(pids)) == 3
        for bootstrap in brokers:  # every node answers and lists all three brokers
            assert servers.wait_until(
                lambda b=bootstrap: servers.kafka_answers(b, timeout=5), timeout=30
            )
        again = _json(
            _eventbus(env, "dev", "up", "--kafka-only", "--kafka-brokers", "3", "-o", "json")
        )
        assert again["kafka"]["reused"] and again["kafka_pid"] == up["kafka_pid"]
        down = _json(_eventbus(env, "dev", "down", "--kafka-only", "-o", "json"))
        assert down["stopped"] == {"kafka": True}
        assert servers.wait_until(
            lambda: not any(servers.pid_alive(pid) for pid in pids), timeout=30
        )
    finally:
        for pid in pids:
            servers.stop_pid(pid, marker=str(tmp_path / "state"))
