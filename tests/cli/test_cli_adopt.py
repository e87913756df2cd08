"""``eventbus topics adopt``: propose a stream layout from a Redis stream and store it."""

from __future__ import annotations

import json

import pytest
import redis

import eventbus
from eventbus import StreamLayout
from tests.cli.clihelp import ok, ok_json, run

pytestmark = pytest.mark.timeout(120)


def legacy_entries(url: str, stream: str, count: int = 5) -> None:
    client = redis.Redis.from_url(url)
    for i in range(count):
        client.xadd(
            stream,
            {"type": "TaskCreated", "payload": json.dumps({"task_id": i}), "task_id": str(i)},
        )
    client.close()


def stored_layout(url: str, stream: str) -> StreamLayout | None:
    with eventbus.connect(url) as bus:
        return bus.describe_topic(stream).spec.layout


@pytest.mark.redis
def test_dry_run_proposes_and_changes_nothing(redis_url: str, name: str) -> None:
    legacy_entries(redis_url, name)
    table = ok(["topics", "adopt", name, "--dry-run", "--url", redis_url]).stdout
    assert "proposed layout" in table and "payload" in table and "dry run" in table
    shown = ok_json(["topics", "adopt", name, "--dry-run", "--url", redis_url])
    assert shown["layout"]["type"] == "type" and shown["layout"]["data"] == "payload"
    assert shown["layout"]["key"] == "task_id"
    assert shown["sampled"] == 5 and shown["applied"] is False and shown["misfits"] == {}
    assert stored_layout(redis_url, name) is None


@pytest.mark.redis
def test_yes_stores_the_layout_with_overrides(redis_url: str, name: str) -> None:
    legacy_entries(redis_url, name)
    client = redis.Redis.from_url(redis_url)
    client.xadd(name, {"type": "TaskCreated", "payload": "not json", "task_id": "9"})
    client.close()
    done = ok_json(
        ["topics", "adopt", name, "--key-field", "-", "--sample", "3", "--yes", "--url", redis_url]
    )
    assert done["applied"] is True and done["sampled"] == 3
    assert done["misfits"] == {"'payload' is not JSON": 1}
    assert stored_layout(redis_url, name) == StreamLayout(type="type", data="payload")
    again = ok(["topics", "adopt", name, "--key-field", "-", "--yes", "--url", redis_url])
    assert "already has this layout" in again.stdout
    with eventbus.connect(redis_url) as bus:
        info = bus.describe_topic(name)
        assert len(info.partitions) == 1 and info.partitions[0].count == 6


@pytest.mark.redis
def test_refuses_without_confirmation_and_explains_usage_errors(redis_url: str, name: str) -> None:
    legacy_entries(redis_url, name)
    refused = run(["topics", "adopt", name, "--url", redis_url])
    assert refused.exit_code == 1 and "pass --yes" in refused.stderr
    assert stored_layout(redis_url, name) is None
    clash = run(["topics", "adopt", name, "--type-field", "payload", "--url", redis_url])
    assert clash.exit_code == 2 and "both name the entry field 'payload'" in clash.stderr
    fmt = run(["topics", "adopt", name, "--time-format", "s", "--url", redis_url])
    assert fmt.exit_code == 2 and "iso or ms" in fmt.stderr
    missing = run(["topics", "adopt", name + "-none", "--url", redis_url])
    assert missing.exit_code == 1 and "does not exist" in missing.stderr
    for result in (refused, clash, fmt, missing):
        assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.redis
def test_an_empty_stream_needs_the_fields_named(redis_url: str, name: str) -> None:
    ok(["topics", "create", name, "--url", redis_url])
    empty = run(["topics", "adopt", name, "--yes", "--url", redis_url])
    assert empty.exit_code == 1 and "--type-field" in empty.stderr
    ok(["topics", "adopt", name, "--type-field", "kind", "--yes", "--url", redis_url])
    assert stored_layout(redis_url, name) == StreamLayout(type="kind")


def test_other_transports_are_a_usage_error(mem_url: str, name: str) -> None:
    result = run(["topics", "adopt", name, "--url", mem_url])
    assert result.exit_code == 2 and "Redis streams" in result.stderr
    kafka = run(["topics", "adopt", name, "--url", "kafka://127.0.0.1:1"])
    assert kafka.exit_code == 2 and "not kafka://" in kafka.stderr
