"""``eventbus produce``, ``tail`` and ``replay`` on memory, Redis and Kafka."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import eventbus
from eventbus.transport import parse_offset
from tests.cli.clihelp import json_lines, ok, ok_json, run

EVENT_FIELDS = {"id", "key", "type", "source", "topic", "partition", "position", "offset",
                "time", "timestamp_ms", "headers", "data"}  # fmt: skip


def test_produce_one_and_many(bus_url: str, name: str) -> None:
    ok(["topics", "create", name, "-p", "3", "--url", bus_url])
    one = ok_json(["produce", name, "--key", "k1", "--type", "Made", "-H", "a=1", "-H", "b=x=y",
                   "--data", '{"n": 0}', "--url", bus_url])  # fmt: skip
    assert set(one) == {"partition", "position", "offset"}
    assert one["position"] == f"{one['partition']}:{one['offset']}"
    assert parse_offset(str(one["offset"])) == one["offset"]

    lines = '{"n": 1}\n\n[2, 3]\n"text"\n'
    many = json_lines(ok(["produce", name, "--key", "k1", "--url", bus_url, "-o", "json"],
                         input=lines).stdout)  # fmt: skip
    assert len(many) == 3
    assert {m["partition"] for m in many} == {one["partition"]}  # one key, one partition

    events = json_lines(ok(["tail", name, "--from-beginning", "-o", "json", "--url", bus_url])
                        .stdout)  # fmt: skip
    assert [e["data"] for e in events] == [{"n": 0}, {"n": 1}, [2, 3], "text"]
    first = events[0]
    assert set(first) == EVENT_FIELDS
    assert first["key"] == "k1" and first["type"] == "Made" and first["topic"] == name
    assert first["headers"] == {"a": "1", "b": "x=y"}
    assert first["position"] == one["position"]
    assert first["time"].startswith("20") and isinstance(first["timestamp_ms"], int)
    assert len({e["id"] for e in events}) == 4


def test_produce_invalid_line_stops_there(bus_url: str, name: str) -> None:
    ok(["topics", "create", name, "--url", bus_url])
    result = run(["produce", name, "--url", bus_url], input='{"n": 1}\n{"n": 2}\n{oops\n{"n": 4}\n')
    assert result.exit_code == 1
    assert "line 3" in result.stderr and "not valid JSON" in result.stderr
    assert len(result.stdout.split()) == 2  # two positions printed
    events = json_lines(ok(["tail", name, "--from-beginning", "-o", "json", "--url", bus_url])
                        .stdout)  # fmt: skip
    assert [e["data"] for e in events] == [{"n": 1}, {"n": 2}]


def test_produce_errors(mem_url: str, name: str) -> None:
    missing = run(["produce", name, "--data", "1", "--url", mem_url])
    assert missing.exit_code == 1 and name in missing.stderr
    from_stdin = run(["produce", name, "--url", mem_url], input="1\n")
    assert from_stdin.exit_code == 1 and name in from_stdin.stderr
    ok(["topics", "create", name, "--url", mem_url])
    bad_header = run(["produce", name, "-H", "novalue", "--data", "1", "--url", mem_url])
    assert bad_header.exit_code == 2 and "KEY=VALUE" in bad_header.stderr
    assert "--header origin=import" in bad_header.stderr and "--config" not in bad_header.stderr
    reserved = run(["produce", name, "-H", "eb-id=x", "--data", "1", "--url", mem_url])
    assert reserved.exit_code == 1 and "reserved" in reserved.stderr
    bad_data = run(["produce", name, "--data", "{", "--url", mem_url])
    assert bad_data.exit_code == 1 and "line 1" in bad_data.stderr


def test_tail_filters_and_starts(bus_url: str, name: str) -> None:
    ok(["topics", "create", name, "-p", "2", "--url", bus_url])
    for key, kind in (("a", "X"), ("b", "Y"), ("a", "Y"), ("c", "X")):
        ok(["produce", name, "--key", key, "--type", kind, "--data", f'"{key}{kind}"',
            "--url", bus_url])  # fmt: skip
    base = ["tail", name, "-o", "json", "--url", bus_url]
    assert [e["data"] for e in json_lines(ok([*base, "--from-beginning", "--key", "a"]).stdout)] \
        == ["aX", "aY"]  # fmt: skip
    by_type = json_lines(ok([*base, "--from-beginning", "--type", "X"]).stdout)
    assert sorted(e["data"] for e in by_type) == ["aX", "cX"]
    assert len(json_lines(ok([*base, "--from-beginning", "--limit", "3"]).stdout)) == 3
    assert len(json_lines(ok([*base, "--since", "10m"]).stdout)) == 4
    assert json_lines(ok([*base, "--since", "2999-01-01T00:00:00Z"]).stdout) == []
    all_events = json_lines(ok([*base, "--from-beginning"]).stdout)
    first_a = next(e for e in all_events if e["key"] == "a")
    from_pos = json_lines(ok([*base, "--from", first_a["position"]]).stdout)
    assert {e["partition"] for e in from_pos} == {first_a["partition"]}
    assert from_pos[0]["id"] == first_a["id"]
    human = ok(["tail", name, "--from-beginning", "--url", bus_url]).stdout
    assert "key=a" in human and "type=X" in human and '"aX"' in human


def test_tail_bad_options(mem_url: str, name: str) -> None:
    ok(["topics", "create", name, "--url", mem_url])
    both = run(["tail", name, "--from-beginning", "--since", "1m", "--url", mem_url])
    assert both.exit_code == 2 and "exclude each other" in both.stderr
    since = run(["tail", name, "--since", "yesterday", "--url", mem_url])
    assert since.exit_code == 2 and "duration" in since.stderr
    start = run(["tail", name, "--from", "x:y", "--url", mem_url])
    assert start.exit_code == 2 and "--from" in start.stderr
    unknown = run(["tail", name + "x", "--from-beginning", "--url", mem_url])
    assert unknown.exit_code == 1 and name + "x" in unknown.stderr


def test_tail_follows_new_events(bus_url: str, name: str) -> None:
    """Without a start, tail shows only new events and keeps waiting (here: until --limit)."""
    ok(["topics", "create", name, "--url", bus_url])
    ok(["produce", name, "--data", '"old"', "--url", bus_url])
    box: dict[str, Any] = {}
    worker = threading.Thread(
        target=lambda: box.setdefault(
            "result", run(["tail", name, "--limit", "1", "-o", "json", "--url", bus_url])
        ),
        daemon=True,
    )
    worker.start()
    with eventbus.connect(bus_url) as bus:
        deadline = time.monotonic() + 30
        while worker.is_alive() and time.monotonic() < deadline:
            bus.publish(name, "new")  # until the tail has started and seen one
            worker.join(timeout=0.2)
    worker.join(timeout=10)
    assert not worker.is_alive(), "tail did not stop after --limit 1"
    result = box["result"]
    assert result.exit_code == 0, result.stderr
    assert [e["data"] for e in json_lines(result.stdout)] == ["new"]


def test_replay_copies_a_range(bus_url: str, name: str) -> None:
    src, dst = name, f"{name}-copy"
    ok(["topics", "create", src, "-p", "3", "--url", bus_url])
    lines = "".join(f'{{"i": {i}}}\n' for i in range(30))
    for key in ("k1", "k2", "k3"):
        ok(["produce", src, "--key", key, "--url", bus_url], input=lines)
    missing = run(["replay", src, "--into", dst, "--url", bus_url])
    assert missing.exit_code == 1 and "--create" in missing.stderr
    copied = ok_json(["replay", src, "--into", dst, "--create", "--url", bus_url])
    assert copied["copied"] == 90 and copied["from"] == src and copied["into"] == dst
    _same_events(bus_url, src, bus_url, dst)
    info = ok_json(["topics", "describe", dst, "--url", bus_url])
    assert len(info["partitions"]) == 3


def _same_events(src_url: str, src: str, dst_url: str, dst: str) -> None:
    def read(url: str, topic: str) -> list[dict[str, Any]]:
        return json_lines(ok(["tail", topic, "--from-beginning", "-o", "json", "--url", url])
                          .stdout)  # fmt: skip

    a, b = read(src_url, src), read(dst_url, dst)
    assert len(a) == len(b)
    fields = ("id", "key", "type", "headers", "data", "time")
    assert sorted(tuple(str(e[f]) for f in fields) for e in a) == sorted(
        tuple(str(e[f]) for f in fields) for e in b
    )
    for key in {e["key"] for e in a}:  # per-key order is kept
        assert [e["id"] for e in a if e["key"] == key] == [e["id"] for e in b if e["key"] == key]


def test_replay_range_options(mem_url: str, name: str) -> None:
    ok(["topics", "create", name, "--url", mem_url])
    positions = json_lines(ok(["produce", name, "--url", mem_url, "-o", "json"],
                              input="".join(f"{i}\n" for i in range(10))).stdout)  # fmt: skip
    ok(["topics", "create", name + "-b", "--url", mem_url])
    part = ok_json(["replay", name, "--into", name + "-b", "--from", positions[2]["position"],
                    "--to", positions[5]["position"], "--url", mem_url])  # fmt: skip
    assert part["copied"] == 4
    data = [
        e["data"]
        for e in json_lines(
            ok(["tail", name + "-b", "--from-beginning", "-o", "json", "--url", mem_url]).stdout
        )
    ]
    assert data == [2, 3, 4, 5]
    none = ok_json(["replay", name, "--into", name + "-b", "--since", "2999-01-01T00:00:00Z",
                    "--url", mem_url])  # fmt: skip
    assert none["copied"] == 0
    recent = ok_json(["replay", name, "--into", name + "-b", "--since", "1h", "--until",
                      "2999-01-01T00:00:00Z", "--url", mem_url])  # fmt: skip
    assert recent["copied"] == 10
    same = run(["replay", name, "--into", name, "--url", mem_url])
    assert same.exit_code == 1 and "source topic" in same.stderr
    both = run(["replay", name, "--into", "x", "--since", "1m", "--from", "earliest",
                "--url", mem_url])  # fmt: skip
    assert both.exit_code == 2 and "exclude each other" in both.stderr


@pytest.mark.redis
@pytest.mark.kafka
def test_replay_redis_to_kafka(redis_url: str, kafka_url: str, name: str) -> None:
    ok(["topics", "create", name, "-p", "2", "--url", redis_url])
    for key in ("a", "b", "c"):
        ok(["produce", name, "--key", key, "-H", "origin=redis", "--url", redis_url],
           input="".join(f'{{"{key}": {i}}}\n' for i in range(20)))  # fmt: skip
    copied = ok_json(["replay", name, "--into", name, "--into-url", kafka_url, "--create",
                      "--url", redis_url])  # fmt: skip
    assert copied["copied"] == 60 and copied["into_url"] == kafka_url
    _same_events(redis_url, name, kafka_url, name)
    # keys land on the same partitions on both sides (one partitioner for both transports)
    src = json_lines(ok(["tail", name, "--from-beginning", "-o", "json", "--url", redis_url])
                     .stdout)  # fmt: skip
    dst = json_lines(ok(["tail", name, "--from-beginning", "-o", "json", "--url", kafka_url])
                     .stdout)  # fmt: skip
    assert {e["key"]: e["partition"] for e in src} == {e["key"]: e["partition"] for e in dst}


def test_replay_memory_to_memory_across_brokers(mem_url: str, name: str) -> None:
    other = mem_url + "-other"
    ok(["topics", "create", name, "--url", mem_url])
    ok(["produce", name, "--key", "k", "--url", mem_url], input="1\n2\n3\n")
    ok(["replay", name, "--into", name, "--into-url", other, "--create", "--url", mem_url])
    _same_events(mem_url, name, other, name)
