"""What the migration adds to records, and the names it derives from a topic.

Events written by a producer in a dual stage carry ``eb-mig-gen``; copies carry ``eb-copy``
(``dual``, ``backfill`` or ``rollback``) and ``eb-copy-of`` (the offset of the original); a
copy journaled after an interrupted write carries ``eb-maybe-copied``. The backfill copies only
source records without ``eb-mig-gen``, which is how it joins the dual-written tail without
overlap.
"""

from __future__ import annotations

from eventbus.event import H_ID
from eventbus.transport import Outgoing, Record

__all__ = [
    "DLQ_SUFFIX",
    "H_COPY",
    "H_COPY_OF",
    "H_GEN",
    "H_MAYBE",
    "MIGRATION_HEADERS",
    "MIGRATION_ROOM",
    "copy_of",
    "dead_letter_topic",
    "event_id",
]

H_GEN = "eb-mig-gen"
H_COPY = "eb-copy"
H_COPY_OF = "eb-copy-of"
H_MAYBE = "eb-maybe-copied"

MIGRATION_HEADERS = (H_GEN, H_COPY, H_COPY_OF, H_MAYBE)
"""Headers the migration adds to records; a dead letter made from a record drops them (it is
a new event of its own topic, dual-written and copied like any other)."""
MIGRATION_ROOM = 256
"""Bytes the migration's headers may add to an event (names and values of ``eb-mig-gen``,
``eb-copy``, ``eb-copy-of``, ``eb-maybe-copied``, and ``eb-id`` for raw records, with room
to spare). Target topics are created with this much more max event bytes than the source."""

DLQ_SUFFIX = ".dlq"


def dead_letter_topic(topic: str) -> str:
    """The dead-letter topic of ``topic`` (the runner's default name); it is migrated with
    ``topic`` (see ``Migration.init``)."""
    return f"{topic}{DLQ_SUFFIX}"


def event_id(record: Record) -> str:
    """The identity of a record's event on both sides (raw records: their source place)."""
    value = record.headers.get(H_ID)
    if value is not None:
        return value.decode(errors="replace")
    return f"{record.topic}/{record.partition}/{record.offset}"


def copy_of(record: Record, kind: str) -> Outgoing:
    """The copy of ``record`` a backfill (``kind`` ``backfill``, or ``rollback`` for the
    reverse one) writes: same value, key, headers, timestamp and partition index, plus the
    copy headers (and ``eb-id`` for a raw record)."""
    headers = dict(record.headers)
    if H_ID not in headers:
        headers[H_ID] = event_id(record).encode()
    headers[H_COPY] = kind.encode()
    headers[H_COPY_OF] = str(record.offset).encode()
    return Outgoing(
        value=record.value,
        key=record.key,
        headers=headers,
        timestamp_ms=record.timestamp_ms,
        partition=record.partition,
    )
