"""The blocking API: a thin facade that runs the async core on a private loop thread.

Each method submits the matching :class:`~eventbus.aio.AsyncEventBus` coroutine and waits, so
the semantics are the async ones by construction. Safe to call from many threads at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

from pydantic import BaseModel

from eventbus._portal import Portal
from eventbus._registry import open_transport
from eventbus.aio import AsyncEventBus, Replayed
from eventbus.batching import AsyncBatchSubscription, Batch, subscribe_batches
from eventbus.event import Codec, Event
from eventbus.runner import AsyncRunner, RunnerStats
from eventbus.subscription import DEFAULT_TIMEOUT, AsyncDelivery, AsyncSubscription, Start
from eventbus.topics import Plan, TopicSpec
from eventbus.transport import Capabilities, GroupInfo, Offset, Outgoing, Position, TopicInfo

_T = TypeVar("_T")

__all__ = [
    "BatchSubscription",
    "Delivery",
    "EventBus",
    "Runner",
    "Subscription",
    "SyncBatch",
    "connect",
    "subscribe_batches_sync",
]


class Delivery:
    """One event handed to a group member (blocking twin of AsyncDelivery)."""

    __slots__ = ("_inner", "_portal")

    def __init__(self, inner: AsyncDelivery, portal: Portal) -> None:
        self._inner = inner
        self._portal = portal

    @property
    def event(self) -> Event:
        return self._inner.event

    @property
    def topic(self) -> str:
        return self._inner.topic

    @property
    def partition(self) -> int:
        return self._inner.partition

    @property
    def position(self) -> Position:
        return self._inner.position

    @property
    def attempt(self) -> int:
        return self._inner.attempt

    def ack(self) -> None:
        """Mark the event done for the group (sent in the background, as
        :meth:`AsyncDelivery.ack <eventbus.subscription.AsyncDelivery.ack>` says)."""
        self._portal.call(self._inner.ack())

    def nack(self, delay: float = 0.0) -> None:
        """Give the event back; it is delivered again no sooner than ``delay`` seconds."""
        self._portal.call(self._inner.nack(delay))

    def dead_letter(self, reason: BaseException | str) -> None:
        """Send the event to the dead-letter topic with ``reason`` and ack it."""
        self._portal.call(self._inner.dead_letter(reason))

    def __repr__(self) -> str:
        return f"<Delivery {self.topic} {self.position} attempt={self.attempt}>"


class Subscription:
    """A group member's deliveries: ``for delivery in subscription``; close to leave."""

    def __init__(self, inner: AsyncSubscription, portal: Portal) -> None:
        self._inner = inner
        self._portal = portal

    def fetch(self, max_records: int | None = None, timeout: float = 1.0) -> list[Delivery]:
        """Up to ``max_records`` deliveries, waiting up to ``timeout`` s for the first."""
        batch = self._portal.call(self._inner.fetch(max_records, timeout))
        return [Delivery(d, self._portal) for d in batch]

    def __iter__(self) -> Iterator[Delivery]:
        return self

    def __next__(self) -> Delivery:
        try:
            return Delivery(self._portal.call(self._inner.__anext__()), self._portal)
        except StopAsyncIteration:
            raise StopIteration from None

    def ack(self, deliveries: Iterable[Delivery]) -> None:
        """Ack many deliveries in one call to the server (cheaper than one ack each)."""
        self._portal.call(self._inner.ack([d._inner for d in deliveries]))

    def close(self) -> None:
        """Leave the group: acked events are committed, the rest go back to the group."""
        self._portal.call(self._inner.close())

    def kill(self) -> None:
        """Stop as a crashed process would (tests and drills): nothing is committed."""
        self._portal.call(self._inner.kill())

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Runner:
    """A blocking runner: ``run()`` until ``stop()`` (from another thread) or Ctrl-C."""

    def __init__(self, inner: AsyncRunner, portal: Portal) -> None:
        self._inner = inner
        self._portal = portal

    @property
    def stats(self) -> RunnerStats:
        return self._inner.stats

    def wait_started(self, timeout: float | None = None) -> bool:
        """Block until the runner has joined its group (or ``timeout``)."""
        return self._inner.started.wait(timeout)

    def stop(self) -> None:
        """Stop gracefully: in-flight handlers finish, acks are committed."""
        self._inner.stop()

    def run(self) -> RunnerStats:
        """Consume until stopped. Ctrl-C stops gracefully, like ``stop()``."""
        future = asyncio.run_coroutine_threadsafe(self._inner.run(), self._portal.loop)
        try:
            return future.result()
        except KeyboardInterrupt:
            self._inner.stop()
            return future.result()


class EventBus:
    """The blocking API over one transport. Use as ``with eventbus.connect(url) as bus``.

    Methods mirror :class:`~eventbus.aio.AsyncEventBus` (same arguments, same errors), and
    handlers given to :meth:`run` are plain functions, called on worker threads."""

    def __init__(
        self,
        url: str = "memory://",
        *,
        codec: Codec | None = None,
        source: str | None = None,
        publish_timeout: float = DEFAULT_TIMEOUT,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        transport = open_transport(url, options)  # bad URLs raise here, before any thread
        self._portal = Portal()
        self._bus = AsyncEventBus(
            transport, codec=codec, source=source, publish_timeout=publish_timeout
        )
        try:
            self._portal.call(self._bus.connect())
        except BaseException:
            self._portal.stop()
            raise

    @property
    def aio(self) -> AsyncEventBus:
        """The async bus underneath (runs on this bus's private loop thread)."""
        return self._bus

    @property
    def capabilities(self) -> Capabilities:
        caps: Capabilities = self._bus.transport.capabilities
        return caps

    def close(self) -> None:
        """Close subscriptions (committing acks), flush and close. Idempotent."""
        try:
            self._portal.call(self._bus.close())
        finally:
            self._portal.stop()

    def __enter__(self) -> EventBus:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # publish
    def encode(self, data: Any, **kwargs: Any) -> Outgoing:
        return self._bus.encode(data, **kwargs)

    def publish(
        self,
        topic: str,
        data: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        type: str | None = None,
        timeout: float | None = None,
    ) -> Position:
        """Publish one event; returns its position once the server holds it (or raises)."""
        return self._portal.call(
            self._bus.publish(topic, data, key=key, headers=headers, type=type, timeout=timeout)
        )

    def publish_many(
        self, topic: str, events: Iterable[Event | Any], *, timeout: float | None = None
    ) -> list[Position]:
        """Publish a batch; positions in order once the server holds all of them."""
        return self._portal.call(self._bus.publish_many(topic, list(events), timeout=timeout))

    # consume
    def subscribe(
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
    ) -> Subscription:
        """Join ``group``; see :meth:`AsyncEventBus.subscribe`."""
        inner = self._portal.call(
            self._bus.subscribe(
                topics,
                group=group,
                consumer=consumer,
                model=model,
                start=start,
                dead_letter=dead_letter,
                visibility_timeout=visibility_timeout,
                session_timeout=session_timeout,
                batch_size=batch_size,
                options=options,
                max_lease=max_lease,
            )
        )
        return Subscription(inner, self._portal)

    def subscribe_batches(
        self,
        topics: str | Iterable[str],
        *,
        group: str,
        budget: float,
        weight: str | Callable[[Event], float],
        **settings: Any,
    ) -> BatchSubscription:
        """Blocking twin of :meth:`AsyncEventBus.subscribe_batches`."""
        names = [topics] if isinstance(topics, str) else list(topics)
        return subscribe_batches_sync(
            self, names, group=group, budget=budget, weight=weight, **settings
        )

    def runner(
        self,
        handler: Callable[[Delivery], Any],
        topics: str | Iterable[str],
        *,
        group: str,
        **settings: Any,
    ) -> Runner:
        """A blocking runner; see :mod:`eventbus.runner` for the settings."""
        portal = self._portal
        inner = self._bus.runner(
            handler, topics, group=group, wrap=lambda d: Delivery(d, portal), **settings
        )
        return Runner(inner, portal)

    def run(
        self,
        handler: Callable[[Delivery], Any],
        topics: str | Iterable[str],
        *,
        group: str,
        **settings: Any,
    ) -> RunnerStats:
        """Run ``handler`` until Ctrl-C; see :meth:`AsyncEventBus.run`."""
        return self.runner(handler, topics, group=group, **settings).run()

    def replay(
        self,
        topic: str,
        *,
        start: Start | Mapping[int, Offset] = "earliest",
        end: datetime | Position | Mapping[int, Offset] | str | None = None,
        model: type[BaseModel] | None = None,
        follow: bool = False,
    ) -> Iterator[Replayed]:
        """Read a topic without a group; see :meth:`AsyncEventBus.replay`."""
        agen = self._bus.replay(topic, start=start, end=end, model=model, follow=follow)
        try:
            while True:
                try:
                    yield self._portal.call(_next(agen))
                except StopAsyncIteration:
                    return
        finally:
            self._portal.call(_close(agen))

    # admin
    def create_topic(self, spec: TopicSpec | str, **fields: Any) -> TopicSpec:
        return self._portal.call(self._bus.create_topic(spec, **fields))

    def describe_topic(self, name: str) -> TopicInfo:
        return self._portal.call(self._bus.describe_topic(name))

    def list_topics(self) -> list[str]:
        return self._portal.call(self._bus.list_topics())

    def describe_topics(self) -> list[TopicInfo]:
        """Every topic of :meth:`list_topics`, described, in that order (a topic deleted
        while they are listed is left out). A few round trips where the transport can."""
        return self._portal.call(self._bus.describe_topics())

    def alter_topic(self, spec: TopicSpec) -> None:
        self._portal.call(self._bus.alter_topic(spec))

    def sample_entries(
        self, topic: str, count: int = 200
    ) -> list[tuple[Offset, dict[bytes, bytes]]]:
        return self._portal.call(self._bus.sample_entries(topic, count))

    def delete_topic(self, name: str) -> None:
        self._portal.call(self._bus.delete_topic(name))

    def plan(self, specs: Iterable[TopicSpec], *, delete_missing: bool = False) -> Plan:
        return self._portal.call(self._bus.plan(specs, delete_missing=delete_missing))

    def apply(
        self,
        specs: Iterable[TopicSpec],
        *,
        allow_destructive: bool = False,
        delete_missing: bool = False,
    ) -> Plan:
        return self._portal.call(
            self._bus.apply(
                specs, allow_destructive=allow_destructive, delete_missing=delete_missing
            )
        )

    def list_groups(self) -> list[str]:
        return self._portal.call(self._bus.list_groups())

    def describe_group(self, group: str) -> GroupInfo:
        return self._portal.call(self._bus.describe_group(group))

    def describe_groups(self) -> list[GroupInfo]:
        """Every consumer group, described, sorted by name (a group deleted while they are
        listed is left out). One pass over the server where the transport can."""
        return self._portal.call(self._bus.describe_groups())

    def reset_group(
        self, group: str, topic: str, to: Start | Mapping[int, Offset]
    ) -> dict[int, tuple[Offset | None, Offset | None]]:
        return self._portal.call(self._bus.reset_group(group, topic, to))


async def _next(agen: AsyncIterator[_T]) -> _T:
    return await agen.__anext__()


async def _close(agen: AsyncIterator[Replayed]) -> None:
    aclose = getattr(agen, "aclose", None)
    if aclose is not None:
        await aclose()


def connect(
    url: str = "memory://",
    *,
    codec: Codec | None = None,
    source: str | None = None,
    publish_timeout: float = DEFAULT_TIMEOUT,
    options: Mapping[str, Any] | None = None,
) -> EventBus:
    """A connected blocking :class:`EventBus` for ``url`` (``memory://``, ``redis://``,
    ``rediss://``, ``kafka://``, ``redpanda://``). Raises UnknownTransportError,
    MissingExtraError, ConfigurationError, ConnectionFailedError, AuthenticationError."""
    return EventBus(
        url, codec=codec, source=source, publish_timeout=publish_timeout, options=options
    )


# budgeted batches (twins of eventbus.batching) ------------------------------------------------
class SyncBatch:
    """A batch for the blocking API (twin of :class:`Batch`; deliveries are sync ones)."""

    __slots__ = ("_inner", "_portal", "deliveries")

    def __init__(self, inner: Batch, portal: Portal) -> None:
        self._inner = inner
        self._portal = portal
        self.deliveries: list[Delivery] = [Delivery(d, portal) for d in inner.deliveries]

    @property
    def weight(self) -> float:
        return self._inner.weight

    @property
    def weights(self) -> list[float]:
        return self._inner.weights

    @property
    def budget(self) -> float:
        return self._inner.budget

    @property
    def oversize(self) -> bool:
        return self._inner.oversize

    @property
    def events(self) -> list[Event]:
        return self._inner.events

    def __len__(self) -> int:
        return len(self.deliveries)

    def __iter__(self) -> Iterator[Delivery]:
        return iter(self.deliveries)

    def ack(self) -> None:
        """Ack every delivery of the batch not settled yet."""
        self._portal.call(self._inner.ack())

    def nack(self, delay: float = 0.0) -> None:
        """Give back every delivery not settled yet (again after ``delay`` s)."""
        self._portal.call(self._inner.nack(delay))

    def __repr__(self) -> str:
        return f"<SyncBatch {len(self)} items weight={self.weight:g}/{self.budget:g}>"


class BatchSubscription:
    """Budgeted batches for the blocking API: ``for batch in subscription``; close to leave."""

    def __init__(self, inner: AsyncBatchSubscription, portal: Portal) -> None:
        self._inner = inner
        self._portal = portal

    @property
    def aio(self) -> AsyncBatchSubscription:
        return self._inner

    def fetch(self, max_wait: float | None = None) -> SyncBatch | None:
        """The next batch, or None when nothing came within ``max_wait`` s."""
        batch = self._portal.call(self._inner.fetch(max_wait))
        return None if batch is None else SyncBatch(batch, self._portal)

    def __iter__(self) -> Iterator[SyncBatch]:
        return self

    def __next__(self) -> SyncBatch:
        try:
            return SyncBatch(self._portal.call(_next(self._inner)), self._portal)
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        """Leave the group: acked items are committed, the rest go back to the group."""
        self._portal.call(self._inner.close())

    def kill(self) -> None:
        """Stop as a crashed process would (tests and drills): nothing is committed."""
        self._portal.call(self._inner.kill())

    def __enter__(self) -> BatchSubscription:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def subscribe_batches_sync(
    bus: EventBus, topics: str | Sequence[str], **settings: Any
) -> BatchSubscription:
    """The blocking twin of :func:`eventbus.batching.subscribe_batches` (same settings), run
    on the bus's loop thread: ``for batch in subscribe_batches_sync(bus, "prompts", ...)``."""
    portal: Portal = bus._portal
    inner = portal.call(subscribe_batches(bus.aio, topics, **settings))
    return BatchSubscription(inner, portal)
