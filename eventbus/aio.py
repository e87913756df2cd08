"""The async API: :class:`AsyncEventBus`, subscriptions, deliveries and replay.

This is the one implementation of the core. :mod:`eventbus.sync` drives it from blocking code.
The replay loop (cursors, end predicate, merge by time) is in :mod:`eventbus._replay`.
"""

from __future__ import annotations

import contextlib
from collections.abc import (
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Mapping,
)
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from eventbus._coalesce import Coalescer
from eventbus._registry import open_transport
from eventbus._replay import Replayed, replay_topic
from eventbus.errors import (
    ClosedError,
    ConfigurationError,
    GroupNotFoundError,
    TopicExistsError,
    TopicNotFoundError,
    UnsupportedError,
)
from eventbus.event import (
    Codec,
    Event,
    JsonCodec,
    built_event,
    encode_event,
    new_event_id,
)
from eventbus.observability import instruments
from eventbus.subscription import (
    DEFAULT_TIMEOUT,
    AsyncDelivery,
    AsyncSubscription,
    Start,
    SubscribeOptions,
    default_consumer_name,
    parse_start,
)
from eventbus.topics import Plan, TopicSpec, plan
from eventbus.transport import (
    DescribesGroups,
    DescribesTopics,
    EntrySample,
    GroupInfo,
    Offset,
    Outgoing,
    Position,
    ResetTarget,
    TopicInfo,
    Transport,
)

if TYPE_CHECKING:
    from eventbus.batching import AsyncBatchSubscription
    from eventbus.runner import AsyncRunner, RunnerStats

__all__ = [
    "AsyncDelivery",
    "AsyncEventBus",
    "AsyncSubscription",
    "Replayed",
    "Start",
    "connect_async",
    "parse_start",
]


class AsyncEventBus:
    """Publish, consume in groups, replay and administer topics over one transport.

    Use as ``async with connect_async(url) as bus`` (or ``bus = await connect_async(url)``
    then ``await bus.close()``). One bus may be shared by many tasks of one event loop."""

    def __init__(
        self,
        transport: Transport,
        *,
        codec: Codec | None = None,
        source: str | None = None,
        publish_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.transport = transport
        self.codec: Codec = codec or JsonCodec()
        self.source = source
        self.publish_timeout = publish_timeout
        self._connected = False
        self._closed = False
        self._subscriptions: set[AsyncSubscription] = set()
        self._known_topics: set[str] = set()
        self._system = transport.capabilities.transport
        self._coalescer = Coalescer(transport)

    @property
    def capabilities(self) -> Any:
        return self.transport.capabilities

    # lifecycle ----------------------------------------------------------------------------
    async def connect(self) -> AsyncEventBus:
        """Check the server answers; idempotent. Raises ConnectionFailedError and friends."""
        if self._closed:
            raise ClosedError("this bus is closed; connect a new one")
        if not self._connected:
            await self.transport.connect()
            self._connected = True
        return self

    def __await__(self) -> Generator[Any, None, AsyncEventBus]:
        return self.connect().__await__()

    async def __aenter__(self) -> AsyncEventBus:
        return await self.connect()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close open subscriptions (committing acks), flush and close the transport."""
        if self._closed:
            return
        self._closed = True
        for sub in list(self._subscriptions):
            await sub.close()
        await self._coalescer.drain()
        await self.transport.close()

    def _check(self) -> None:
        if self._closed:
            raise ClosedError("this bus is closed; connect a new one")

    # publish --------------------------------------------------------------------------------
    def _event(
        self,
        data: Any,
        key: str | None,
        headers: Mapping[str, str] | None,
        type: str | None,
    ) -> Event:
        if isinstance(data, Event):
            return data
        return built_event(
            id=new_event_id(),
            time=datetime.now(UTC),
            schema_version=None,
            data=data,
            key=key,
            headers=dict(headers) if headers else {},
            type=type if type is not None else _type_name(data),
            source=self.source,
        )

    def encode(
        self,
        data: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        type: str | None = None,
    ) -> Outgoing:
        """The record ``publish`` would write for these arguments."""
        return encode_event(self._event(data, key, headers, type), self.codec)

    async def publish(
        self,
        topic: str,
        data: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        type: str | None = None,
        timeout: float | None = None,
    ) -> Position:
        """Publish one event and return its position once the server holds it.

        ``data`` is a pydantic model, a JSON value, or a ready :class:`Event` (then ``key``,
        ``headers`` and ``type`` are taken from it). ``type`` defaults to the model's class
        name. Raises TopicNotFoundError, EventTooLargeError, OperationTimeoutError,
        ConnectionFailedError, SerializationError.

        Publishes made by several tasks in the same loop turn go to the server in one call;
        each returns its own position, an oversize event fails only its own publish, and any
        other failure of that call is raised by each of them."""
        self._check()
        record = self.encode(data, key=key, headers=headers, type=type)
        with instruments().publish_span(self._system, topic, (record,)):
            # concurrent publishes of one loop turn share one transport call (see _coalesce)
            return await self._coalescer.publish(topic, record, timeout or self.publish_timeout)

    async def publish_many(
        self, topic: str, events: Iterable[Event | Any], *, timeout: float | None = None
    ) -> list[Position]:
        """Publish a batch (the fast path); positions come back in order once all are held.

        Items are :class:`Event` objects (carrying key, headers, type) or plain data. If it
        raises, some events may have been written: publish again, consumers dedupe by id."""
        self._check()
        codec = self.codec
        records = [
            encode_event(item, codec) if item.__class__ is Event else self.encode(item)
            for item in events
        ]
        if not records:
            return []
        with instruments().publish_span(self._system, topic, records):
            return await self.transport.publish(
                topic, records, timeout=timeout or self.publish_timeout
            )

    # consume --------------------------------------------------------------------------------
    async def subscribe(
        self,
        topics: str | Iterable[str],
        *,
        group: str,
        consumer: str | None = None,
        model: type[BaseModel] | None = None,
        start: Start = "earliest",
        dead_letter: str | bool = True,
        visibility_timeout: float = 30.0,
        session_timeout: float = 10.0,
        batch_size: int = 100,
        options: Mapping[str, str] | None = None,
        max_lease: float = 3600.0,
    ) -> AsyncSubscription:
        """Join ``group`` and return its subscription (an async iterator of deliveries).

        A new group starts at ``start`` (default: the earliest retained event, so a consumer
        deployed after its producer loses nothing). ``dead_letter`` is the topic for events
        that cannot be decoded (True: ``<topic>.dlq``; False: they are nacked instead).

        Every delivery is leased to this member until it is acked or nacked: the member
        renews the lease in the background, so holding a delivery for minutes (a slow
        handler) does not get it redelivered. ``visibility_timeout`` is how long the group
        waits for a member that died or hangs; ``max_lease`` the longest a delivery is kept
        (then it is redelivered, and a warning logged). See docs/semantics.md, "Leases"."""
        settings = SubscribeOptions.pick(locals())  # the keyword arguments above
        return await self.subscribe_with(topics, group, settings)

    async def subscribe_with(
        self, topics: str | Iterable[str], group: str, settings: SubscribeOptions
    ) -> AsyncSubscription:
        """:meth:`subscribe` with its settings in one object (what the runner and batches
        use). Raises ConfigurationError without topics, and what ``subscribe`` raises."""
        self._check()
        names = (topics,) if isinstance(topics, str) else tuple(topics)
        if not names:
            raise ConfigurationError("subscribe needs at least one topic")
        member = await self.transport.open_consumer(
            names,
            group,
            settings.consumer or default_consumer_name(),
            settings.consumer_options(),
        )
        dlq = _dead_letter_topic(names[0], settings.dead_letter)
        sub = AsyncSubscription(
            self, names, group, member, settings.model, dlq, settings.batch_size
        )
        self._subscriptions.add(sub)
        return sub

    async def subscribe_batches(
        self,
        topics: str | Iterable[str],
        *,
        group: str,
        budget: float,
        weight: str | Callable[[Event], float],
        **settings: Any,
    ) -> AsyncBatchSubscription:
        """Join ``group`` and receive batches whose total ``weight`` stays within ``budget``
        (an item heavier than the budget comes alone). ``weight`` is a header name or a
        function of the event. See :mod:`eventbus.batching` for the guarantees and settings
        (max_items, max_wait, model, visibility_timeout, ...)."""
        from eventbus.batching import subscribe_batches

        names = (topics,) if isinstance(topics, str) else tuple(topics)
        return await subscribe_batches(
            self, names, group=group, budget=budget, weight=weight, **settings
        )

    def runner(
        self,
        handler: Callable[[Any], Any],
        topics: str | Iterable[str],
        *,
        group: str,
        **settings: Any,
    ) -> AsyncRunner:
        """A runner for ``handler`` over ``topics`` in ``group``; see :mod:`eventbus.runner`
        for the settings (concurrency, max_attempts, backoff, dead_letter, model, ...)."""
        from eventbus.runner import AsyncRunner

        names = (topics,) if isinstance(topics, str) else tuple(topics)
        return AsyncRunner(self, handler, names, group=group, **settings)

    async def run(
        self,
        handler: Callable[[Any], Any],
        topics: str | Iterable[str],
        *,
        group: str,
        **settings: Any,
    ) -> RunnerStats:
        """Run ``handler`` until cancelled (or the runner's ``stop()``): acks after it
        returns, retries with backoff, dead-letters after the last attempt, and keeps per-key
        order under ``concurrency``. Returns the runner's stats."""
        return await self.runner(handler, topics, group=group, **settings).run()

    async def ensure_topic(self, name: str, partitions: int = 1) -> None:
        """Create ``name`` if it does not exist (used for dead-letter topics)."""
        if name in self._known_topics:
            return
        with contextlib.suppress(TopicExistsError):
            await self.transport.create_topic(TopicSpec(name=name, partitions=partitions))
        self._known_topics.add(name)

    # replay ---------------------------------------------------------------------------------
    async def replay(
        self,
        topic: str,
        *,
        start: Start | Mapping[int, Offset] = "earliest",
        end: datetime | Position | Mapping[int, Offset] | str | None = None,
        model: type[BaseModel] | None = None,
        follow: bool = False,
        poll_interval: float = 0.2,
        page_size: int = 500,
    ) -> AsyncIterator[Replayed]:
        """Read a topic without a group, in order within each partition (and merged by time
        across partitions), from ``start`` to ``end`` (inclusive). Without ``end`` it stops at
        the last event present when replay began, unless ``follow`` keeps it waiting for more.

        A :class:`Position` start reads only its partition; a mapping reads the partitions it
        names. Undecodable records are yielded as raw events unless ``model`` is given, when
        they raise SerializationError (entries that do not fit their topic's stream layout as
        well: raw events, with their fields as the data)."""
        self._check()
        replayed = replay_topic(
            self.transport,
            self.codec,
            topic,
            start=start,
            end=end,
            model=model,
            follow=follow,
            poll_interval=poll_interval,
            page_size=page_size,
        )
        async with contextlib.aclosing(replayed):
            async for item in replayed:
                yield item

    # admin ----------------------------------------------------------------------------------
    async def create_topic(self, spec: TopicSpec | str, **fields: Any) -> TopicSpec:
        """Create a topic from a spec or a name and spec fields. Raises TopicExistsError."""
        self._check()
        spec = spec if isinstance(spec, TopicSpec) else TopicSpec(name=spec, **fields)
        await self.transport.create_topic(spec)
        self._known_topics.add(spec.name)
        return spec

    async def describe_topic(self, name: str) -> TopicInfo:
        self._check()
        return await self.transport.describe_topic(name)

    async def list_topics(self) -> list[str]:
        self._check()
        return await self.transport.list_topics()

    async def describe_topics(self) -> list[TopicInfo]:
        """Every topic of :meth:`list_topics`, described, in that order (a topic deleted while
        they are listed is left out). A few round trips where the transport can
        (DescribesTopics), else one ``describe_topic`` per topic."""
        self._check()
        transport = self.transport
        if isinstance(transport, DescribesTopics):
            return await transport.describe_topics()
        infos = []
        for name in await transport.list_topics():
            with contextlib.suppress(TopicNotFoundError):  # deleted while we listed
                infos.append(await transport.describe_topic(name))
        return infos

    async def alter_topic(self, spec: TopicSpec) -> None:
        self._check()
        await self.transport.alter_topic(spec)

    async def sample_entries(
        self, topic: str, count: int = 200
    ) -> list[tuple[Offset, dict[bytes, bytes]]]:
        """The newest ``count`` entries of a stream topic's partition 0 (oldest first), fields
        exactly as stored: what ``eventbus topics adopt`` proposes a
        :class:`~eventbus.topics.StreamLayout` from. Raises UnsupportedError on transports
        without stream entries (Kafka, memory), TopicNotFoundError."""
        self._check()
        if not isinstance(self.transport, EntrySample):
            raise UnsupportedError(
                f"{self.transport.capabilities.transport} has no stream entries to sample; "
                "stream layouts are adopted from Redis streams"
            )
        return await self.transport.sample_entries(topic, count)

    async def delete_topic(self, name: str) -> None:
        self._check()
        await self.transport.delete_topic(name)
        self._known_topics.discard(name)

    async def plan(self, specs: Iterable[TopicSpec], *, delete_missing: bool = False) -> Plan:
        """The changes that would make the server match ``specs`` (nothing is changed)."""
        self._check()
        wanted = list(specs)
        names = set(await self.transport.list_topics())
        scope = names if delete_missing else names & {s.name for s in wanted}
        actual = {name: (await self.transport.describe_topic(name)).spec for name in scope}
        stores_layout = self.transport.capabilities.stream_layout
        return plan(actual, wanted, delete_missing=delete_missing, stores_layout=stores_layout)

    async def apply(
        self,
        specs: Iterable[TopicSpec],
        *,
        allow_destructive: bool = False,
        delete_missing: bool = False,
    ) -> Plan:
        """Make the server match ``specs``; returns what was changed (empty the second time).

        Refuses destructive changes (fewer partitions, a cleanup policy flip, deletes) with
        ConfigurationError unless ``allow_destructive``; fewer partitions then recreate the
        topic, deleting its events."""
        the_plan = await self.plan(specs, delete_missing=delete_missing)
        if the_plan.destructive and not allow_destructive:
            raise ConfigurationError(
                "the plan has destructive changes: "
                + "; ".join(c.describe() for c in the_plan.changes if c.destructive)
                + ". Review them and pass allow_destructive=True (--allow-destructive) to apply"
            )
        for change in the_plan.changes:
            if change.action == "create" and change.spec is not None:
                await self.transport.create_topic(change.spec)
            elif change.action == "delete":
                await self.transport.delete_topic(change.topic)
            elif change.spec is not None:
                current = (await self.transport.describe_topic(change.topic)).spec
                merged = _merge(current, change.spec)
                if merged.partitions < current.partitions:
                    await self.transport.delete_topic(change.topic)
                    await self.transport.create_topic(merged)
                else:
                    await self.transport.alter_topic(merged)
        return the_plan

    async def list_groups(self) -> list[str]:
        self._check()
        return await self.transport.list_groups()

    async def describe_group(self, group: str) -> GroupInfo:
        """Members, per-partition position, lag and pending. Raises GroupNotFoundError."""
        self._check()
        info = await self.transport.describe_group(group)
        instruments().observe_group(self._system, info)
        return info

    async def describe_groups(self) -> list[GroupInfo]:
        """Every consumer group, described, sorted by name (a group deleted while they are
        listed is left out). One pass over the server where the transport can
        (DescribesGroups), else one ``describe_group`` per group."""
        self._check()
        transport = self.transport
        if isinstance(transport, DescribesGroups):
            infos = await transport.describe_groups()
        else:
            infos = []
            for name in await transport.list_groups():
                with contextlib.suppress(GroupNotFoundError):  # deleted while we listed
                    infos.append(await transport.describe_group(name))
        for info in infos:
            instruments().observe_group(self._system, info)
        return infos

    async def reset_group(
        self, group: str, topic: str, to: Start | Mapping[int, Offset]
    ) -> dict[int, tuple[Offset | None, Offset | None]]:
        """Move a group on a topic to earliest, latest, a time, a position (its partition) or
        an offset per partition; returns ``{partition: (before, after)}``. Raises
        GroupActiveError where the transport cannot reset a group with live members."""
        self._check()
        target: ResetTarget
        if isinstance(to, Mapping):
            target = {int(p): o for p, o in to.items()}
        else:
            parsed = parse_start(to)
            target = {parsed.partition: parsed.offset} if isinstance(parsed, Position) else parsed
        if isinstance(target, datetime) and not self.capabilities.timestamp_replay:
            raise UnsupportedError(
                f"{self.capabilities.transport} cannot reset to a time "
                "(capability timestamp_replay is false)"
            )
        return await self.transport.reset_group(group, topic, target)


def _type_name(data: Any) -> str | None:
    return type(data).__name__ if isinstance(data, BaseModel) else None


def _dead_letter_topic(topic: str, dead_letter: str | bool | None) -> str | None:
    if dead_letter is True:
        return f"{topic}.dlq"
    if not dead_letter:
        return None
    return str(dead_letter)


def _merge(current: TopicSpec, desired: TopicSpec) -> TopicSpec:
    """Desired spec, keeping the server's retention where the desired one leaves it unset."""
    return desired.model_copy(
        update={
            "retention_ms": desired.retention_ms or current.retention_ms,
            "retention_bytes": desired.retention_bytes or current.retention_bytes,
            "config": {**current.config, **desired.config},
            "layout": desired.layout or current.layout,
        }
    )


def connect_async(
    url: str = "memory://",
    *,
    codec: Codec | None = None,
    source: str | None = None,
    publish_timeout: float = DEFAULT_TIMEOUT,
    options: Mapping[str, Any] | None = None,
) -> AsyncEventBus:
    """An :class:`AsyncEventBus` for ``url``; connect with ``async with`` or ``await``.

    Raises UnknownTransportError, MissingExtraError or ConfigurationError for the URL at once;
    connection errors surface when it connects."""
    transport = open_transport(url, options)
    return AsyncEventBus(transport, codec=codec, source=source, publish_timeout=publish_timeout)
