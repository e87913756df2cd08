"""The transport contract: what an adapter implements, in bytes, records and positions.

Everything above this line (envelope, codec, validation, retries, dead letters, dedupe, the
sync facade) lives once in the core. An adapter implements :class:`Transport` and
:class:`TransportConsumer`, declares its :class:`Capabilities`, and maps its driver's exceptions
to :mod:`eventbus.errors` at its edge. All methods are coroutines, run on one event loop per
transport instance; an adapter over a blocking driver runs the driver off the loop.

Guarantees every adapter gives (the conformance suite in :mod:`eventbus.testing` checks each):

- ``publish`` returns only once the server holds every record (or raises). A record with a key
  lands on ``partition_for_key(key, partitions)``; a record with ``partition`` set lands there;
  otherwise the adapter picks one. Records of one call to one partition keep their order.
- A consumer in a group receives records of one partition in position order. A record handed to
  a member is leased to it: it is not handed to another member, nor again to the same one, until
  it is acked (never again), nacked (again after the delay), released (again at once), or the
  lease ends. The member renews the leases of every record it holds in the background, whether
  or not the application calls ``fetch``, so a record queued locally or inside a slow handler
  stays with its member. A lease ends when its member dies or hangs (after the visibility
  timeout without a renewal), loses the record's partition and releases it, or has held it
  past ``max_lease`` (logged; redelivered with ``attempt`` increased). Closing a consumer
  returns what it did not ack to the group.
- Positions (``Offset``) are an ``int`` (memory, Kafka) or a Redis entry id ``"<ms>-<seq>"``;
  they only grow within a partition. Never derive counts from offset arithmetic: gaps exist.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

from eventbus.topics import TopicSpec

__all__ = [
    "Capabilities",
    "ConsumerOptions",
    "CopyClients",
    "DescribesGroups",
    "DescribesTopics",
    "EntrySample",
    "FencedWriter",
    "FencedWrites",
    "GroupInfo",
    "GroupMember",
    "GroupPartition",
    "LeasedConsumer",
    "Offset",
    "Outgoing",
    "PartitionInfo",
    "Position",
    "Record",
    "ResetTarget",
    "TopicInfo",
    "Transport",
    "TransportConsumer",
    "TrimsFinished",
    "offset_key",
    "parse_offset",
    "record_size",
]

Offset = int | str
"""A position inside one partition: an int offset, or a Redis entry id ``"<ms>-<seq>"``."""

ResetTarget = Literal["earliest", "latest"] | datetime | Mapping[int, Offset]
"""Where a group is moved to: an end of the topic, a time, or an offset per partition.

For a mapping, the offset is the next record the group reads in that partition."""


def offset_key(offset: Offset) -> tuple[int, int]:
    """A sort key that orders offsets of one partition, for ints and Redis ids alike."""
    if isinstance(offset, int):
        return (offset, 0)
    ms, _, seq = offset.partition("-")
    return (int(ms), int(seq or 0))


def parse_offset(text: str) -> Offset:
    """Parse an offset as printed: ``"42"`` is an int offset, ``"1700000000000-0"`` a Redis id.

    Raises :class:`~eventbus.errors.InvalidPositionError` for anything else."""
    from eventbus.errors import InvalidPositionError

    text = text.strip()
    if text.isdigit():
        return int(text)
    ms, sep, seq = text.partition("-")
    if sep and ms.isdigit() and seq.isdigit():
        return f"{int(ms)}-{int(seq)}"
    raise InvalidPositionError(
        f"{text!r} is not a position: use an integer offset (Kafka, memory) or a Redis entry "
        "id such as 1700000000000-0"
    )


@dataclass(frozen=True, slots=True, order=False)
class Position:
    """Where an event sits: a partition and an offset inside it. Printed as ``"p:offset"``."""

    partition: int
    offset: Offset

    def __str__(self) -> str:
        return f"{self.partition}:{self.offset}"

    @classmethod
    def parse(cls, text: str) -> Position:
        """Parse ``"p:offset"``; raises :class:`~eventbus.errors.InvalidPositionError`."""
        from eventbus.errors import InvalidPositionError

        part, sep, off = text.partition(":")
        if not sep or not part.strip().isdigit():
            raise InvalidPositionError(
                f"{text!r} is not a position: write PARTITION:OFFSET, for example 0:42 or "
                "0:1700000000000-0"
            )
        return cls(int(part), parse_offset(off))


@dataclass(slots=True)
class Outgoing:
    """One record to publish: bytes and string headers, as the adapter writes them."""

    value: bytes
    key: bytes | None = None
    headers: Mapping[str, bytes] = field(default_factory=dict)
    timestamp_ms: int | None = None
    """Record time; the adapter may use the server's clock where it cannot store one."""
    partition: int | None = None
    """Explicit partition; ``None`` means hash the key (or any partition without a key)."""


def record_size(record: Outgoing) -> int:
    """The size that counts against a topic's max event bytes: value, key and headers."""
    headers = record.headers
    size = len(record.value) + len(record.key or b"")
    return size + sum(map(len, headers)) + sum(map(len, headers.values()))


@dataclass(slots=True)
class Record:
    """One record as read back: where it sits, its bytes, and how often it was delivered."""

    topic: str
    partition: int
    offset: Offset
    value: bytes
    key: bytes | None = None
    headers: dict[str, bytes] = field(default_factory=dict)
    timestamp_ms: int = 0
    attempt: int = 1
    """Delivery count: 1 on first delivery, more after redelivery (from the server or a header)."""
    raw_fields: dict[str, bytes] | None = None
    """For entries written by other clients (for example a plain Redis XADD): their fields.
    Names are decoded as UTF-8 with ``surrogateescape`` on topics with a stream layout, so
    ``name.encode("utf-8", "surrogateescape")`` gives back the exact bytes."""
    decode_error: str | None = None
    """Why this record cannot be read as an event (an entry that does not fit its topic's
    stream layout); decoding raises SerializationError with it, so consumers dead-letter it."""

    @property
    def position(self) -> Position:
        return Position(self.partition, self.offset)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a transport can do. The conformance suite and the docs read these flags."""

    transport: str
    ordering_scope: str = "partition"
    """Per-key order holds within this scope (all transports: one partition)."""
    native_delivery_count: bool = False
    """The server counts deliveries per record (Redis PEL); otherwise a header carries it."""
    redelivery_on_timeout: bool = True
    """A record held past ``max_lease`` goes to its partition's owner (another member after a
    move) once the visibility timeout passes; false: it comes back to the same member at once.
    A live member never loses a record it holds before ``max_lease`` on any transport."""
    timestamp_replay: bool = True
    """Reads and resets can start at a time."""
    retention_by_time: bool = True
    retention_by_size: bool = True
    compaction: bool = False
    transactions: bool = False
    reset_active_group: bool = True
    """A group's positions can be reset while it has live members (Kafka: no)."""
    auto_create_topics: bool = False
    """Publishing to an unknown topic creates it (only when configured so)."""
    atomic_dead_letter: bool = False
    """Dead-lettering writes the copy and acks the original in one atomic step."""
    max_event_bytes: int = 1_048_576
    """The default largest encoded event a topic accepts (Kafka's default, enforced everywhere)."""
    partitions_can_grow: bool = True
    partitions_can_shrink: bool = False
    """Topics can lose partitions in place (no transport can: recreate the topic)."""
    stream_layout: bool = False
    """Topics store a :class:`~eventbus.topics.StreamLayout` and read and write entries in
    it (Redis; memory keeps it in the spec). Elsewhere a layout is accepted and ignored."""
    budget_fetch: bool = False
    """The consumer has ``fetch_budget`` (an atomic claim up to a weight budget), used by
    :mod:`eventbus.batching`; see ``eventbus.batching.BudgetFetcher`` for its contract."""


@dataclass(frozen=True, slots=True)
class ConsumerOptions:
    """How a group member behaves; every adapter honours each field or documents why not."""

    start: Literal["earliest", "latest"] | datetime = "earliest"
    """Where a group that does not exist yet starts. Existing groups keep their positions."""
    visibility_timeout: float = 30.0
    """Seconds a record stays leased to its member after the member's last renewal: how long
    the group waits for a member that died or hangs before its records go to another member.
    A live member renews its leases in the background, so a slow handler does not end one."""
    session_timeout: float = 10.0
    """Seconds without a heartbeat after which a member counts as dead (adapters heartbeat in
    the background, independent of ``fetch``)."""
    max_lease: float = 3600.0
    """Seconds a member keeps a record it holds at most. Past that its lease is not renewed:
    the adapter logs it and the record is redelivered (``attempt`` + 1) even though its handler
    may still run. A bound for handlers that hang, not a timeout for normal slow ones."""
    options: Mapping[str, str] = field(default_factory=dict)
    """Adapter-specific settings, passed through."""

    def replace(self, **changes: object) -> ConsumerOptions:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """One partition of a topic: first and last offsets held, and how many records."""

    partition: int
    first: Offset | None
    last: Offset | None
    count: int


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """A topic as the server has it: its spec (as read back) and its partitions."""

    spec: TopicSpec
    partitions: Sequence[PartitionInfo]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def count(self) -> int:
        return sum(p.count for p in self.partitions)


@dataclass(frozen=True, slots=True)
class GroupMember:
    """A live member of a group and the partitions it owns (topic, partition)."""

    name: str
    assignments: Sequence[tuple[str, int]] = ()
    idle_ms: int | None = None
    pending: int = 0


@dataclass(frozen=True, slots=True)
class GroupPartition:
    """A group's state in one partition.

    ``committed`` is the next offset the group reads (Kafka semantics) where known; on Redis it
    is the last delivered id.

    ``backlog`` is the one number that means the same on every transport: the events of this
    partition the group has not finished, that is not yet delivered to any member plus
    delivered but not yet acked (held, nacked, or waiting for redelivery). It is the number to
    autoscale consumers on and to compare across transports (say, during a migration). Events
    removed from the partition by retention, trimming or deletion before the group got to them
    do not count. None only where the adapter cannot know it.

    ``lag`` and ``pending`` keep their transport-specific meanings:

    - memory, Redis: ``lag`` counts events not yet delivered, ``pending`` events delivered and
      not acked; ``backlog == lag + pending``.
    - Kafka: ``lag`` is the committed-offset lag (end offset - committed offset), which already
      counts delivered but un-acked records, and ``pending`` is 0 (not tracked), so
      ``backlog == lag`` while the committed offset is within the retained log. Where the group
      has no committed offset yet, ``lag`` is None and ``backlog`` counts from the earliest
      retained offset (where a group starts by default); where the committed offset fell
      below the earliest retained one, ``backlog`` counts from the earliest retained offset.
      Kafka's numbers are offset differences: compaction and transaction markers leave gaps,
      so there ``backlog`` (like ``lag``) is an upper bound. The committed offset is the
      lowest record not yet acked, so records acked after it still count until it is acked.
    """

    topic: str
    partition: int
    committed: Offset | None
    lag: int | None
    pending: int = 0
    delivered: Offset | None = None
    """The last offset delivered to the group (inclusive), or None if nothing was."""
    lowest_pending: Offset | None = None
    """The lowest delivered but un-acked offset, or None. A record is done for the group when
    its offset is at most ``delivered`` and below ``lowest_pending``."""
    backlog: int | None = None
    """Events the group has not finished here: not yet delivered plus delivered but un-acked
    (see the class docstring for exceptions per transport); None if unknown."""


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """A consumer group: its state, members and per-partition positions."""

    group: str
    state: str
    members: Sequence[GroupMember]
    partitions: Sequence[GroupPartition]

    @property
    def lag(self) -> int:
        """Sum of the partitions' ``lag`` (unknown counts as 0); transport-specific."""
        return sum(p.lag or 0 for p in self.partitions)

    @property
    def pending(self) -> int:
        """Sum of the partitions' ``pending``; transport-specific (0 on Kafka)."""
        return sum(p.pending for p in self.partitions)

    @property
    def backlog(self) -> int:
        """Events the group has not finished, summed over its partitions: the same number on
        every transport (see :class:`GroupPartition`), and the one to autoscale on. A
        partition whose backlog is unknown (None) counts as 0."""
        return sum(p.backlog or 0 for p in self.partitions)


@runtime_checkable
class TransportConsumer(Protocol):
    """One member of a consumer group, over one or more topics."""

    async def fetch(self, max_records: int, timeout: float) -> list[Record]:
        """Return up to ``max_records`` records for this member, waiting up to ``timeout`` s
        for the first; ``[]`` when none came. Calling fetch is also the member's heartbeat
        (adapters may heartbeat in the background as well). Raises ClosedError after close."""
        ...

    async def ack(self, records: Sequence[Record]) -> None:
        """Mark records done for the group. Idempotent; acking a record this member no longer
        owns (it was redelivered elsewhere) is ignored, not an error."""
        ...

    async def nack(self, record: Record, delay: float = 0.0) -> None:
        """Give a record back: it is delivered again (``attempt`` + 1) no sooner than ``delay``
        seconds from now. Later records of its partition are not held back."""
        ...

    async def dead_letter(self, record: Record, topic: str, headers: Mapping[str, bytes]) -> None:
        """Write the record (key, value, its headers updated with ``headers``) to ``topic`` and
        ack it; atomically where ``Capabilities.atomic_dead_letter`` says so."""
        ...

    async def close(self) -> None:
        """Leave the group. What was acked is committed; what was not goes back to the group."""
        ...

    async def kill(self) -> None:
        """Stop as a crashed process would: no commit, no goodbye. Held records come back to
        the group only after the session or visibility timeout. For tests and drills."""
        ...


@runtime_checkable
class LeasedConsumer(Protocol):
    """A consumer that tells which records it still holds and can give back unstarted ones.

    The core checks :meth:`holds` before it starts a record that waited locally, and releases
    what it will not start (its partition moved to another member, or the lease ended), so a
    slow member never sits on records another member could run and never runs a record after
    its lease ended. Every bundled adapter implements it; it is found by type."""

    @property
    def lease_epoch(self) -> object:
        """A value that changes (compare with ``==``) whenever a lease this member holds may
        have ended other than by its own ack, nack or release: a partition moved, a renewal
        found a record taken, ``max_lease`` passed (noticed within one keepalive period).
        While it is unchanged since a record was fetched, :meth:`holds` is true for it, so a
        caller need not ask per record."""
        ...

    def holds(self, record: Record) -> bool:
        """True while this member holds the record's lease (delivered to it, not settled,
        partition still its own, ``max_lease`` not passed). Cheap: no server round trip."""
        ...

    async def release(self, records: Sequence[Record]) -> None:
        """Give back records delivered to this member that it has not started: they go to
        the partition's owner (this member or the next) without waiting for a timeout, and
        their ``attempt`` is not increased. Records it no longer holds are ignored."""
        ...


@runtime_checkable
class ConditionalAppend(Protocol):
    """Optional: append to a partition only if it has not changed (compare-and-set on a log).
    The migration's control record uses it, so two operators cannot both write the next
    version. Found by type; memory and Redis (one Lua script) implement it."""

    async def append_if_last(
        self,
        topic: str,
        partition: int,
        last: Offset | None,
        record: Outgoing,
        *,
        timeout: float = 10.0,
    ) -> Position | None:
        """Append ``record`` to ``partition`` if its last record is at ``last`` (None: the
        partition is empty), atomically. Returns the new position, or None (nothing written)
        when the partition's last record is another one."""
        ...


@runtime_checkable
class TrimsFinished(Protocol):
    """Optional: delete what one group has finished from a topic only that group reads (the
    migration's journal, whose replayed copies would otherwise stay forever). Found by type;
    memory, Redis and Kafka implement it."""

    async def trim_finished(self, topic: str, group: str, partitions: Sequence[int]) -> int:
        """In each of ``partitions``, delete the records before the first one ``group`` has
        not finished (not yet delivered, or delivered and not acked): nothing the group still
        needs is removed. Other groups' progress is not consulted. A partition where the group
        has no position is left alone. Returns how many records were deleted where the
        transport can tell (Kafka: the offsets passed, an upper bound). Raises
        TopicNotFoundError."""
        ...


@runtime_checkable
class TopicGroups(Protocol):
    """Optional: the consumer groups holding positions on one topic, without describing
    every group of the server. Found by type; memory and Redis implement it."""

    async def topic_groups(self, topic: str) -> list[str]:
        """Names of the groups with positions on ``topic`` (sorted)."""
        ...


@runtime_checkable
class DescribesGroups(Protocol):
    """Optional: every consumer group of the server described in one pass (``eventbus groups
    list``), where ``describe_group`` of each listed group would look at every topic once per
    group. Found by type; Redis implements it."""

    async def describe_groups(self) -> list[GroupInfo]:
        """Every group, as ``describe_group`` describes it, sorted by name."""
        ...


@runtime_checkable
class DescribesTopics(Protocol):
    """Optional: every topic of the server described in a few round trips (``eventbus topics
    list``), not one ``describe_topic`` each. Found by type; Redis implements it."""

    async def describe_topics(self) -> list[TopicInfo]:
        """Every topic of ``list_topics``, as ``describe_topic`` describes it, in that order
        (a topic deleted meanwhile is left out)."""
        ...


@runtime_checkable
class EntrySample(Protocol):
    """Optional: the exact fields of a topic's newest entries, for proposing a stream layout
    (``eventbus topics adopt``). Found by type; Redis implements it."""

    async def sample_entries(
        self, topic: str, count: int
    ) -> list[tuple[Offset, dict[bytes, bytes]]]:
        """Up to ``count`` newest entries of partition 0 (oldest first): id and fields as
        stored. Raises TopicNotFoundError."""
        ...


@runtime_checkable
class FencedWriter(Protocol):
    """Writes the batches of one job (a backfill, a journal partition's replay) so that
    nothing of a batch the writer gave up on can land later. Made by ``FencedWrites``."""

    fenced: bool
    """True when earlier writers of the job are fenced and batches are atomic (Kafka)."""

    async def write(
        self, topic: str, records: Sequence[Outgoing], *, timeout: float
    ) -> Position | None:
        """Write ``records`` atomically where the transport allows; the position of the last
        one (None for no records)."""
        ...

    async def close(self) -> None:
        """Release the writer (waiting for a write still running). Idempotent."""
        ...


@runtime_checkable
class FencedWrites(Protocol):
    """Optional: writers that fence the earlier writers of the same job (the migration's
    backfill, journal replay and control record). Found by type; Kafka implements it with
    one transactional id per job and one transaction per batch. Other transports get plain
    publishes: their writes are single commands that landed or not before the writer gave
    up (memory: in-process; Redis: executed as soon as read, never sent again)."""

    async def fenced_writer(self, job_id: str, topic: str, *, timeout: float) -> FencedWriter:
        """A writer of ``topic`` for the job ``job_id`` that has fenced every earlier writer
        of the job when it is returned (open it before reading what is already there).
        Writes are laid out as this transport's publishes are (its envelope). Raises
        ConfigurationError when the transport is set up so that readers could see what a
        fenced writer left unfinished."""
        ...


@runtime_checkable
class CopyClients(Protocol):
    """Optional: a client of its own for copies that must not land late (the migration's
    dual-write copies). Found by type; Kafka implements it. Other transports are their own
    copy client: a write that failed or timed out there is not sent again."""

    def copy_client(self, timeout: float) -> Transport:
        """A new, unconnected transport to the same server whose writes expire after
        ``timeout`` seconds: when a write fails, nothing of it is still queued to land after
        its replacement."""
        ...


@runtime_checkable
class Transport(Protocol):
    """A connection to one server (or in-memory broker)."""

    capabilities: Capabilities

    async def connect(self) -> None:
        """Check the server answers and the credentials work; raises ConnectionFailedError or
        AuthenticationError with a message that says what to check."""
        ...

    async def close(self) -> None:
        """Flush what is buffered and release connections. Idempotent."""
        ...

    async def publish(
        self, topic: str, records: Sequence[Outgoing], *, timeout: float
    ) -> list[Position]:
        """Write records and return their positions, in order, once the server holds all of
        them. Raises TopicNotFoundError (unless auto-create is configured), EventTooLargeError
        before writing anything when one record exceeds the topic's limit, and
        OperationTimeoutError when ``timeout`` passes (some records may then be written)."""
        ...

    async def read(
        self,
        topic: str,
        partition: int,
        start: Offset | datetime | None,
        *,
        inclusive: bool = True,
        limit: int = 1000,
    ) -> list[Record]:
        """Read up to ``limit`` records of one partition in order, without a group, from the
        beginning (``None``), from an offset (``inclusive`` or just after it), or from the
        first record whose timestamp is at or after a datetime. ``attempt`` is 1."""
        ...

    async def open_consumer(
        self, topics: Sequence[str], group: str, consumer: str, options: ConsumerOptions
    ) -> TransportConsumer:
        """Join ``group`` as member ``consumer``, creating the group at ``options.start`` when
        it does not exist. Raises TopicNotFoundError for a missing topic."""
        ...

    async def create_topic(self, spec: TopicSpec) -> None:
        """Create a topic; raises TopicExistsError if it exists."""
        ...

    async def describe_topic(self, name: str) -> TopicInfo:
        """Raises TopicNotFoundError."""
        ...

    async def list_topics(self) -> list[str]:
        """Names of the topics (internal ones hidden), sorted."""
        ...

    async def alter_topic(self, spec: TopicSpec) -> None:
        """Make the topic match ``spec``: grow partitions, change retention, limits, configs.
        Raises UnsupportedError for what cannot change (fewer partitions)."""
        ...

    async def delete_topic(self, name: str) -> None:
        """Delete a topic and its data. Raises TopicNotFoundError."""
        ...

    async def list_groups(self) -> list[str]:
        """Names of the consumer groups, sorted."""
        ...

    async def describe_group(self, group: str) -> GroupInfo:
        """Raises GroupNotFoundError."""
        ...

    async def reset_group(
        self, group: str, topic: str, to: ResetTarget
    ) -> dict[int, tuple[Offset | None, Offset | None]]:
        """Move ``group`` on ``topic`` so it next reads from ``to``; creates the group if it
        does not exist. Returns ``{partition: (before, after)}`` in ``GroupPartition.committed``
        terms. Raises GroupActiveError where ``reset_active_group`` is false and members live.
        Pending (delivered, un-acked) records of the group on that topic are dropped."""
        ...
