"""The migration's durable control record and member heartbeats.

Both live on the *source* transport (the side every service can already reach), as topics the
contract can serve on any transport:

- ``__eb_migration.<name>`` (1 partition): each record is a full :class:`MigrationState`
  snapshot; the last record is the current state. Writers check the version they read and
  write atomically with that check (:meth:`ControlStore.save`), so two operators (or a
  backfill checkpoint and a cutover) cannot both write the next version.
- ``__eb_migration.<name>.members`` (1 partition, 1 h retention): producers and consumers
  using ``migrate://`` publish a heartbeat every poll interval with the stage generation they
  follow and, for consumers, their group's status. ``advance`` and ``cutover`` read the recent
  ones to know that every live member has caught up.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from eventbus.errors import (
    ConfigurationError,
    EventBusError,
    TopicExistsError,
    TopicNotFoundError,
)
from eventbus.migration._fenced import FencedError, open_fenced_writer, transactional_id
from eventbus.topics import TopicSpec
from eventbus.transport import ConditionalAppend, Offset, Outgoing, Transport

__all__ = [
    "STAGES",
    "ControlConflictError",
    "ControlStore",
    "GroupMigration",
    "GroupTopic",
    "Heartbeat",
    "MigrationState",
    "Side",
    "Stage",
    "TopicMigration",
    "VerifyReport",
    "is_dual",
    "primary_side",
]

Stage = Literal["source-only", "dual-source-primary", "dual-target-primary", "target-only"]
STAGES: tuple[Stage, ...] = (
    "source-only",
    "dual-source-primary",
    "dual-target-primary",
    "target-only",
)
GroupStatus = Literal["source", "pausing-to-target", "target", "pausing-to-source"]
Side = Literal["source", "target"]


def primary_side(stage: Stage) -> Side:
    """The side that is the primary of a topic at ``stage``: publishes go there first (and
    succeed when it has the events), its copies go to the other side, and in a dual stage its
    journal lives there. The source until ``dual-target-primary``, the target from then on.
    Every place that asks "which side is primary" asks this."""
    return "target" if stage in ("dual-target-primary", "target-only") else "source"


def is_dual(stage: Stage) -> bool:
    """Whether ``stage`` writes both sides (``dual-source-primary``, ``dual-target-primary``)."""
    return stage in ("dual-source-primary", "dual-target-primary")


class PartitionDiff(BaseModel):
    source_count: int
    target_count: int
    missing: list[str] = Field(default_factory=list)
    """Event ids on the source but not the target (first 50)."""
    extra: list[str] = Field(default_factory=list)
    """Event ids on the target but not the source (first 50)."""
    reordered_keys: list[str] = Field(default_factory=list)
    payload_mismatch: list[str] = Field(default_factory=list)
    missing_count: int = 0
    extra_count: int = 0
    beyond_source_retention: int = 0
    """Events only on the target, older than the oldest event the source still holds (the
    source trimmed them; not counted as extra)."""
    beyond_target_retention: int = 0
    """Events only on the source, older than the oldest event the target still holds."""

    @property
    def ok(self) -> bool:
        return not (
            self.missing_count or self.extra_count or self.reordered_keys or self.payload_mismatch
        )


class VerifyReport(BaseModel):
    topic: str
    checked_at: datetime
    partitions: dict[int, PartitionDiff]
    related: list[VerifyReport] = Field(default_factory=list)
    """Reports of the topics verified with this one (its dead-letter topic)."""

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.partitions.values()) and all(r.ok for r in self.related)

    def summary(self) -> str:
        own = self._own_summary()
        return "\n".join([own, *(r.summary() for r in self.related)])

    def _own_summary(self) -> str:
        aged = [
            f"{sum(p.beyond_source_retention for p in self.partitions.values())} older events "
            "only on the target (the source trimmed them)",
            f"{sum(p.beyond_target_retention for p in self.partitions.values())} older events "
            "only on the source (the target expired them)",
        ]
        aged = [a for a in aged if not a.startswith("0 ")]
        window = (
            "; compared what both sides retain, not counted: " + ", ".join(aged) if aged else ""
        )
        if all(p.ok for p in self.partitions.values()):
            total = sum(p.source_count for p in self.partitions.values())
            return (
                f"{self.topic}: identical ({total} events in {len(self.partitions)} "
                f"partitions){window}"
            )
        lines = [f"{self.topic}: DIFFERENT{window}"]
        for p, diff in sorted(self.partitions.items()):
            if diff.ok:
                continue
            lines.append(
                f"  partition {p}: source {diff.source_count}, target {diff.target_count}, "
                f"missing {diff.missing_count} {diff.missing[:5]}, extra {diff.extra_count} "
                f"{diff.extra[:5]}, reordered keys {diff.reordered_keys[:5]}, payload "
                f"mismatches {diff.payload_mismatch[:5]}"
            )
        return "\n".join(lines)


class TopicMigration(BaseModel):
    stage: Stage = "source-only"
    generation: int = 0
    """Grows with every stage change; members acknowledge the generation they follow."""
    partitions: int = 1
    backfill_done: bool = False
    backfill_checkpoint: dict[int, tuple[str, str]] = Field(default_factory=dict)
    """partition -> (last source offset copied, its target offset), a lower bound on resume."""
    backfilled: int = 0
    verify: VerifyReport | None = None
    target_only_at: datetime | None = None
    """When the topic last went ``target-only`` (events after it were written to the target
    only)."""
    reverse_pending: bool = False
    """Rolled back from ``target-only``: the events written meanwhile are on the target only,
    so copies to the source wait in the journal until ``backfill`` has copied them back."""

    @property
    def primary(self) -> Side:
        """The side that is primary at the current stage (see :func:`primary_side`)."""
        return primary_side(self.stage)

    @property
    def dual(self) -> bool:
        """Whether the current stage writes both sides (see :func:`is_dual`)."""
        return is_dual(self.stage)


MAX_SKIP_RANGES = 20_000
"""Skip ranges a group may carry in the control record (all its topics together). Ranges of
consecutive records keep the list short; beyond this, cutover refuses before changing anything
(a group that finished records in that scattered an order: let it drain, or use --exact)."""


class GroupTopic(BaseModel):
    """A group's positions on one topic, as set at its last switch."""

    start: dict[int, str] = Field(default_factory=dict)
    """The next offset the group reads on its current side, per partition."""
    boundary: dict[int, str] = Field(default_factory=dict)
    """Last offset of each partition on the new side when the group switched."""
    skip: dict[int, list[tuple[str, str]]] = Field(default_factory=dict)
    """Inclusive ranges ``(first, last)`` of consecutive records from ``start`` up to
    ``boundary`` already handled on the old side: members ack them without handling them."""
    skipped: int = 0
    """How many records the ranges cover."""


class GroupMigration(BaseModel):
    """Where one consumer group reads, for every migrated topic it reads (a group moves with
    all its topics at once: its members read every topic from one side)."""

    topic: str
    """The first of ``topics`` (kept for older records and one-line displays)."""
    topics: list[str] = Field(default_factory=list)
    status: GroupStatus = "source"
    positions: dict[str, GroupTopic] = Field(default_factory=dict)
    """Per topic: start, boundary and skip ranges set at the last switch."""
    switched_at: datetime | None = None

    @model_validator(mode="before")
    @classmethod
    def _older_record(cls, data: Any) -> Any:
        """Records written before groups had several topics: one topic, flat positions."""
        if not isinstance(data, dict) or "positions" in data:
            return data
        data = dict(data)
        topic = data.get("topic", "")
        flat = {k: data.pop(k) for k in ("start", "boundary", "skip") if k in data}
        skip = {p: [(o, o) for o in offsets] for p, offsets in flat.get("skip", {}).items()}
        data.setdefault("topics", [topic] if topic else [])
        data["positions"] = {
            topic: {
                "start": flat.get("start", {}),
                "boundary": flat.get("boundary", {}),
                "skip": skip,
                "skipped": sum(len(r) for r in skip.values()),
            }
        }
        return data

    def reads(self, topic: str) -> bool:
        return topic in self.topics or topic == self.topic

    @property
    def skipped(self) -> int:
        """Records skipped over all topics."""
        return sum(t.skipped for t in self.positions.values())


class MigrationState(BaseModel):
    name: str
    version: int = 0
    source: str = ""
    """Redacted source URL, for display only."""
    target: str = ""
    topics: dict[str, TopicMigration] = Field(default_factory=dict)
    groups: dict[str, GroupMigration] = Field(default_factory=dict)
    updated: datetime = Field(default_factory=lambda: datetime.now(UTC))

    def topic(self, name: str) -> TopicMigration:
        try:
            return self.topics[name]
        except KeyError:
            raise ConfigurationError(
                f"topic {name!r} is not part of migration {self.name!r}; add it with "
                "'eventbus migrate init --topic ...'"
            ) from None


class Heartbeat(BaseModel):
    member: str
    role: Literal["producer", "consumer"]
    time: datetime
    topics: dict[str, int] = Field(default_factory=dict)
    """topic -> stage generation this member follows."""
    groups: dict[str, str] = Field(default_factory=dict)
    """group -> its status as this member sees it ("paused" once drained for a switch)."""
    reads: dict[str, list[str]] = Field(default_factory=dict)
    """group -> the topics this member reads in it (a cutover moves a group with all)."""
    copy_failures: dict[str, datetime] = Field(default_factory=dict)
    """topic -> when a copy this member wrote last failed and had to be journaled after the
    fact (a cancel, an error that is not transient): a verification older than that does
    not count."""


class ControlConflictError(ConfigurationError):
    """The control record changed between reading it and writing the next version."""


class ControlStore:
    """Reads and writes one migration's control record and heartbeats on ``transport``."""

    def __init__(self, transport: Transport, name: str) -> None:
        self.transport = transport
        self.name = name
        self.topic = f"__eb_migration.{name}"
        self.members_topic = f"__eb_migration.{name}.members"

    async def ensure(self) -> None:
        for spec in (
            TopicSpec(name=self.topic),
            TopicSpec(name=self.members_topic, retention_ms=3_600_000),
        ):
            with contextlib.suppress(TopicExistsError):
                await self.transport.create_topic(spec)

    async def load(self) -> MigrationState | None:
        """The current state, or None when the migration was never initialised."""
        return (await self._load())[0]

    async def _load(self) -> tuple[MigrationState | None, Offset | None]:
        """The current state and the offset of its record (None, None: no record)."""
        try:
            info = await self.transport.describe_topic(self.topic)
        except EventBusError:
            return None, None
        if not info.partitions or info.partitions[0].last is None:
            return None, None
        first, last = info.partitions[0].first, info.partitions[0].last
        back = 1
        while True:
            # on Kafka the last offsets can be transaction markers (no record): look further
            # back until a record shows up
            start = last if not isinstance(last, int) else max(last - back + 1, 0)
            if isinstance(first, int) and isinstance(start, int):
                start = max(start, first)
            records = await self.transport.read(
                self.topic, 0, start, inclusive=True, limit=back + 1
            )
            if records:
                record = records[-1]
                return MigrationState.model_validate_json(record.value), record.offset
            if not isinstance(start, int) or start <= (first if isinstance(first, int) else 0):
                return None, None
            back *= 4

    async def require(self) -> MigrationState:
        state = await self.load()
        if state is None:
            raise ConfigurationError(
                f"migration {self.name!r} has not been initialised on the source; run "
                "'eventbus migrate init' first"
            )
        return state

    async def save(self, state: MigrationState, *, expected_version: int | None) -> MigrationState:
        """Write ``state`` as the next version, atomically against other writers: raises
        ControlConflictError when someone else changed the record since
        ``expected_version`` was read (read again and retry); None writes unconditionally.

        The check and the write are one step: on a transport with ConditionalAppend (memory,
        Redis: a Lua script) the record is appended only if the last record is still the one
        compared; on Kafka every writer of the migration uses one ``transactional.id``, and
        opening it fences the writers before (a fenced writer's commit fails), so a writer
        that compared an older record cannot commit after another one did."""
        if isinstance(self.transport, ConditionalAppend):
            return await self._save_cas(self.transport, state, expected_version)
        tid = transactional_id("control", self.name, "record")
        writer = await open_fenced_writer(self.transport, tid, topic=self.topic)
        try:
            current, _ = await self._load()
            new = self._next(state, current, expected_version)
            await writer.write(self.topic, [self._record(new)], timeout=30.0)
        except FencedError as exc:
            raise ControlConflictError(
                f"migration {self.name!r}: another command wrote the control record at the "
                "same time; run the command again"
            ) from exc
        finally:
            await writer.close()
        return new

    async def _save_cas(
        self, transport: ConditionalAppend, state: MigrationState, expected: int | None
    ) -> MigrationState:
        for _ in range(20):  # only an unconditional save (expected None) goes round again
            current, offset = await self._load()
            new = self._next(state, current, expected)
            written = await transport.append_if_last(
                self.topic, 0, offset, self._record(new), timeout=30.0
            )
            if written is not None:
                return new
            if expected is not None:
                raise self._conflict(None, expected)
        raise self._conflict(None, expected)

    def _next(
        self, state: MigrationState, current: MigrationState | None, expected: int | None
    ) -> MigrationState:
        have = current.version if current is not None else None
        if expected is not None and have != expected:
            raise self._conflict(have, expected)
        return state.model_copy(
            update={"version": (have or 0) + 1, "updated": datetime.now(UTC)}, deep=True
        )

    def _conflict(self, have: int | None, expected: int | None) -> ControlConflictError:
        seen = "" if have is None else f"version {have}, "
        return ControlConflictError(
            f"migration {self.name!r} changed while this command ran ({seen}expected "
            f"{expected}); run the command again"
        )

    @staticmethod
    def _record(state: MigrationState) -> Outgoing:
        return Outgoing(value=state.model_dump_json().encode(), partition=0)

    async def heartbeat(self, beat: Heartbeat) -> None:
        """Publish a heartbeat (creating the topics on first use, so members that start before
        ``init`` are already visible to the operator)."""
        record = [Outgoing(value=beat.model_dump_json().encode())]
        try:
            await self.transport.publish(self.members_topic, record, timeout=10.0)
        except TopicNotFoundError:
            await self.ensure()
            await self.transport.publish(self.members_topic, record, timeout=10.0)

    async def live_members(self, window: float) -> dict[str, Heartbeat]:
        """The latest heartbeat of each member seen in the last ``window`` seconds."""
        since = datetime.now(UTC) - timedelta(seconds=window)
        out: dict[str, Heartbeat] = {}
        start: Any = since
        inclusive = True
        while True:
            try:
                page = await self.transport.read(
                    self.members_topic, 0, start, inclusive=inclusive, limit=1000
                )
            except EventBusError:
                return out
            for record in page:
                beat = Heartbeat.model_validate_json(record.value)
                if beat.time >= since:
                    out[beat.member] = beat
            if len(page) < 1000:
                return out
            start, inclusive = page[-1].offset, False


def encode_json(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def now_ms() -> int:
    return time.time_ns() // 1_000_000
