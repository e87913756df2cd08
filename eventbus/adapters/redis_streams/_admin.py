"""Topics on Redis: :class:`TopicMeta` (a topic's metadata hash, or what a plain stream
implies), its cache and the layout each topic's entries are decoded by, and topic admin
(create, describe, list, alter, trim, delete; the groups on a topic's streams), as
:class:`TopicAdmin`, the connection that knows topics. The publish path builds on it
(``_publish.py``), and the group functions (``_groups.py``) take it."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eventbus.adapters.redis_streams import _layout as layout
from eventbus.adapters.redis_streams._connection import RedisConnection
from eventbus.adapters.redis_streams._layout_codec import codec_for
from eventbus.adapters.redis_streams._settings import RedisSettings
from eventbus.errors import (
    ConfigurationError,
    InvalidPositionError,
    TopicExistsError,
    TopicNotFoundError,
    UnsupportedError,
)
from eventbus.topics import StreamLayout, TopicSpec
from eventbus.transport import (
    Outgoing,
    PartitionInfo,
    TopicInfo,
)

__all__ = ["TopicAdmin", "TopicMeta"]


# Names usable as topics: TopicSpec names, plus adopted streams with other characters (such as
# ':'), but never braces (they would break the hash tag) nor the internal prefix.
_NAME = re.compile(r"^(?!eb:)[^{}\s]{1,1000}$")

TOPIC_PAGE = 500
"""Topics looked up per round trip when going through every topic (``describe_topics``, and
the group scans of ``_groups.py``)."""


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


def _meta_of(topic: str, raw: Mapping[bytes, bytes], kind: bytes | str) -> TopicMeta | None:
    """The topic's metadata from its HGETALL and TYPE replies (None: no such topic)."""
    if raw:
        return TopicMeta.parse(topic, raw)
    if layout.text(kind) == "stream":
        return TopicMeta(name=topic, adopted=True)
    return None


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


class TopicAdmin(RedisConnection):
    """The connection plus topic metadata (cached for ``metadata_ttl``) and topic admin."""

    def __init__(self, settings: RedisSettings) -> None:
        super().__init__(settings)
        self._meta_cache: dict[str, tuple[TopicMeta, float]] = {}
        self._layouts: dict[str, StreamLayout] = {}
        """Topics with a layout, as last loaded: readers decode by it without a lookup."""

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
        self._remember(found)
        return found

    async def metas(self, topics: Sequence[str]) -> list[TopicMeta]:
        """Fresh metadata of each of ``topics`` that exists (in their order), in one round
        trip; the topics that do not are left out (a listing that raced a delete)."""
        self._check()
        for topic in topics:
            if not _NAME.match(topic):
                raise TopicNotFoundError(f"{topic!r} is not a valid topic name")
        if not topics:
            return []

        def build(pipe: Any) -> None:
            for topic in topics:
                pipe.hgetall(layout.meta_key(topic))
                pipe.type(topic)

        replies = await self.pipeline(build, f"look up {len(topics)} topics")
        out = []
        for i, topic in enumerate(topics):
            found = _meta_of(topic, replies[2 * i], replies[2 * i + 1])
            if found is not None:
                self._remember(found)
                out.append(found)
        return out

    def _remember(self, found: TopicMeta) -> None:
        self._meta_cache[found.name] = (found, time.monotonic() + self.settings.metadata_ttl)
        if found.layout is not None:
            self._layouts[found.name] = found.layout
        elif self._layouts:
            self._layouts.pop(found.name, None)

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
        return _meta_of(topic, raw, kind)

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
        [info] = await self._describe([meta], f"describe topic {name!r}")
        return info

    async def describe_topics(self) -> list[TopicInfo]:
        """Every topic of ``list_topics`` described, two round trips per TOPIC_PAGE topics
        (see DescribesTopics); a topic deleted meanwhile is left out."""
        names = await self.list_topics()
        out: list[TopicInfo] = []
        for start in range(0, len(names), TOPIC_PAGE):
            metas = await self.metas(names[start : start + TOPIC_PAGE])
            out += await self._describe(metas, "describe topics")
        return out

    async def _describe(self, metas: Sequence[TopicMeta], action: str) -> list[TopicInfo]:
        """Length, first and last id of every partition of ``metas``, in one round trip."""
        if not metas:
            return []

        def build(pipe: Any) -> None:
            for meta in metas:
                for key in meta.streams():
                    pipe.xlen(key)
                    pipe.xrange(key, "-", "+", count=1)
                    pipe.xrevrange(key, "+", "-", count=1)

        replies = iter(await self.pipeline(build, action))
        out = []
        for meta in metas:
            partitions = []
            for p in range(meta.partitions):
                count, first, last = next(replies), next(replies), next(replies)
                partitions.append(
                    PartitionInfo(
                        p,
                        layout.text(first[0][0]) if first else None,
                        layout.text(last[0][0]) if last else None,
                        int(count),
                    )
                )
            out.append(TopicInfo(meta.spec(), partitions))
        return out

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
