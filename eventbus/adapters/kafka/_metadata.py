"""Formats of Kafka-side metadata, a leaf of the adapter: what eventbus writes in commit
metadata (``eb1 <high> <counts> <done ranges>``: delivery counts and offsets already done
above the committed one, so a new owner neither loses a redelivery count nor runs a record
twice) and epoch milliseconds for timestamp lookups."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

__all__ = [
    "CommitMetadata",
    "Ranges",
    "METADATA_BUDGET",
    "decode_metadata",
    "encode_metadata",
    "encode_metadata_checked",
    "parse_metadata",
    "to_ms",
]

METADATA_BUDGET = 3500
"""Characters of commit metadata we use (Kafka's offset.metadata.max.bytes defaults to 4096)."""


def to_ms(when: datetime) -> int:
    """Milliseconds since the epoch; a naive datetime is taken as UTC."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


Ranges = tuple[tuple[int, int], ...]
"""Sorted, disjoint half-open offset ranges ``[start, end)``."""


@dataclass(frozen=True, slots=True)
class CommitMetadata:
    """What eventbus commit metadata says about the offsets at and above the committed one."""

    high: int = -1
    """Every offset in ``[committed, high)`` was delivered at least once (-1: not ours)."""
    counts: Mapping[int, int] = field(default_factory=dict)
    """Deliveries so far of the offsets where that is not 1."""
    done: Ranges = ()
    """Offsets already done (acked or nonexistent): never hand them out again."""

    def is_done(self, offset: int) -> bool:
        i = bisect.bisect_right(self.done, offset, key=lambda r: r[0]) - 1
        return i >= 0 and offset < self.done[i][1]


def encode_metadata(
    high: int, counts: Mapping[int, int], done: Iterable[tuple[int, int]] = ()
) -> str:
    """Commit metadata recording delivery counts and done offsets above the committed one
    (see the module docstring); the lowest done ranges first, within the budget."""
    return encode_metadata_checked(high, counts, done)[0]


def encode_metadata_checked(
    high: int, counts: Mapping[int, int], done: Iterable[tuple[int, int]]
) -> tuple[str, bool]:
    """``(metadata, complete)``: ``complete`` is false when some done ranges did not fit."""
    budget = METADATA_BUDGET
    ranges: list[str] = []
    previous_end = 0
    complete = True
    for start, end in done:  # first: a missing one means a record handled twice
        if end <= start:
            continue
        item = f"{start - previous_end}+{end - start}"
        if len(item) + 1 > budget:
            complete = False
            break
        budget -= len(item) + 1
        ranges.append(item)
        previous_end = end
    parts: list[str] = []
    for offset in sorted(o for o, c in counts.items() if c != 1):
        item = f"{offset}:{counts[offset]}"
        if len(item) + 1 > budget:
            break
        budget -= len(item) + 1
        parts.append(item)
    text = f"eb1 {high} {','.join(parts)}"
    if ranges:
        text += " " + ",".join(ranges)
    return text.rstrip(), complete


def parse_metadata(text: str | None) -> CommitMetadata:
    """Commit metadata read back; empty (``high`` -1) for anything not ours. A malformed done
    field reads as "nothing known done" (the records are delivered again, never skipped)."""
    if not text or not text.startswith("eb1 "):
        return CommitMetadata()
    fields = text.split(" ")
    try:
        high = int(fields[1])
        counts = {}
        for item in fields[2].split(",") if len(fields) > 2 and fields[2] else []:
            offset, _, count = item.partition(":")
            counts[int(offset)] = int(count)
    except (ValueError, IndexError):
        return CommitMetadata()
    return CommitMetadata(high, counts, _parse_ranges(fields[3]) if len(fields) > 3 else ())


def _parse_ranges(text: str) -> Ranges:
    out: list[tuple[int, int]] = []
    end = 0
    try:
        for item in text.split(",") if text else []:
            gap, sep, length = item.partition("+")
            start = end + int(gap)
            if not sep or int(gap) < 0 or int(length) < 1:
                return ()
            end = start + int(length)
            out.append((start, end))
    except ValueError:
        return ()
    return tuple(out)


def decode_metadata(text: str | None) -> tuple[int, dict[int, int]]:
    """``(high, counts)`` from commit metadata; ``(-1, {})`` for anything not ours."""
    meta = parse_metadata(text)
    return meta.high, dict(meta.counts)
