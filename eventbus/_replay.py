"""Replay: reading a topic without a group, from a start to an end, merged across partitions
by time. :meth:`eventbus.aio.AsyncEventBus.replay` is the public door; this module holds the
loop and how starts and ends become per-partition cursors and a stop predicate."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel

from eventbus.errors import InvalidPositionError
from eventbus.event import Codec, Event, decode_record, raw_event
from eventbus.subscription import Start, parse_start
from eventbus.transport import Offset, Position, Record, TopicInfo, Transport, offset_key

__all__ = ["Replayed", "replay_topic"]


@dataclass(frozen=True, slots=True)
class Replayed:
    """An event read by replay (no group): the event and where it sits."""

    event: Event
    topic: str
    partition: int
    offset: Offset
    timestamp_ms: int

    @property
    def position(self) -> Position:
        return Position(self.partition, self.offset)


async def replay_topic(
    transport: Transport,
    codec: Codec,
    topic: str,
    *,
    start: Start | Mapping[int, Offset],
    end: datetime | Position | Mapping[int, Offset] | str | None,
    model: type[BaseModel] | None,
    follow: bool,
    poll_interval: float,
    page_size: int,
) -> AsyncGenerator[Replayed, None]:
    """What :meth:`~eventbus.aio.AsyncEventBus.replay` yields (see its docstring)."""
    info = await transport.describe_topic(topic)
    cursors = _replay_cursors(start, len(info.partitions))
    for part in info.partitions:  # "latest": only what comes after the current end
        if cursors.get(part.partition, (None, True))[0] == "latest":
            cursors[part.partition] = (part.last, False) if part.last is not None else (None, True)
    stop = (lambda r: False) if follow and end is None else _replay_stops(end, info)
    heads: dict[int, list[Record]] = {p: [] for p in cursors}
    done: set[int] = set()

    async def refill(p: int) -> None:
        begin, inclusive = cursors[p]
        page = await transport.read(topic, p, begin, inclusive=inclusive, limit=page_size)
        heads[p] = page
        if page:
            cursors[p] = (page[-1].offset, False)

    while True:
        for p in cursors:
            if p not in done and not heads[p]:
                await refill(p)
        live = [p for p in cursors if heads[p] and p not in done]
        if not live:
            if not follow:
                return
            await asyncio.sleep(poll_interval)  # follow mode: poll for new events
            continue
        p = min(live, key=lambda q: (heads[q][0].timestamp_ms, q))
        record = heads[p].pop(0)
        if stop(record):
            done.add(p)
            heads[p] = []
            if len(done) == len(cursors) and not follow:
                return
            continue
        yield Replayed(
            _replayed(record, codec, model), topic, p, record.offset, record.timestamp_ms
        )


def _replayed(record: Record, codec: Codec, model: type[BaseModel] | None) -> Event:
    """A replayed record's event; an entry that does not fit its topic's stream layout is a
    raw event (its fields as the data) unless ``model`` is given."""
    if record.decode_error is not None and model is None:
        return raw_event(record)
    return decode_record(record, codec, model)


def _replay_cursors(
    start: Start | Mapping[int, Offset], partitions: int
) -> dict[int, tuple[Offset | datetime | None, bool]]:
    if isinstance(start, Mapping):
        return {int(p): (o, True) for p, o in start.items()}
    parsed = parse_start(start)
    if isinstance(parsed, Position):
        if not 0 <= parsed.partition < partitions:
            raise InvalidPositionError(f"the topic has no partition {parsed.partition}")
        return {parsed.partition: (parsed.offset, True)}
    if parsed == "latest":
        return {p: ("latest", True) for p in range(partitions)}  # resolved below
    if parsed == "earliest":
        return {p: (None, True) for p in range(partitions)}
    return {p: (parsed, True) for p in range(partitions)}


def _replay_stops(
    end: datetime | Position | Mapping[int, Offset] | str | None, info: TopicInfo
) -> Callable[[Record], bool]:
    """A predicate: True when a record lies past the end of the replay."""
    last = {p.partition: p.last for p in info.partitions}
    if end is None or end == "latest":
        return lambda r: (
            last.get(r.partition) is None
            or offset_key(r.offset)
            > offset_key(
                last[r.partition]  # type: ignore[arg-type]
            )
        )
    if isinstance(end, str) and not isinstance(end, datetime):
        parsed = parse_start(end)
        if isinstance(parsed, str):
            raise InvalidPositionError(f"{end!r} is not an end: use a time or a position")
        end = parsed
    if isinstance(end, datetime):
        limit_ms = int(end.timestamp() * 1000)
        return lambda r: r.timestamp_ms > limit_ms
    ends: dict[int, Offset] = (
        {end.partition: end.offset} if isinstance(end, Position) else dict(end)
    )
    return lambda r: r.partition in ends and offset_key(r.offset) > offset_key(ends[r.partition])
