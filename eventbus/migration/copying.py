"""Reading partitions and copying records in order: what the backfill, its reverse, the
follow and a cutover's catch-up share (:func:`scan`, :func:`copy_partition`).

A copy keeps the event id, key, partition index, headers and timestamp and adds the copy
headers (``marks.copy_of``). Batches of up to ``COPY_BATCH_RECORDS`` copies or
``COPY_BATCH_BYTES`` (one transaction each on Kafka) are written one at a time, in order,
while the next pages are read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

from eventbus.errors import ConfigurationError
from eventbus.migration._fenced import FencedWriter
from eventbus.migration.marks import MIGRATION_ROOM, copy_of, event_id
from eventbus.transport import Offset, Outgoing, Position, Record, Transport, record_size

__all__ = ["Progress", "copy_partition", "offset_from", "pages", "scan"]

Progress = Callable[[int], None]
"""Called with the number of records just processed (for progress bars)."""

SCAN_PAGE = 5000
"""Records per read when scanning a partition (verify, cutover, the backfill's resume scan):
a Kafka read has a fixed cost of up to ``fetch.wait.max.ms`` whatever its size."""


async def scan(
    transport: Transport,
    topic: str,
    partition: int,
    *,
    page: int = SCAN_PAGE,
    start: datetime | None = None,
) -> AsyncIterator[Record]:
    """Every record of one partition (from ``start`` if given), in order."""
    inclusive = True
    at: Offset | datetime | None = start
    while True:
        batch = await transport.read(topic, partition, at, inclusive=inclusive, limit=page)
        for record in batch:
            yield record
        if len(batch) < page:
            return
        at, inclusive = batch[-1].offset, False


COPY_PAGE = 1000
"""Records per read of the backfill."""
COPY_BATCH_RECORDS = 5000
COPY_BATCH_BYTES = 8 * 1024 * 1024
"""A backfill batch (one transaction on Kafka) ends at whichever of these it reaches first: a
transaction's commit costs a round trip, so batches span several reads."""
CHECKPOINT_EVERY = 1.0
"""Seconds between backfill checkpoints (a lower bound for the resume scan, so rarer is safe)."""

Written = Callable[[Offset, Offset], Awaitable[None]]
"""Called after each batch lands: (its last source offset, that copy's target offset)."""


def offset_from(text: str) -> Offset:
    """An offset as the control record and the copy headers store it (text)."""
    return int(text) if text.isdigit() else text


async def pages(
    side: Transport, topic: str, p: int, start: Offset | datetime | None, inclusive: bool
) -> AsyncGenerator[list[Record], None]:
    """Pages of one partition in order; the next page is read while the caller works."""

    def read(at: Offset | datetime | None, incl: bool) -> asyncio.Task[list[Record]]:
        task = asyncio.ensure_future(side.read(topic, p, at, inclusive=incl, limit=COPY_PAGE))
        task.add_done_callback(_retrieve)  # a read left behind by an error is not reported
        return task

    task = read(start, inclusive)
    try:
        while True:
            batch = await task
            full = len(batch) >= COPY_PAGE
            if full:
                task = read(batch[-1].offset, False)
            yield batch
            if not full:
                return
    finally:
        task.cancel()


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def copy_partition(
    side: Transport,
    topic: str,
    p: int,
    start: Offset | datetime | None,
    *,
    inclusive: bool,
    keep: Callable[[Record], bool],
    kind: str,
    writer: FencedWriter,
    progress: Progress | None,
    written: Written | None = None,
    limit: int | None = None,
    reached: dict[int, Offset] | None = None,
) -> int:
    """Copy the records of one partition that ``keep`` selects, in order, through ``writer``.

    Batches are written one at a time, in order (the next starts only after the previous
    landed), while the next batch is read and built. A copy larger than ``limit`` (the
    receiving topic's max event bytes) stops the copy before its batch is written, naming the
    event and the way out. Returns how many records were copied; ``reached[p]`` is set to the
    last offset read once everything selected up to it has landed."""
    copier = _Copier(topic, kind, writer, progress, written, limit)
    last_read: Offset | None = None
    try:
        async with contextlib.aclosing(pages(side, topic, p, start, inclusive)) as reading:
            async for page in reading:
                copier.add(page, keep)
                if page:
                    last_read = page[-1].offset
                if copier.full():
                    await copier.flush()
        await copier.flush()
        await copier.land()
    finally:
        copier.abandon()
    if reached is not None and last_read is not None:
        reached[p] = last_read
    return copier.copied


class _Copier:
    """The batch being built and the one being written (at most one at a time)."""

    def __init__(
        self,
        topic: str,
        kind: str,
        writer: FencedWriter,
        progress: Progress | None,
        written: Written | None,
        limit: int | None = None,
    ) -> None:
        self.topic, self.kind, self.writer, self.limit = topic, kind, writer, limit
        self.progress, self.written = progress, written
        self.copied = 0
        self.batch: list[Outgoing] = []
        self.size = self.seen = 0
        self.last: Offset | None = None
        self.write: asyncio.Task[Position | None] | None = None
        self.writing: tuple[int, int, Offset | None] = (0, 0, None)
        """(copies, records read, last source offset) of the batch being written."""

    def add(self, page: list[Record], keep: Callable[[Record], bool]) -> None:
        self.seen += len(page)
        for record in page:
            if keep(record):
                copy = copy_of(record, self.kind)
                size = record_size(copy)
                if self.limit is not None and size > self.limit:
                    raise ConfigurationError(
                        f"{self.topic}: event {event_id(record)} (partition "
                        f"{record.partition}, offset {record.offset}) is {size} bytes with the "
                        f"migration's headers, over the receiving topic's limit of {self.limit};"
                        " nothing from it on was copied. Raise that topic's max_event_bytes "
                        f"to {size + MIGRATION_ROOM} or more on that side (alter_topic, or "
                        "'eventbus topics apply' with its spec) and run backfill again"
                    )
                self.batch.append(copy)
                self.size += len(record.value)
                self.last = record.offset

    def full(self) -> bool:
        return len(self.batch) >= COPY_BATCH_RECORDS or self.size >= COPY_BATCH_BYTES

    async def flush(self) -> None:
        """Wait for the batch being written, then start writing the one built."""
        await self.land()
        if self.batch:
            self.write = asyncio.ensure_future(
                self.writer.write(self.topic, self.batch, timeout=60.0)
            )
            self.write.add_done_callback(_retrieve)
            self.writing = (len(self.batch), self.seen, self.last)
        elif self.progress is not None and self.seen:
            self.progress(self.seen)
        self.batch, self.size, self.seen = [], 0, 0

    async def land(self) -> None:
        """Wait for the batch being written (raises what its write raised)."""
        if self.write is None:
            return
        task, self.write = self.write, None
        last = await task
        count, seen, source = self.writing
        self.copied += count
        if self.progress is not None:
            self.progress(seen)
        if self.written is not None and source is not None and last is not None:
            await self.written(source, last.offset)

    def abandon(self) -> None:
        if self.write is not None:
            self.write.cancel()  # its thread still ends the transaction; a resumed run sees how
