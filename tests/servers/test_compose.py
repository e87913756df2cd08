"""docker-compose.yml is not started here (no Docker engine): check what users will get."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def _ports(service: dict[str, Any]) -> set[str]:
    return {str(p) for p in service.get("ports", [])}


def _command(service: dict[str, Any]) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else str(command)


def test_services_present(compose: dict[str, Any]) -> None:
    assert {"redis", "redpanda", "console"} <= set(compose["services"])


def test_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert check.get("interval") and check.get("retries"), name


def test_redis_7_with_aof(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis["image"].split(":")[1].startswith("7")
    assert "--appendonly yes" in _command(redis)
    assert "6379:6379" in _ports(redis)
    assert "redis-cli" in " ".join(redis["healthcheck"]["test"])


def test_redpanda_dev_mode_kafka_api_on_19092(compose: dict[str, Any]) -> None:
    redpanda = compose["services"]["redpanda"]
    command = _command(redpanda)
    assert redpanda["image"].startswith("docker.redpanda.com/redpandadata/redpanda:")
    assert "redpanda start" in command
    assert "--mode dev-container" in command
    assert "--smp 1" in command
    assert "external://localhost:19092" in command  # advertised to the host
    assert "external://0.0.0.0:19092" in command
    assert "19092:19092" in _ports(redpanda)
    assert "rpk cluster health" in " ".join(redpanda["healthcheck"]["test"])


def test_console_waits_for_healthy_redpanda(compose: dict[str, Any]) -> None:
    console = compose["services"]["console"]
    assert console["image"].startswith("docker.redpanda.com/redpandadata/console:")
    assert console["environment"]["KAFKA_BROKERS"] == "redpanda:9092"
    assert console["depends_on"]["redpanda"]["condition"] == "service_healthy"
    assert "8080:8080" in _ports(console)


def test_published_ports_do_not_clash(compose: dict[str, Any]) -> None:
    host_ports = [
        str(p).split(":")[0] for s in compose["services"].values() for p in s.get("ports", [])
    ]
    assert len(host_ports) == len(set(host_ports))
