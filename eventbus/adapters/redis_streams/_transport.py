"""RedisTransport: connection, publish, replay and topic admin. Groups live in groups.py and
the group member in consumer.py."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError

from eventbus.adapters.redis_streams import _layout as layout
from eventbus.adapters.redis_streams import _scripts as scripts
from eventbus.adapters.redis_streams._errors import edge
from eventbus.adapters.redis_streams._layout_codec import codec_for
from eventbus.adapters.redis_streams._settings import RedisSettings
from eventbus.errors import (
    ClosedError,
    ConfigurationError,
    EventTooLargeError,
    InvalidPositionError,
    OperationTimeoutError,
    TopicExistsError,
    TopicNotFoundError,
    UnsupportedError,
)
from eventbus.partitioning import partition_for_key
from eventbus.topics import StreamLayout, TopicSpec
from eventbus.transport import (
    Capabilities,
    ConsumerOptions,
    GroupInfo,
    Offset,
    Outgoing,
    PartitionInfo,
    Position,
    Record,
    ResetTarget,
    TopicInfo,
    TransportConsumer,
    record_size,
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

PUBLISH_CHUNK = 1000
"""Records per round trip of a publish (the deadline is checked between chunks)."""
PUBLISH_SLICE = 250
"""Records per publish script call: each call is all-or-nothing and blocks the server briefly."""

# Names usable as topics: TopicSpec names, plus adopted streams with other characters (such as
# ':'), but never braces (they would break the hash tag) nor the internal prefix.
_NAME = re.compile(r"^(?!eb:)[^{}\s]{1,1000}$")
T = TypeVar("T")

# The client is ``redis.asyncio.Redis`` or ``RedisCluster``; they share the command API but
# their typed overloads differ, so it is held as Any behind this alias.
Client = Any


@dataclass(frozen=True, slots=True)
class TopicMeta:
    """A topic's metadata as stored (or implied, for an adopted plain stream)."""

    name: str
    partitions: int = 1
    retention_ms: int | None = None
    max_event_bytes: int = 1_048_576
    cleanup_policy: str = "delete"
    config: Mapping[str, str] = field(default_factory=dict)
    created_ms: int | None = None
    adopted: bool = False
    """A plain stream without metadata, used as a one-partition topic."""
    layout: StreamLayout | None = None
    """How entries map to events on a stream shared with other clients (layout_codec.py)."""

    def streams(self) -> list[str]:
        return [layout.stream_key(self.name, p) for p in range(self.partitions)]

    def spec(self) -> TopicSpec:
        # model_construct: an adopted stream's name may hold characters TopicSpec rejects
        return TopicSpec.model_construct(
            name=self.name,
            partitions=self.partitions,
            retention_ms=self.retention_ms,
            max_event_bytes=self.max_event_bytes,
            cleanup_policy="compact" if self.cleanup_policy == "compact" else "delete",
            config=dict(self.config),
            layout=self.layout,
        )

    @classmethod
    def parse(cls, name: str, raw: Mapping[bytes, bytes]) -> TopicMeta:
        fields = {layout.text(k): layout.text(v) for k, v in raw.items()}
        retention = fields.get("retention_ms", "")
        created = fields.get("created_ms", "")
        return cls(
            name=name,
            partitions=int(fields.get("partitions", "1")),
            retention_ms=int(retention) if retention else None,
            max_event_bytes=int(fields.get("max_event_bytes", "1048576")),
            cleanup_policy=fields.get("cleanup_policy", "delete"),
            config=json.loads(fields.get("config", "{}") or "{}"),
            created_ms=int(created) if created else None,
            layout=_parse_layout(name, fields.get("layout", "")),
        )

    @classmethod
    def from_spec(cls, spec: TopicSpec, created_ms: int | None) -> TopicMeta:
        return cls(
            name=spec.name,
            partitions=spec.partitions,
            retention_ms=spec.retention_ms,
            max_event_bytes=spec.max_event_bytes,
            cleanup_policy=spec.cleanup_policy,
            config=dict(spec.config),
            created_ms=created_ms,
            layout=spec.layout,
        )

    def fields(self) -> list[str]:
        """Flat field/value list for HSET."""
        return [
            "partitions", str(self.partitions),
            "retention_ms", "" if self.retention_ms is None else str(self.retention_ms),
            "max_event_bytes", str(self.max_event_bytes),
            "cleanup_policy", self.cleanup_policy,
            "config", json.dumps(dict(self.config), sort_keys=True),
            "created_ms", "" if self.created_ms is None else str(self.created_ms),
            "format", "1",
            "layout", "" if self.layout is None else self.layout.model_dump_json(),
        ]  # fmt: skip

    def minid(self) -> str:
        """XADD MINID threshold for time retention ('' when there is none)."""
        if self.retention_ms is None:
            return ""
        return f"{max(0, int(time.time() * 1000) - self.retention_ms)}-0"


def _parse_layout(topic: str, stored: str) -> StreamLayout | None:
    if not stored:
        return None
    try:
        return StreamLayout.model_validate_json(stored)
    except ValueError as exc:
        raise ConfigurationError(
            f"topic {topic!r} has an unreadable stream layout in {layout.meta_key(topic)!r} "
            f"({exc}); set it again with `eventbus topics adopt {topic}`"
        ) from None


def _check_spec(spec: TopicSpec) -> None:
    if spec.retention_bytes is not None:
        raise UnsupportedError(
            f"topic {spec.name!r}: Redis cannot trim a stream by bytes "
            "(capability retention_by_size is false); use retention_ms instead"
        )
    if spec.cleanup_policy == "compact":
        raise UnsupportedError(
            f"topic {spec.name!r}: Redis Streams have no compaction (capability compaction is "
            "false); use cleanup_policy='delete'"
        )


class RedisTransport:
    """The Redis Streams transport. Build with :meth:`from_url`, then ``await connect()``."""

    capabilities: Capabilities

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self.capabilities = dataclasses.replace(
            CAPABILITIES,
            auto_create_topics=settings.auto_create,
            # Cluster: the copy and the ack are atomic only when both topics share a slot.
            atomic_dead_letter=not settings.cluster,
        )
        self._client: Client = None
        self._meta_cache: dict[str, tuple[TopicMeta, float]] = {}
        self._layouts: dict[str, StreamLayout] = {}
        """Topics with a layout, as last loaded: readers decode by it without a lookup."""
        self._round_robin: dict[str, itertools.count[int]] = {}
        self._closed = False
        self._scripts: dict[str, Any] = {}
        self._shas: dict[str, bytes] = {}

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any] | None = None) -> RedisTransport:
        """Parse the URL and options (see :class:`RedisSettings`); does not connect."""
        return cls(RedisSettings.from_url(url, options))

    # connection ------------------------------------------------------------------------------
    @property
    def client(self) -> Client:
        if self._closed:
            raise ClosedError("this Redis transport is closed; open a new bus")
        if self._client is None:
            kwargs = self.settings.client_kwargs()
            self._client = RedisCluster(**kwargs) if self.settings.cluster else Redis(**kwargs)
        return self._client

    def script(self, name: str) -> Any:
        """A registered Lua script (EVALSHA, falling back to EVAL on NOSCRIPT)."""
        found = self._scripts.get(name)
        if found is None:
            found = self._scripts[name] = self.client.register_script(getattr(scripts, name))
        return found

    def edge(self, action: str) -> Any:
        return edge(self.settings.url, action)

    async def connect(self) -> None:
        """PING the server (checks reachability and credentials)."""
        with self.edge("connect"):
            await self.client.ping()

    async def close(self) -> None:
        if self._closed:
            return
        client, self._client = self._client, None
        self._closed = True
        if client is not None:
            with self.edge("close"):
                await client.aclose()

    def _check(self) -> None:
        if self._closed:
            raise ClosedError("this Redis transport is closed; open a new bus")

    async def pipeline(self, build: Callable[[Any], object], action: str) -> list[Any]:
        """Run commands added by ``build`` in one round trip (no MULTI: Cluster-safe)."""
        with self.edge(action):
            pipe = self.client.pipeline(transaction=False)
            build(pipe)
            result: list[Any] = await pipe.execute()
            return result

    # metadata --------------------------------------------------------------------------------
    def forget(self, topic: str) -> None:
        """Drop cached metadata (after NOGROUP / missing stream errors or admin changes)."""
        self._meta_cache.pop(topic, None)

    async def meta(self, topic: str, *, fresh: bool = False, create: bool = False) -> TopicMeta:
        """The topic's metadata (cached for ``metadata_ttl``); raises TopicNotFoundError."""
        self._check()
        cached = self._meta_cache.get(topic)
        if cached is not None and not fresh and cached[1] > time.monotonic():
            return cached[0]
        found = await self._load_meta(topic)
        if found is None and create:
            with contextlib.suppress(TopicExistsError):  # a concurrent publisher made it
                await self.create_topic(TopicSpec(name=topic))
            found = await self._load_meta(topic)
        if found is None:
            raise TopicNotFoundError(
                f"topic {topic!r} does not exist on {self.settings.url}: create it first "
                "(create_topic / eventbus topics create), or add ?auto_create=true to the URL"
            )
        self._meta_cache[topic] = (found, time.monotonic() + self.settings.metadata_ttl)
        if found.layout is not None:
            self._layouts[topic] = found.layout
        elif self._layouts:
            self._layouts.pop(topic, None)
        return found

    def decoder(self, topic: str) -> Any:
        """The entry decoder of ``topic``: ``layout.decode_entry``, or its layout's (as last
        loaded: consumers load the topic when they join, publishers every metadata_ttl)."""
        found = self._layouts.get(topic)
        return layout.decode_entry if found is None else codec_for(found).decode

    def encoder(self, meta: TopicMeta) -> Callable[[Outgoing], list[bytes]]:
        """Entry fields of a record for ``meta``'s topic (its layout's when it has one)."""
        if meta.layout is None:
            return layout.encode_fields
        codec, name = codec_for(meta.layout), meta.name
        return lambda record: codec.encode(record, name)

    async def _load_meta(self, topic: str) -> TopicMeta | None:
        if not _NAME.match(topic):
            raise TopicNotFoundError(f"{topic!r} is not a valid topic name")
        raw, kind = await self.pipeline(
            lambda p: (p.hgetall(layout.meta_key(topic)), p.type(topic)), f"look up {topic!r}"
        )
        if raw:
            return TopicMeta.parse(topic, raw)
        if layout.text(kind) == "stream":
            return TopicMeta(name=topic, adopted=True)
        return None

    # publish ---------------------------------------------------------------------------------
    async def publish(
        self, topic: str, records: Sequence[Outgoing], *, timeout: float = 10.0
    ) -> list[Position]:
        """Append records (see the Transport contract). Batches go in round trips of
        PUBLISH_CHUNK records, pipelined Lua calls of PUBLISH_SLICE records each (on Redis
        Cluster one call per chunk); each call is all-or-nothing on the server."""
        self._check()
        if not records:
            return []
        deadline = time.monotonic() + timeout
        return await self.with_timeout(
            self._publish(topic, records, deadline), timeout, f"publish to {topic!r}"
        )

    async def with_timeout(self, work: Awaitable[T], timeout: float, action: str) -> T:
        try:
            async with asyncio.timeout(timeout):  # no extra task per call, unlike wait_for
                return await work
        except TimeoutError as exc:
            if isinstance(exc, OperationTimeoutError):
                raise
            raise OperationTimeoutError(
                f"{action} on {self.settings.url} did not finish within {timeout} s; some "
                "records may have been written. Check the server, or raise the timeout."
            ) from None

    def check_sizes(self, meta: TopicMeta, records: Sequence[Outgoing]) -> None:
        limit = meta.max_event_bytes
        for record in records:
            size = record_size(record)
            if size > limit:
                raise EventTooLargeError(
                    f"event of {size} bytes exceeds topic {meta.name!r}'s limit of {limit} "
                    "bytes; nothing was written. Make it smaller, or raise the topic's "
                    "max_event_bytes (alter_topic / eventbus topics alter)"
                )

    def partition_of(self, meta: TopicMeta, record: Outgoing) -> int:
        if record.partition is not None:
            if not 0 <= record.partition < meta.partitions:
                raise InvalidPositionError(
                    f"topic {meta.name!r} has partitions 0..{meta.partitions - 1}, "
                    f"not {record.partition}"
                )
            return record.partition
        if record.key is not None:
            return partition_for_key(record.key, meta.partitions)
        counter = self._round_robin.setdefault(meta.name, itertools.count())
        return next(counter) % meta.partitions

    async def _publish(
        self, topic: str, records: Sequence[Outgoing], deadline: float
    ) -> list[Position]:
        meta = await self.meta(topic, create=self.settings.auto_create)
        self.check_sizes(meta, records)
        parts = [self.partition_of(meta, r) for r in records]
        encoded = None
        if meta.layout is not None:  # all encoded first: a record that cannot be, fails alone
            encoded = list(map(self.encoder(meta), records))
        positions: list[Position] = []
        for start in range(0, len(records), PUBLISH_CHUNK):
            # redis-py finishes a command even when cancelled, so wait_for alone may
            # return late: check the deadline between chunks as well
            if time.monotonic() > deadline:
                raise OperationTimeoutError(
                    f"publish to {topic!r} on {self.settings.url} passed its timeout after "
                    f"{start} of {len(records)} records were written; raise the timeout or "
                    "publish smaller batches"
                )
            chunk = records[start : start + PUBLISH_CHUNK]
            chunk_parts = parts[start : start + PUBLISH_CHUNK]
            ids = await self._append(
                meta,
                chunk,
                chunk_parts,
                None if encoded is None else encoded[start : start + PUBLISH_CHUNK],
            )
            positions += [Position(p, i.decode()) for p, i in zip(chunk_parts, ids, strict=True)]
        return positions

    async def _append(
        self,
        meta: TopicMeta,
        records: Sequence[Outgoing],
        parts: Sequence[int],
        encoded: Sequence[list[bytes]] | None = None,
    ) -> list[bytes]:
        if encoded is None and not self.settings.cluster:
            return await self._append_packed(meta, records, parts)
        used = sorted(set(parts))
        index = {p: i + 1 for i, p in enumerate(used)}
        args: list[Any] = [meta.minid()]
        if encoded is None:
            encoded = [layout.encode_fields(record) for record in records]
        for fields, p in zip(encoded, parts, strict=True):
            args += [index[p], len(fields) // 2, *fields]
        keys = [layout.stream_key(meta.name, p) for p in used]
        try:
            with self.edge(f"publish to {meta.name!r}"):
                ids: list[bytes] = await self.script("PUBLISH")(keys=keys, args=args)
        except Exception as exc:
            self.raise_if_missing(meta.name, exc)
            raise
        return ids

    async def _append_packed(
        self, meta: TopicMeta, records: Sequence[Outgoing], parts: Sequence[int]
    ) -> list[bytes]:
        """The PUBLISH script on one pooled connection, packed here, in pipelined calls of
        PUBLISH_SLICE records: the server appends one slice while the next is packed."""
        try:
            with self.edge(f"publish to {meta.name!r}"):
                try:
                    return await self._send_slices(await self._sha("PUBLISH"), meta, records, parts)
                except NoScriptError:  # a restart, SCRIPT FLUSH or failover emptied the cache
                    self._shas.pop("PUBLISH", None)  # nothing ran: load it and send again
                    return await self._send_slices(await self._sha("PUBLISH"), meta, records, parts)
        except Exception as exc:
            self.raise_if_missing(meta.name, exc)
            raise

    async def _send_slices(
        self, sha: bytes, meta: TopicMeta, records: Sequence[Outgoing], parts: Sequence[int]
    ) -> list[bytes]:
        pool = self.client.connection_pool
        conn = await pool.get_connection()
        try:
            calls = 0
            minid = meta.minid().encode()
            for lo in range(0, len(records), PUBLISH_SLICE):
                chunk = records[lo : lo + PUBLISH_SLICE]
                chunk_parts = parts[lo : lo + PUBLISH_SLICE]
                used = sorted(set(chunk_parts))
                index = {p: i + 1 for i, p in enumerate(used)}
                body, bulks = layout.resp_publish_args(chunk, [index[p] for p in chunk_parts])
                keys = [layout.stream_key(meta.name, p) for p in used]
                head = layout.resp_command(
                    [b"EVALSHA", sha, str(len(keys)).encode(), *keys, minid], bulks
                )
                await conn.send_packed_command([head, *body], check_health=calls == 0)
                calls += 1
            ids: list[bytes] = []
            for _ in range(calls):
                ids += await conn.read_response()
            return ids
        except BaseException:
            # replies may be left unread (an error reply, a cancel): never reuse the socket
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    async def _sha(self, name: str) -> bytes:
        found = self._shas.get(name)
        if found is None:
            with self.edge("load a script"):
                loaded = await self.client.script_load(getattr(scripts, name))
            found = self._shas[name] = loaded.encode() if isinstance(loaded, str) else loaded
        return found

    def raise_if_missing(self, topic: str, exc: BaseException) -> None:
        """Turn the scripts' EBNOSTREAM error into TopicNotFoundError (and forget the topic)."""
        if "EBNOSTREAM" in str(exc):
            self.forget(topic)
            raise TopicNotFoundError(
                f"topic {topic!r} was deleted on {self.settings.url} (a partition stream is "
                "missing); create it again"
            ) from None

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

    def check_partition(self, meta: TopicMeta, partition: int) -> None:
        if not 0 <= partition < meta.partitions:
            raise InvalidPositionError(
                f"topic {meta.name!r} has partitions 0..{meta.partitions - 1}, not {partition}"
            )

    # topics ----------------------------------------------------------------------------------
    async def create_topic(self, spec: TopicSpec) -> None:
        """Write the metadata and create the partition streams, in one script."""
        self._check()
        _check_spec(spec)
        meta = TopicMeta.from_spec(spec, int(time.time() * 1000))
        with self.edge(f"create topic {spec.name!r}"):
            result = await self.script("CREATE_TOPIC")(
                keys=[layout.meta_key(spec.name), *meta.streams()],
                args=["create", *meta.fields()],
            )
            await self.client.sadd(layout.TOPICS_KEY, spec.name)
        outcome = layout.text(result)
        if outcome == "EXISTS":
            raise TopicExistsError(f"topic {spec.name!r} already exists on {self.settings.url}")
        if outcome == "KEY":
            raise TopicExistsError(
                f"a key named {spec.name!r} already exists on {self.settings.url}: a plain "
                "stream is already usable as a one-partition topic; give it a spec with "
                "alter_topic (eventbus topics apply) instead of creating it"
            )
        self.forget(spec.name)

    async def describe_topic(self, name: str) -> TopicInfo:
        meta = await self.meta(name, fresh=True)

        def build(pipe: Any) -> None:
            for key in meta.streams():
                pipe.xlen(key)
                pipe.xrange(key, "-", "+", count=1)
                pipe.xrevrange(key, "+", "-", count=1)

        replies = await self.pipeline(build, f"describe topic {name!r}")
        partitions = []
        for p in range(meta.partitions):
            count, first, last = replies[3 * p : 3 * p + 3]
            partitions.append(
                PartitionInfo(
                    p,
                    layout.text(first[0][0]) if first else None,
                    layout.text(last[0][0]) if last else None,
                    int(count),
                )
            )
        return TopicInfo(meta.spec(), partitions)

    async def list_topics(self) -> list[str]:
        """Topics created by eventbus plus (with ``discover_streams``) plain streams."""
        self._check()
        with self.edge("list topics"):
            names = {layout.text(n) for n in await self.client.smembers(layout.TOPICS_KEY)}
            if self.settings.discover_streams:
                async for key in self.client.scan_iter(count=1000, _type="stream"):
                    name = layout.text(key)
                    if not name.startswith(layout.INTERNAL_PREFIX):
                        names.add(name)
        return sorted(n for n in names if _NAME.match(n))

    async def alter_topic(self, spec: TopicSpec) -> None:
        """Grow partitions (new streams), change retention, limits and configs. An adopted
        plain stream gets metadata here. Shrinking raises UnsupportedError."""
        _check_spec(spec)
        current = await self.meta(spec.name, fresh=True)
        if spec.partitions < current.partitions:
            raise UnsupportedError(
                f"topic {spec.name!r} has {current.partitions} partitions and cannot shrink to "
                f"{spec.partitions} (capability partitions_can_shrink is false); delete and "
                "recreate it instead"
            )
        meta = TopicMeta.from_spec(spec, current.created_ms or int(time.time() * 1000))
        if meta.layout is None and current.layout is not None:  # a spec without one keeps it
            meta = dataclasses.replace(meta, layout=current.layout)
        with self.edge(f"alter topic {spec.name!r}"):
            await self.script("CREATE_TOPIC")(
                keys=[layout.meta_key(spec.name), *meta.streams()],
                args=["alter", *meta.fields()],
            )
            await self.client.sadd(layout.TOPICS_KEY, spec.name)
        self.forget(spec.name)
        await self.trim(meta)

    async def trim(self, meta: TopicMeta) -> None:
        """Apply time retention now, exactly (writes trim approximately, `~`, as they go)."""
        minid = meta.minid()
        if minid:
            await self.pipeline(
                lambda p: [p.xtrim(k, minid=minid, approximate=False) for k in meta.streams()],
                f"trim {meta.name!r}",
            )

    async def delete_topic(self, name: str) -> None:
        """Delete streams, metadata and group membership of the topic."""
        meta = await self.meta(name, fresh=True)
        groups = await self.groups_of(meta)
        keys = [layout.meta_key(name), *meta.streams()]
        for group in groups:
            keys += [layout.members_key(name, group), layout.owners_key(name, group)]
        with self.edge(f"delete topic {name!r}"):
            await self.client.delete(*keys)
            await self.client.srem(layout.TOPICS_KEY, name)
        self.forget(name)

    async def groups_of(self, meta: TopicMeta) -> set[str]:
        """Names of the consumer groups on any partition stream of a topic."""
        replies = await self.xinfo_groups(meta.streams(), f"list groups of {meta.name!r}")
        return {layout.text(g["name"]) for reply in replies for g in reply}

    async def xinfo_groups(self, keys: Sequence[str], action: str) -> list[list[Any]]:
        """XINFO GROUPS per stream, in one round trip. A stream deleted by another client
        (``DEL``) has no groups: ``[]`` instead of the server's "no such key" error."""
        with self.edge(action):
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.xinfo_groups(key)
            replies = await pipe.execute(raise_on_error=False)
            out: list[list[Any]] = []
            for reply in replies:
                if isinstance(reply, Exception):
                    if "no such key" in str(reply).lower():
                        out.append([])
                        continue
                    raise reply
                out.append(reply)
            return out

    # groups ----------------------------------------------------------------------------------
    async def open_consumer(
        self, topics: Sequence[str], group: str, consumer: str, options: ConsumerOptions
    ) -> TransportConsumer:
        from eventbus.adapters.redis_streams._consumer import RedisConsumer

        return await RedisConsumer.open(self, topics, group, consumer, options)

    async def list_groups(self) -> list[str]:
        names: set[str] = set()
        for topic in await self.list_topics():
            try:
                names |= await self.groups_of(await self.meta(topic, fresh=True))
            except TopicNotFoundError:
                continue  # deleted meanwhile
        return sorted(names)

    async def topic_groups(self, topic: str) -> list[str]:
        """Groups on any partition stream of ``topic`` (see TopicGroups)."""
        self._check()
        return sorted(await self.groups_of(await self.meta(topic, fresh=True)))

    async def trim_finished(self, topic: str, group: str, partitions: Sequence[int]) -> int:
        """Trim what ``group`` has finished (see TrimsFinished)."""
        from eventbus.adapters.redis_streams._groups import trim_finished

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
        from eventbus.adapters.redis_streams._groups import describe_group

        return await describe_group(self, group)

    async def reset_group(
        self, group: str, topic: str, to: ResetTarget
    ) -> dict[int, tuple[Offset | None, Offset | None]]:
        from eventbus.adapters.redis_streams._groups import reset_group

        return await reset_group(self, group, topic, to)

    # cluster ---------------------------------------------------------------------------------
    def same_slot(self, *keys: str) -> bool:
        """True when the keys may be used together in one script or MULTI."""
        if not self.settings.cluster:
            return True
        return len({key_slot(k.encode()) for k in keys}) == 1
