"""``eventbus topics list|describe|create|delete`` on memory, Redis and Kafka."""

from __future__ import annotations

import pytest

import eventbus.cli._common as common
from tests.cli.clihelp import ok, ok_json, run


def test_create_list_describe(bus_url: str, name: str) -> None:
    created = ok_json(
        ["topics", "create", name, "--partitions", "3", "--retention", "7d", "--url", bus_url]
    )
    assert created["created"] == name
    assert created["spec"]["partitions"] == 3
    assert created["spec"]["retention_ms"] == 7 * 86_400_000

    listed = {t["name"]: t for t in ok_json(["topics", "list", "--url", bus_url])}
    assert listed[name]["partitions"] == 3
    assert listed[name]["count"] == 0
    assert listed[name]["retention_ms"] == 7 * 86_400_000
    assert listed[name]["cleanup_policy"] == "delete"

    for key in ("a", "b", "c", "a"):
        ok(["produce", name, "--key", key, "--data", '{"k": 1}', "--url", bus_url])
    info = ok_json(["topics", "describe", name, "--url", bus_url])
    assert info["name"] == name
    assert info["count"] == 4
    assert [p["partition"] for p in info["partitions"]] == [0, 1, 2]
    assert sum(p["count"] for p in info["partitions"]) == 4
    for p in info["partitions"]:
        if p["count"]:
            assert p["first_position"] == f"{p['partition']}:{p['first']}"
            assert p["last_position"] == f"{p['partition']}:{p['last']}"
        else:
            assert p["first"] is None and p["last"] is None
    assert info["spec"]["retention_ms"] == 7 * 86_400_000
    assert info["spec"]["partitions"] == 3

    table = ok(["topics", "describe", name, "--url", bus_url]).stdout
    assert f"topic {name}" in table and "retention" in table and "7d" in table


def test_create_with_config_on_memory(mem_url: str, name: str) -> None:
    created = ok_json(
        ["topics", "create", name, "-p", "2", "--config", "segment.ms=3600000",
         "--retention-bytes", "1GiB", "--max-event-bytes", "512KiB", "--url", mem_url]
    )  # fmt: skip
    spec = created["spec"]
    assert spec["config"] == {"segment.ms": "3600000"}
    assert spec["retention_bytes"] == 1 << 30
    assert spec["max_event_bytes"] == 512 * 1024
    second = ok(["topics", "create", name + "x", "-p", "2", "--url", mem_url])
    assert "2 partitions" in second.stdout


def test_create_existing_topic_fails(bus_url: str, name: str) -> None:
    ok(["topics", "create", name, "--url", bus_url])
    result = run(["topics", "create", name, "--url", bus_url])
    assert result.exit_code == 1
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert "exist" in error
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "nokeyvalue"], "KEY=VALUE"),
        (["--retention", "7x"], "duration"),
        (["--cleanup-policy", "shred"], "cleanup"),
        (["--retention-bytes", "lots"], "size"),
    ],
)
def test_create_bad_arguments(mem_url: str, name: str, args: list[str], message: str) -> None:
    result = run(["topics", "create", name, *args, "--url", mem_url])
    assert result.exit_code == 2, result.stdout  # a usage error
    assert message in result.stderr
    assert run(["topics", "describe", name, "--url", mem_url]).exit_code == 1  # not created


def test_describe_unknown_topic(bus_url: str, name: str) -> None:
    result = run(["topics", "describe", name, "--url", bus_url])
    assert result.exit_code == 1
    assert name in result.stderr and "error:" in result.stderr
    assert result.stdout == ""


def test_delete_needs_yes_without_a_terminal(mem_url: str, name: str) -> None:
    ok(["topics", "create", name, "--url", mem_url])
    refused = run(["topics", "delete", name, "--url", mem_url])
    assert refused.exit_code == 1
    assert "--yes" in refused.stderr
    ok(["topics", "describe", name, "--url", mem_url])  # still there
    deleted = ok_json(["topics", "delete", name, "--yes", "--url", mem_url])
    assert deleted == {"deleted": name, "count": 0}
    assert run(["topics", "describe", name, "--url", mem_url]).exit_code == 1


def test_delete_asks_on_a_terminal(
    mem_url: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common, "stdin_is_tty", lambda: True)
    ok(["topics", "create", name, "--url", mem_url])
    declined = run(["topics", "delete", name, "--url", mem_url], input="n\n")
    assert declined.exit_code == 1 and "aborted" in declined.stderr
    ok(["topics", "describe", name, "--url", mem_url])
    ok(["topics", "delete", name, "--url", mem_url], input="y\n")
    assert run(["topics", "describe", name, "--url", mem_url]).exit_code == 1


def test_delete_on_servers(bus_url: str, name: str) -> None:
    ok(["topics", "create", name, "-p", "2", "--url", bus_url])
    ok(["topics", "delete", name, "--yes", "--url", bus_url])
    names = [t["name"] for t in ok_json(["topics", "list", "--url", bus_url])]
    assert name not in names
    missing = run(["topics", "delete", name, "--yes", "--url", bus_url])
    assert missing.exit_code == 1 and name in missing.stderr


def test_env_url_is_used(mem_url: str, name: str) -> None:
    result = run(["topics", "create", name], EVENTBUS_URL=mem_url)
    assert result.exit_code == 0, result.stderr
    names = [t["name"] for t in ok_json(["topics", "list", "--url", mem_url])]
    assert name in names
