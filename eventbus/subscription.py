"""Group membership: :class:`AsyncSubscription` (a member's stream of deliveries) and
:class:`AsyncDelivery` (one event to ack, nack or dead-letter).

This is where a record becomes an event or goes to the dead-letter topic with the reason, and
where a delivery is settled. The runner and batches build on it; :mod:`eventbus.aio` opens
subscriptions. It imports nothing above itself: the bus is the :class:`SubscribingBus` protocol.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from eventbus.errors import (
    ClosedError,
    ConfigurationError,
    InvalidPositionError,
    SerializationError,
)
from eventbus.event import Codec, Event, decode_record
from eventbus.observability import instruments
from eventbus.transport import (
    Capabilities,
    ConsumerOptions,
    Position,
    Record,
    Transport,
    TransportConsumer,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "AsyncDelivery",
    "AsyncSubscription",
    "Start",
    "SubscribeOptions",
    "SubscribingBus",
    "dead_letter_headers",
    "default_consumer_name",
    "lane_of",
    "parse_start",
]

Start = Literal["earliest", "latest"] | datetime | Position | str
"""Where reading starts: an end of the topic, a time, a position, or any of these as text."""

DEFAULT_TIMEOUT = 30.0


def parse_start(value: Start | None) -> Literal["earliest", "latest"] | datetime | Position:
    """Normalise a start: ``"earliest"``, ``"latest"``, a datetime (naive means UTC), a
    :class:`Position`, or text of either (ISO time, ``"p:offset"``). Raises
    InvalidPositionError for anything else."""
    if value is None or value == "earliest":
        return "earliest"
    if value == "latest":
        return "latest"
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, Position):
        return value
    text = str(value).strip()
    if ":" in text and text.split(":", 1)[0].isdigit():
        return Position.parse(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidPositionError(
            f"{value!r} is not a start: use earliest, latest, an ISO time such as "
            "2026-01-31T12:00:00Z, or PARTITION:OFFSET"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"


def dead_letter_headers(
    record: Record, reason: BaseException | str, attempts: int, group: str | None
) -> dict[str, bytes]:
    """The headers a dead-lettered copy carries: why, after how many attempts, from where."""
    text = reason if isinstance(reason, str) else f"{type(reason).__name__}: {reason}"
    headers = {
        "eb-dlq-reason": text[:2000].encode("utf-8", errors="replace"),
        "eb-dlq-attempts": str(attempts).encode(),
        "eb-dlq-source": f"{record.topic}/{record.partition}/{record.offset}".encode(),
        "eb-dlq-time": datetime.now(UTC).isoformat().encode(),
    }
    if group is not None:
        headers["eb-dlq-group"] = group.encode()
    return headers


@dataclass(frozen=True, slots=True)
class SubscribeOptions:
    """How a group member reads: the one set of settings shared by ``subscribe``, the runner
    and budgeted batches, validated once, when it is made (see
    :meth:`~eventbus.aio.AsyncEventBus.subscribe` for each setting's meaning).

    Raises ConfigurationError for a setting out of range or a start that is not earliest,
    latest or a time (a new group cannot start at a position: reset the group first)."""

    consumer: str | None = None
    model: type[BaseModel] | None = None
    start: Start = "earliest"
    dead_letter: str | bool = True
    visibility_timeout: float = 30.0
    session_timeout: float = 10.0
    batch_size: int = 100
    options: Mapping[str, str] | None = None
    max_lease: float = 3600.0

    def __post_init__(self) -> None:
        for name in ("visibility_timeout", "session_timeout", "max_lease"):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigurationError(f"{name} must be a number of seconds > 0, not {value!r}")
        if self.batch_size < 1:
            raise ConfigurationError(f"batch_size must be at least 1, not {self.batch_size!r}")
        if isinstance(self.start_at(), Position):
            raise ConfigurationError(
                "a new group starts at earliest, latest or a time; to start at a position, "
                "use reset_group(group, topic, {partition: offset}) first"
            )

    @classmethod
    def pick(cls, settings: Mapping[str, Any]) -> SubscribeOptions:
        """The options among ``settings``, a function's keyword arguments (others are ignored;
        an absent one keeps its default). ``subscribe``, the runner and budgeted batches build
        theirs this way, so a new option is added here and to their signatures, nowhere else."""
        return cls(**{f.name: settings[f.name] for f in fields(cls) if f.name in settings})

    def start_at(self) -> Literal["earliest", "latest"] | datetime | Position:
        """``start`` normalised (see :func:`parse_start`)."""
        return parse_start(self.start)

    def consumer_options(self) -> ConsumerOptions:
        """What the transport's ``open_consumer`` takes."""
        start = self.start_at()
        assert not isinstance(start, Position)  # refused when made
        return ConsumerOptions(
            start=start,
            visibility_timeout=self.visibility_timeout,
            session_timeout=self.session_timeout,
            max_lease=self.max_lease,
            options=dict(self.options or {}),
        )


def lane_of(record: Record) -> object:
    """The ordering lane of a record: records of one key in one partition keep their order
    (the runner and batches handle a lane one record at a time); a keyless record is a lane
    of its own."""
    if record.key is not None:
        return (record.topic, record.partition, record.key)
    return (record.topic, record.partition, record.offset)


class SubscribingBus(Protocol):
    """What the consume side (subscriptions, the runner, batches) needs of a bus;
    :class:`~eventbus.aio.AsyncEventBus` is one. A protocol, so the core under the bus does
    not import it."""

    @property
    def transport(self) -> Transport: ...

    @property
    def codec(self) -> Codec: ...

    @property
    def capabilities(self) -> Capabilities: ...

    async def ensure_topic(self, name: str, partitions: int = 1) -> None: ...

    async def subscribe_with(
        self, topics: str | Iterable[str], group: str, settings: SubscribeOptions
    ) -> AsyncSubscription: ...


class AsyncDelivery:
    """One event handed to a group member. Ack it when done, or nack it to get it again.

    ``attempt`` is 1 on first delivery and grows with each redelivery."""

    __slots__ = ("_acked", "_subscription", "event", "record")

    def __init__(self, subscription: AsyncSubscription, record: Record, event: Event) -> None:
        self._subscription = subscription
        self.record = record
        self.event = event
        self._acked = False

    @property
    def topic(self) -> str:
        return self.record.topic

    @property
    def partition(self) -> int:
        return self.record.partition

    @property
    def position(self) -> Position:
        return self.record.position

    @property
    def attempt(self) -> int:
        return self.record.attempt

    @property
    def settled(self) -> bool:
        """True once acked, nacked or dead-lettered (or claimed for a batch settlement)."""
        return self._acked

    def claim(self) -> bool:
        """Mark the delivery settled without telling the server, for a caller that settles
        many in one call (``AsyncSubscription.ack``, batches, the runner). Returns False when
        it was settled already: then the caller must leave it alone."""
        if self._acked:
            return False
        self._acked = True
        return True

    async def ack(self) -> None:
        """Mark the event done for the group; it is not delivered to the group again.

        The member sends acks to the server in the background, those made close together in
        one call, and before its next fetch and when it closes; ``ack`` does not wait for
        that. If the process dies first, the event is delivered again (at least once)."""
        if self.claim():
            await self._subscription.consumer.ack([self.record])
            self._subscription.count("acked", 1, self.record.topic)

    async def nack(self, delay: float = 0.0) -> None:
        """Give the event back; it is delivered again no sooner than ``delay`` seconds."""
        if self.claim():
            await self._subscription.consumer.nack(self.record, delay)
            self._subscription.count("nacked", 1, self.record.topic)

    async def dead_letter(self, reason: BaseException | str) -> None:
        """Send the event to the subscription's dead-letter topic with ``reason`` and ack it."""
        if self.claim():
            await self._subscription.send_to_dead_letter(self.record, reason, self.attempt)

    def __repr__(self) -> str:
        return f"<AsyncDelivery {self.topic} {self.position} attempt={self.attempt}>"


class AsyncSubscription:
    """A group member's stream of deliveries: ``async for delivery in subscription``.

    Records that cannot be decoded (or do not validate as ``model``) never reach the caller:
    they go to the dead-letter topic with the reason and are acked, and reading goes on."""

    def __init__(
        self,
        bus: SubscribingBus,
        topics: tuple[str, ...],
        group: str,
        consumer: TransportConsumer,
        model: type[BaseModel] | None,
        dead_letter: str | None,
        batch_size: int,
    ) -> None:
        self.bus = bus
        self.topics = topics
        self.group = group
        self.consumer = consumer
        self.model = model
        self.dead_letter_topic = dead_letter
        self.batch_size = batch_size
        self._buffer: list[AsyncDelivery] = []
        self._closed = False
        self._system = bus.transport.capabilities.transport

    def count(self, name: str, amount: int, topic: str) -> None:
        """Report ``amount`` to the metric ``name`` for this subscription's group."""
        instruments().count(name, amount, self._system, topic, self.group)

    async def fetch(
        self, max_records: int | None = None, timeout: float = 1.0
    ) -> list[AsyncDelivery]:
        """Up to ``max_records`` deliveries, waiting up to ``timeout`` s for the first."""
        if self._closed:
            raise ClosedError("this subscription is closed")
        if self._buffer:
            n = max_records or self.batch_size
            out, self._buffer = self._buffer[:n], self._buffer[n:]
            return out
        records = await self.consumer.fetch(max_records or self.batch_size, timeout)
        return await self._decode_all(records)

    def decode(self, record: Record) -> AsyncDelivery | SerializationError:
        """The delivery of ``record``, or why it cannot be one (it does not decode, does not
        validate as ``model``, or does not fit its topic's stream layout): the caller then
        dead-letters it with that reason. The one place a record becomes an event, for
        ``fetch``, the runner and batches."""
        try:
            event = decode_record(record, self.bus.codec, self.model)
        except SerializationError as exc:
            return exc
        return AsyncDelivery(self, record, event)

    async def _decode_all(self, records: list[Record]) -> list[AsyncDelivery]:
        out: list[AsyncDelivery] = []
        self.note_fetched(records)
        for record in records:
            delivery = self.decode(record)
            if isinstance(delivery, SerializationError):
                await self.send_to_dead_letter(record, delivery, record.attempt)
                continue
            out.append(delivery)
        return out

    async def ack(self, deliveries: Iterable[AsyncDelivery]) -> None:
        """Ack many deliveries in one call to the server (cheaper than one ack each)."""
        records = [delivery.record for delivery in deliveries if delivery.claim()]
        if records:
            await self.consumer.ack(records)
            self.count_records("acked", records)

    def count_records(self, name: str, records: Sequence[Record]) -> None:
        """Add each topic's number of ``records`` to the metric ``name`` (one call per topic)."""
        if not records or not instruments().enabled:
            return
        topic = records[0].topic
        if all(r.topic == topic for r in records):
            self.count(name, len(records), topic)
            return
        per_topic: dict[str, int] = {}
        for record in records:
            per_topic[record.topic] = per_topic.get(record.topic, 0) + 1
        for name_of_topic, amount in per_topic.items():
            self.count(name, amount, name_of_topic)

    def note_fetched(self, records: list[Record]) -> None:
        """Count deliveries (and redeliveries) for the metrics."""
        if records and instruments().enabled:
            self.count_records("consumed", records)
            self.count_records("redelivered", [r for r in records if r.attempt > 1])

    async def send_to_dead_letter(
        self, record: Record, reason: BaseException | str, attempts: int
    ) -> None:
        """Move ``record`` to the dead-letter topic (acking it); nack it if there is none."""
        if self.dead_letter_topic is None:
            # nowhere to put it: give it back rather than lose it
            await self.consumer.nack(record, 1.0)
            return
        await self.bus.ensure_topic(self.dead_letter_topic)
        headers = dead_letter_headers(record, reason, attempts, self.group)
        await self.consumer.dead_letter(record, self.dead_letter_topic, headers)
        self.count("dead_lettered", 1, record.topic)

    def __aiter__(self) -> AsyncSubscription:
        return self

    async def __anext__(self) -> AsyncDelivery:
        while not self._closed:
            if not self._buffer:
                self._buffer = await self.fetch(timeout=0.5)
            if self._buffer:
                return self._buffer.pop(0)
        raise StopAsyncIteration

    async def close(self) -> None:
        """Leave the group: acked events are committed, the rest go back to the group."""
        if not self._closed:
            self._closed = True
            self._buffer.clear()
            await self.consumer.close()

    async def kill(self) -> None:
        """Stop as a crashed process would (for tests and drills): nothing is committed."""
        self._closed = True
        await self.consumer.kill()

    async def __aenter__(self) -> AsyncSubscription:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
