"""The test servers are real: clients nobody here wrote (kcat, redis-cli) talk to them."""

from __future__ import annotations

import shutil
import subprocess
from urllib.parse import urlsplit

import pytest

from eventbus.testing.fixtures import unique_name
from eventbus.testing.servers import wait_until

pytestmark = pytest.mark.timeout(180)


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (apt-get install {package})")
    return path


@pytest.mark.redis
def test_redis_cli_xadd_and_xrange(redis_url: str, topic_name: str) -> None:
    redis_cli = _tool("redis-cli", "redis-tools")
    parts = urlsplit(redis_url)
    base = [redis_cli, "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)]

    def cli(*args: str) -> str:
        return subprocess.run(
            [*base, *args], capture_output=True, text=True, check=True, timeout=30
        ).stdout

    ids = [
        cli("XADD", topic_name, "*", "n", str(i), "body", f"hello-{i}").strip() for i in range(3)
    ]
    assert all("-" in entry_id for entry_id in ids)
    assert cli("XLEN", topic_name).strip() == "3"
    rows = cli("XRANGE", topic_name, "-", "+").split()
    # raw output: id, then the field/value pairs, one per line, for each entry
    assert [row for row in rows if row in ids] == ids
    assert [row for row in rows if row.startswith("hello-")] == ["hello-0", "hello-1", "hello-2"]
    assert cli("INFO", "server").count("redis_version:") == 1


@pytest.mark.kafka
def test_kcat_produces_and_consumes_keyed_records(kafka_bootstrap: str, topic_name: str) -> None:
    kcat = _tool("kcat", "kcat")
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    futures = admin.create_topics([NewTopic(topic_name, num_partitions=3, replication_factor=1)])
    futures[topic_name].result(timeout=30)
    assert wait_until(lambda: topic_name in admin.list_topics(timeout=5).topics, timeout=30), (
        "topic did not appear in metadata"
    )

    records = [(f"key-{i}", f"value-{i}") for i in range(6)]
    produce = subprocess.run(
        [kcat, "-b", kafka_bootstrap, "-P", "-t", topic_name, "-K", ":",
         "-X", "partitioner=murmur2_random"],
        input="".join(f"{k}:{v}\n" for k, v in records),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert produce.returncode == 0, produce.stderr

    consume = subprocess.run(
        [kcat, "-b", kafka_bootstrap, "-C", "-t", topic_name, "-o", "beginning", "-e",
         "-c", str(len(records)), "-f", "%p|%k|%s\n", "-m", "30"],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert consume.returncode == 0, consume.stderr
    rows = [line.split("|") for line in consume.stdout.splitlines() if line]
    assert sorted((k, v) for _, k, v in rows) == sorted(records)
    # murmur2_random is Java's partitioner: same key, same partition, and within range
    by_key = {k: int(p) for p, k, _ in rows}
    assert all(0 <= p < 3 for p in by_key.values())


def test_topic_name_is_unique_and_safe(topic_name: str, request: pytest.FixtureRequest) -> None:
    assert topic_name.startswith("t-test_topic_name_is_unique_and_safe-")
    assert len(topic_name) <= 200
    assert all(c.isalnum() or c in "._-" for c in topic_name)
    other = unique_name(request.node.name)
    assert other != topic_name
    long_name = unique_name("x" * 500 + "[param/ä ü]")
    assert len(long_name) <= 200
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in long_name)
