"""Interop with a client nobody here wrote: kcat (librdkafka's CLI).

- kcat with ``-X partitioner=murmur2_random`` puts keyed records where
  ``eventbus.partition_for_key`` says;
- what eventbus publishes, kcat reads with key, headers and value intact;
- what kcat writes, an eventbus consumer group reads.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from eventbus.partitioning import partition_for_key
from eventbus.testing.fixtures import unavailable
from eventbus.transport import Outgoing
from tests.kafka.conftest import connected, fetch_until, make_topic, options, run, unique

pytestmark = pytest.mark.kafka


@pytest.fixture(autouse=True)
def _kcat() -> None:
    if shutil.which("kcat") is None:
        unavailable("kcat is not installed (apt-get install kcat)")


def kcat(bootstrap: str, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        ["kcat", "-b", bootstrap, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_kcat_murmur2_random_matches_partition_for_key(
    kafka_url: str, kafka_bootstrap: str
) -> None:
    keys = [f"user-{i}" for i in range(200)] + ["21", "foobar", "abc", "kafka", "é-ü"]

    async def main() -> None:
        async with connected(kafka_url) as t:
            topic = await make_topic(t, partitions=12)
            lines = "".join(f"{k}:{i}\n" for i, k in enumerate(keys))
            kcat(
                kafka_bootstrap,
                "-P",
                "-t",
                topic,
                "-K:",
                "-X",
                "partitioner=murmur2_random",
                stdin=lines,
            )
            seen = 0
            for p in range(12):
                for record in await t.read(topic, p, None):
                    assert record.key is not None
                    assert partition_for_key(record.key, 12) == p, record.key
                    seen += 1
            assert seen == len(keys)

    run(main())


def test_kcat_reads_what_eventbus_publishes(kafka_url: str, kafka_bootstrap: str) -> None:
    async def main() -> str:
        async with connected(kafka_url) as t:
            topic = await make_topic(t, partitions=1)
            records = [
                Outgoing(
                    f'{{"n": {i}}}'.encode(),
                    f"key-{i}".encode(),
                    {"eb-id": f"id-{i}".encode(), "eb-type": b"Created"},
                    timestamp_ms=1_700_000_000_000 + i,
                )
                for i in range(5)
            ]
            await t.publish(topic, records, timeout=30)
            return topic

    topic = run(main())
    out = kcat(kafka_bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-J", "-q")
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(rows) == 5
    for i, row in enumerate(rows):
        assert row["key"] == f"key-{i}"
        assert row["payload"] == f'{{"n": {i}}}'
        assert row["headers"] == ["eb-id", f"id-{i}", "eb-type", "Created"]
        assert row["ts"] == 1_700_000_000_000 + i
        assert row["partition"] == 0 and row["offset"] == i


def test_eventbus_group_consumes_what_kcat_wrote(kafka_url: str, kafka_bootstrap: str) -> None:
    async def main() -> None:
        async with connected(kafka_url) as t:
            topic = await make_topic(t, partitions=3)
            lines = "".join(f"k{i}|value-{i}\n" for i in range(30))
            kcat(
                kafka_bootstrap,
                "-P",
                "-t",
                topic,
                "-K|",
                "-H",
                "origin=kcat",
                "-X",
                "partitioner=murmur2_random",
                stdin=lines,
            )
            c = await t.open_consumer([topic], unique("g"), "c", options())
            got = await fetch_until(c, 30)
            await c.close()
            assert sorted(r.value.decode() for r in got) == sorted(f"value-{i}" for i in range(30))
            for r in got:
                assert r.headers == {"origin": b"kcat"}
                assert r.key == b"k" + r.value.split(b"-")[1]
                assert r.partition == partition_for_key(r.key, 3)

    run(main())
