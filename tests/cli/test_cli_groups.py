"""``eventbus groups list|describe|reset`` on memory, Redis and Kafka."""

from __future__ import annotations

import time

import eventbus
from tests.cli.clihelp import ok, ok_json, run


def _consume(url: str, topic: str, group: str, n: int) -> None:
    """Join ``group``, ack ``n`` events, leave (committing)."""
    with eventbus.connect(url) as bus, bus.subscribe(topic, group=group) as sub:
        acked = 0
        deadline = time.monotonic() + 30
        while acked < n and time.monotonic() < deadline:
            for delivery in sub.fetch(max_records=n - acked, timeout=1.0):
                delivery.ack()
                acked += 1
        assert acked == n


def _setup(url: str, topic: str, group: str) -> None:
    ok(["topics", "create", topic, "-p", "2", "--url", url])
    lines = "".join(f'{{"n": {i}}}\n' for i in range(6))
    ok(["produce", topic, "--url", url], input=lines)
    _consume(url, topic, group, 4)


def test_list_and_describe(bus_url: str, name: str) -> None:
    topic, group = name, f"{name}-g"
    _setup(bus_url, topic, group)
    listed = {g["group"]: g for g in ok_json(["groups", "list", "--url", bus_url])}
    assert listed[group]["lag"] == 2
    assert listed[group]["backlog"] == 2
    assert listed[group]["members"] == 0
    assert listed[group]["topics"] == [topic]

    info = ok_json(["groups", "describe", group, "--url", bus_url])
    assert info["group"] == group
    assert info["lag"] == 2
    assert info["pending"] == 0
    assert info["backlog"] == 2
    assert info["members"] == []
    parts = [p for p in info["partitions"] if p["topic"] == topic]
    assert sorted(p["partition"] for p in parts) == [0, 1]
    assert sum(p["lag"] for p in parts) == 2
    assert sum(p["backlog"] for p in parts) == 2
    assert all(p["committed"] is not None for p in parts)
    table = ok(["groups", "describe", group, "--url", bus_url]).stdout
    assert f"group {group}" in table and "lag 2" in table and "backlog 2" in table
    assert "backlog" in ok(["groups", "list", "--url", bus_url]).stdout


def test_describe_shows_live_members(mem_url: str, name: str) -> None:
    ok(["topics", "create", name, "--url", mem_url])
    ok(["produce", name, "--data", "1", "--url", mem_url])
    with eventbus.connect(mem_url) as bus, bus.subscribe(name, group="live", consumer="m1") as sub:
        assert len(sub.fetch(timeout=5)) == 1  # delivered, not acked: pending
        info = ok_json(["groups", "describe", "live", "--url", mem_url])
        assert [m["name"] for m in info["members"]] == ["m1"]
        assert info["members"][0]["assignments"] == [f"{name}:0"]
        assert info["members"][0]["pending"] == 1
        assert info["pending"] == 1
        assert info["backlog"] == 1  # delivered, not acked: not finished
        assert info["partitions"][0]["backlog"] == 1


def test_unknown_group(bus_url: str, name: str) -> None:
    result = run(["groups", "describe", name, "--url", bus_url])
    assert result.exit_code == 1 and name in result.stderr


def test_reset_dry_run_then_real(bus_url: str, name: str) -> None:
    topic, group = name, f"{name}-g"
    _setup(bus_url, topic, group)
    before = ok_json(["groups", "describe", group, "--url", bus_url])

    dry = ok_json(["groups", "reset", group, "--topic", topic, "--to", "earliest", "--dry-run",
                   "--url", bus_url])  # fmt: skip
    assert dry["dry_run"] is True and dry["group"] == group and dry["topic"] == topic
    described = ok_json(["topics", "describe", topic, "--url", bus_url])
    firsts = {p["partition"]: p["first_position"] for p in described["partitions"]}
    assert {r["partition"]: r["next"] for r in dry["partitions"]} == firsts
    assert ok_json(["groups", "describe", group, "--url", bus_url])["lag"] == before["lag"]

    latest = ok_json(["groups", "reset", group, "--topic", topic, "--to", "latest", "--dry-run",
                      "--url", bus_url])  # fmt: skip
    assert all(r["next"] is None for r in latest["partitions"])

    real = ok_json(["groups", "reset", group, "--topic", topic, "--to", "earliest", "--yes",
                    "--url", bus_url])  # fmt: skip
    assert real["dry_run"] is False
    assert sorted(r["partition"] for r in real["partitions"]) == [0, 1]
    committed = {p["partition"]: p["committed"] for p in before["partitions"]}
    assert {r["partition"]: r["before"] for r in real["partitions"]} == committed
    after = ok_json(["groups", "describe", group, "--url", bus_url])
    assert (after["lag"], after["backlog"]) == (6, 6)

    ok(["groups", "reset", group, "--topic", topic, "--to", "latest", "--yes", "--url", bus_url])
    assert ok_json(["groups", "describe", group, "--url", bus_url])["lag"] == 0
    table = ok(["groups", "reset", group, "--topic", topic, "--to", "earliest", "--dry-run",
                "--url", bus_url]).stdout  # fmt: skip
    assert "DRY RUN" in table and "nothing was changed" in table


def test_reset_to_position_and_time(mem_url: str, name: str) -> None:
    topic, group = name, f"{name}-g"
    _setup(mem_url, topic, group)
    info = ok_json(["topics", "describe", topic, "--url", mem_url])
    p0 = info["partitions"][0]
    target = f"0:{p0['last']}"
    dry = ok_json(["groups", "reset", group, "--topic", topic, "--to", target, "--dry-run",
                   "--url", mem_url])  # fmt: skip
    assert dry["partitions"] == [
        {"partition": 0, "before": dry["partitions"][0]["before"], "after": None, "next": target}
    ]
    real = ok_json(
        ["groups", "reset", group, "--topic", topic, "--to", target, "--yes", "--url", mem_url]
    )
    assert [r["partition"] for r in real["partitions"]] == [0]

    at = "2000-01-01T00:00:00Z"
    by_time = ok_json(["groups", "reset", group, "--topic", topic, "--to", at, "--dry-run",
                       "--url", mem_url])  # fmt: skip
    firsts = {p["partition"]: p["first_position"] for p in info["partitions"]}
    assert {r["partition"]: r["next"] for r in by_time["partitions"]} == firsts


def test_reset_bad_target(mem_url: str, name: str) -> None:
    ok(["topics", "create", name, "--url", mem_url])
    bad = run(["groups", "reset", "g", "--topic", name, "--to", "yesterday", "--url", mem_url])
    assert bad.exit_code == 2 and "earliest, latest" in bad.stderr
    missing = run(["groups", "reset", "g", "--topic", name + "x", "--to", "earliest",
                   "--url", mem_url])  # fmt: skip
    assert missing.exit_code == 1 and name + "x" in missing.stderr
    no_part = run(["groups", "reset", "g", "--topic", name, "--to", "5:0", "--dry-run",
                   "--url", mem_url])  # fmt: skip
    assert no_part.exit_code == 1 and "partition 5" in no_part.stderr
