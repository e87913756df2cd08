"""Per-partition state of a Kafka group member: what was handed out, what is done, the
leases the application holds, and the offset to commit (with the delivery counts and done
ranges that go in the commit metadata). Plain data, used on the member's thread."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from eventbus.adapters.kafka._cloudevents import from_kafka
from eventbus.adapters.kafka._metadata import (
    METADATA_BUDGET,
    CommitMetadata,
    encode_metadata_checked,
)
from eventbus.transport import Record

log = logging.getLogger("eventbus.kafka")


def to_record(msg: Any, attempt: int = 1) -> Record:
    """A Record from a librdkafka message (tombstones read as empty bytes). A CloudEvent
    (binary or structured) comes back in eventbus's layout (see ``_cloudevents``)."""
    raw = msg.headers()
    headers = dict(raw) if raw else {}
    if None in headers.values():  # a header without a value (allowed by Kafka)
        headers = {k: (v if v is not None else b"") for k, v in headers.items()}
    _, timestamp = msg.timestamp()
    record = Record(
        topic=msg.topic(),
        partition=msg.partition(),
        offset=msg.offset(),
        value=msg.value() or b"",
        key=msg.key(),
        headers=headers,
        timestamp_ms=max(0, timestamp),
        attempt=attempt,
    )
    if headers and "eb-id" not in headers:  # not eventbus's layout: maybe a CloudEvent
        return from_kafka(record)
    return record


@dataclass(eq=False, slots=True)
class Lease:
    """A record the application holds: the copy handed out, its attempt, since when."""

    record: Record
    offset: int
    attempt: int
    since: float
    previous: Record | None = None
    """The copy handed out before this one (released, nacked or expired), if any."""

    def matches(self, record: Record) -> bool:
        """``record`` is the copy this lease is for: the object handed out, or a copy of it
        with the same attempt (but never the earlier copy of a released record, which has
        the same attempt)."""
        return record is self.record or (
            record.attempt == self.attempt and record is not self.previous
        )


@dataclass(eq=False)
class PartitionState:
    """What one member knows about one of its partitions."""

    key: tuple[str, int]
    committed: int
    """The offset the group has committed (next to read), or -1."""
    high: int = -1
    """Next offset after the last record handed out or skipped, or -1 before the first."""
    outstanding: set[int] = field(default_factory=set)
    """Offsets handed out and not acked: leased, in the delay queue, or released."""
    counts: dict[int, int] = field(default_factory=dict)
    """Deliveries so far of outstanding offsets (a release takes one back)."""
    leases: dict[int, Lease] = field(default_factory=dict)
    """The outstanding offsets the application holds."""
    prior: CommitMetadata = field(default_factory=CommitMetadata)
    """What the commit metadata said at assignment."""
    sent: tuple[int, str] | None = None
    """The last (offset, metadata) committed."""
    overflow_logged: bool = False

    def deliver(self, record: Record, now: float) -> Record:
        """Hand ``record`` out (again) and lease it; returns the copy with its attempt."""
        offset = record.offset
        assert isinstance(offset, int)
        previous: Record | None = None
        if offset in self.outstanding:
            attempt = self.counts.get(offset, 0) + 1
            previous, record = record, replace(record, attempt=attempt)
        else:  # fresh from librdkafka: nobody else has this object
            attempt = self.first_attempt(offset)
            record.attempt = attempt
            self.outstanding.add(offset)
            self.high = max(self.high, offset + 1)
        self.counts[offset] = attempt
        self.leases[offset] = Lease(record, offset, attempt, now, previous)
        return record

    def skip(self, offset: int) -> None:
        """A record the previous owner recorded as done: pass it without handing it out."""
        self.high = max(self.high, offset + 1)

    def release(self, offset: int) -> None:
        """The application gives the record back unstarted: that delivery does not count."""
        self.leases.pop(offset, None)
        self.counts[offset] = max(0, self.counts.get(offset, 1) - 1)

    def done(self, offset: int) -> None:
        self.outstanding.discard(offset)
        self.counts.pop(offset, None)
        self.leases.pop(offset, None)

    def held_until(self, max_lease: float) -> float | None:
        """When the last lease the application holds ends, or None if it holds none."""
        if not self.leases:
            return None
        return max(lease.since for lease in self.leases.values()) + max_lease

    def first_attempt(self, offset: int) -> int:
        if self.committed <= offset < self.prior.high:
            return self.prior.counts.get(offset, 1) + 1
        return 1

    def done_ranges(self, commit: int) -> list[tuple[int, int]]:
        """The done offsets in ``[commit, max(high, prior.high))``: in what was handed out,
        all that is not outstanding (acked, skipped, or never existed); above it, what the
        previous owner recorded and this member has not reached yet."""
        out: list[tuple[int, int]] = []
        start = commit
        for offset in sorted(self.outstanding):
            if offset > start:
                out.append((start, offset))
            start = offset + 1
        if start < self.high:
            out.append((start, self.high))
        for begin, end in self.prior.done:
            begin = max(begin, self.high, commit)
            if begin >= end:
                continue
            if out and out[-1][1] == begin:
                out[-1] = (out[-1][0], end)
            else:
                out.append((begin, end))
        return out

    def position(self, force: bool = False) -> tuple[int, str] | None:
        """The commit to send now, or None when nothing changed (unless ``force``)."""
        if self.high < 0:
            return None
        offset = min(self.outstanding) if self.outstanding else self.high
        # keep what the previous owner recorded for offsets we have not fetched again yet
        counts = {o: c for o, c in self.prior.counts.items() if o >= self.high}
        counts.update((o, c) for o, c in self.counts.items() if o >= offset)
        text, complete = encode_metadata_checked(
            max(self.high, self.prior.high), counts, self.done_ranges(offset)
        )
        if not complete and not self.overflow_logged:
            self.overflow_logged = True
            log.warning(
                "%s/%d: the commit metadata cannot list every acked record above the first "
                "un-acked one (%d characters): if this partition moves, the next owner "
                "delivers some of them again",
                self.key[0],
                self.key[1],
                METADATA_BUDGET,
            )
        commit = (offset, text)
        return None if commit == self.sent and not force else commit
