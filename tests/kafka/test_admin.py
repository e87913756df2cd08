"""Topic administration on a real broker: create, describe, alter, grow, delete, list."""

from __future__ import annotations

from typing import Any

import pytest

from eventbus.errors import TopicExistsError, TopicNotFoundError, UnsupportedError
from eventbus.topics import TopicSpec
from eventbus.transport import Outgoing
from tests.kafka.conftest import _CREATED, connected, run, unique

pytestmark = pytest.mark.kafka


def test_create_describe_alter_grow_delete(kafka_url: str) -> None:
    async def main() -> None:
        async with connected(kafka_url) as t:
            name = unique("admin")
            _CREATED.append(name)
            spec = TopicSpec(
                name=name,
                partitions=2,
                retention_ms=2 * 86_400_000,
                retention_bytes=64 * 1024 * 1024,
                max_event_bytes=200_000,
                cleanup_policy="delete",
                config={"min.compaction.lag.ms": "1000"},
            )
            await t.create_topic(spec)
            with pytest.raises(TopicExistsError):
                await t.create_topic(spec)
            assert name in await t.list_topics()
            assert not [n for n in await t.list_topics() if n.startswith("__")]
            info = await t.describe_topic(name)
            assert info.spec == spec, "every field reads back as written"
            await t.publish(
                name, [Outgoing(b"a", partition=1), Outgoing(b"b", partition=1)], timeout=30
            )
            info = await t.describe_topic(name)
            assert [(p.partition, p.first, p.last, p.count) for p in info.partitions] == [
                (0, None, None, 0),
                (1, 0, 1, 2),
            ]
            changed = spec.model_copy(
                update={
                    "partitions": 4,
                    "retention_ms": 3_600_000,
                    "cleanup_policy": "compact",
                    "max_event_bytes": 300_000,
                    "config": {},
                }
            )
            await t.alter_topic(changed)
            after = (await t.describe_topic(name)).spec
            assert after.partitions == 4
            assert after.retention_ms == 3_600_000
            assert after.retention_bytes == 64 * 1024 * 1024, "not given: kept (incremental)"
            assert after.cleanup_policy == "compact"
            assert after.max_event_bytes == 300_000
            assert after.config == {"min.compaction.lag.ms": "1000"}, "incremental: kept"
            with pytest.raises(UnsupportedError, match="cannot shrink"):
                await t.alter_topic(changed.model_copy(update={"partitions": 2}))
            await t.delete_topic(name)
            assert name not in await t.list_topics()
            with pytest.raises(TopicNotFoundError):
                await t.delete_topic(name)
            with pytest.raises(TopicNotFoundError):
                await t.alter_topic(changed)

    run(main())


def test_topic_made_elsewhere_reads_back_with_broker_defaults(kafka_bootstrap: str) -> None:
    from confluent_kafka import admin as kafka_admin
    from confluent_kafka.admin import AdminClient

    new_topic: Any = kafka_admin.NewTopic  # type: ignore[attr-defined]

    name = unique("foreign")
    _CREATED.append(name)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([new_topic(name, num_partitions=3)])[name].result(30)

    async def main() -> None:
        async with connected(f"kafka://{kafka_bootstrap}") as t:
            info = await t.describe_topic(name)
            assert len(info.partitions) == 3
            assert info.spec.cleanup_policy == "delete"
            assert info.spec.config == {}
            # Kafka's default max.message.bytes (1048588) minus the framing allowance
            assert info.spec.max_event_bytes == 1_048_588 - 512

    run(main())
