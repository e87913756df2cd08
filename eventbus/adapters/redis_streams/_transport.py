"""RedisTransport: the transport the registry builds for ``redis://``, ``rediss://`` and
``redis+sentinel://``.

It stacks, one class over the other: ``_connection.py`` (client, scripts, the error edge),
``_admin.py`` (topic metadata and admin), ``_publish.py`` (the publish path); and adds replay,
the conditional append, and the group calls (``_groups.py``) and member (``_consumer.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from eventbus.adapters.redis_streams import _layout as layout
from eventbus.adapters.redis_streams._admin import TopicMeta
from eventbus.adapters.redis_streams._consumer import RedisConsumer
from eventbus.adapters.redis_streams._groups import (
    describe_group,
    describe_groups,
    group_names,
    reset_group,
    trim_finished,
)
from eventbus.adapters.redis_streams._publish import Publisher
from eventbus.adapters.redis_streams._settings import RedisSettings
from eventbus.transport import (
    Capabilities,
    ConsumerOptions,
    GroupInfo,
    Offset,
    Outgoing,
    Position,
    Record,
    ResetTarget,
    TransportConsumer,
)

__all__ = ["CAPABILITIES", "RedisTransport", "TopicMeta"]

CAPABILITIES = Capabilities(
    transport="redis",
    native_delivery_count=True,
    redelivery_on_timeout=True,
    timestamp_replay=True,
    retention_by_time=True,
    retention_by_size=False,
    compaction=False,
    transactions=False,
    reset_active_group=True,
    auto_create_topics=False,
    atomic_dead_letter=True,
    partitions_can_grow=True,
    budget_fetch=True,  # RedisConsumer.fetch_budget (batching.py)
    stream_layout=True,  # layout_codec.py
)


class RedisTransport(Publisher):
    """The Redis Streams transport. Build with :meth:`from_url`, then ``await connect()``."""

    capabilities: Capabilities

    def __init__(self, settings: RedisSettings) -> None:
        super().__init__(settings)
        self.capabilities = dataclasses.replace(
            CAPABILITIES,
            auto_create_topics=settings.auto_create,
            # Cluster: the copy and the ack are atomic only when both topics share a slot.
            atomic_dead_letter=not settings.cluster,
        )

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any] | None = None) -> RedisTransport:
        """Parse the URL and options (see :class:`RedisSettings`); does not connect."""
        return cls(RedisSettings.from_url(url, options))

    # replay ----------------------------------------------------------------------------------
    async def read(
        self,
        topic: str,
        partition: int,
        start: Offset | datetime | None,
        *,
        inclusive: bool = True,
        limit: int = 1000,
    ) -> list[Record]:
        """XRANGE one partition from the beginning, an id (``(id`` when exclusive) or the
        first id at or after a time."""
        # cached metadata (a page costs one round trip, not two); a partition beyond the cached
        # count may have been added since, so that case asks again
        meta = await self.meta(topic)
        if not 0 <= partition < meta.partitions:
            meta = await self.meta(topic, fresh=True)
        self.check_partition(meta, partition)
        if start is None:
            low = "-"
        elif isinstance(start, datetime):
            low = layout.time_id(start)
        else:
            low = layout.id_of(start, topic)
            if not inclusive:
                low = "(" + low
        if limit <= 0:
            return []
        with self.edge(f"read {topic!r}"):
            entries = await self.client.xrange(
                layout.stream_key(topic, partition), low, "+", count=limit
            )
        decode = self.decoder(topic)
        return [decode(topic, partition, i, f, 1) for i, f in entries]

    async def sample_entries(
        self, topic: str, count: int
    ) -> list[tuple[Offset, dict[bytes, bytes]]]:
        """The newest ``count`` entries of partition 0, oldest first (see EntrySample)."""
        await self.meta(topic, fresh=True)  # TopicNotFoundError for a missing stream
        with self.edge(f"sample {topic!r}"):
            entries = await self.client.xrevrange(topic, "+", "-", count=max(1, count))
        return [(layout.text(i), dict(f)) for i, f in reversed(entries)]

    # groups ----------------------------------------------------------------------------------
    async def open_consumer(
        self, topics: Sequence[str], group: str, consumer: str, options: ConsumerOptions
    ) -> TransportConsumer:
        return await RedisConsumer.open(self, topics, group, consumer, options)

    async def list_groups(self) -> list[str]:
        return await group_names(self)

    async def topic_groups(self, topic: str) -> list[str]:
        """Groups on any partition stream of ``topic`` (see TopicGroups)."""
        self._check()
        return sorted(await self.groups_of(await self.meta(topic, fresh=True)))

    async def trim_finished(self, topic: str, group: str, partitions: Sequence[int]) -> int:
        """Trim what ``group`` has finished (see TrimsFinished)."""
        self._check()
        return await trim_finished(self, topic, group, partitions)

    async def append_if_last(
        self,
        topic: str,
        partition: int,
        last: Offset | None,
        record: Outgoing,
        *,
        timeout: float = 10.0,
    ) -> Position | None:
        """Compare-and-set append, one Lua script (see ConditionalAppend)."""
        self._check()
        meta = await self.meta(topic)
        self.check_sizes(meta, [record])
        key = layout.stream_key(topic, partition)
        expected = "" if last is None else layout.id_of(last, topic)
        fields = self.encoder(meta)(record)

        async def run() -> Any:
            with self.edge(f"append to {topic!r}"):
                return await self.script("APPEND_IF_LAST")(keys=[key], args=[expected, *fields])

        try:
            reply = await self.with_timeout(run(), timeout, f"append to {topic!r}")
        except Exception as exc:
            self.raise_if_missing(topic, exc)
            raise
        return None if reply is None else Position(partition, layout.text(reply))

    async def describe_group(self, group: str) -> GroupInfo:
        return await describe_group(self, group)

    async def describe_groups(self) -> list[GroupInfo]:
        """Every group, described in one pass over the topics (see DescribesGroups)."""
        self._check()
        return await describe_groups(self)

    async def reset_group(
        self, group: str, topic: str, to: ResetTarget
    ) -> dict[int, tuple[Offset | None, Offset | None]]:
        return await reset_group(self, group, topic, to)
