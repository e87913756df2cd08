"""The size check of the migration transport's publishes: an event must fit the primary with
its ``eb-mig-gen`` header and the secondary with its copy headers, checked against each side's
max event bytes of the topic (cached, refreshed in the background) before anything is
written."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from eventbus.errors import EventBusError, EventTooLargeError
from eventbus.migration.marks import H_COPY, H_COPY_OF, MIGRATION_ROOM
from eventbus.transport import Outgoing, Transport, record_size

__all__ = ["LIMIT_TTL", "RoomCheck"]

LIMIT_TTL = 30.0
"""Seconds a side's max event bytes of a topic is cached for the publish check."""


class RoomCheck:
    """Per side and topic, the max event bytes, and the check of a publish against them."""

    def __init__(self) -> None:
        self._limits: dict[tuple[int, str], tuple[int | None, float]] = {}
        self.lookups: dict[tuple[int, str], asyncio.Future[int | None]] = {}
        """Background refreshes under way (cancelled when the transport closes)."""

    async def check(
        self, topic: str, marked: Sequence[Outgoing], primary: Transport, secondary: Transport
    ) -> None:
        """Refuse, before anything is written, an event that fits neither the primary with
        its ``eb-mig-gen`` header nor the secondary with its copy headers (a copy that can
        never be written would hold the journal back forever), naming it and the way out."""
        copy_extra = len(H_COPY) + len(b"dual") + len(H_COPY_OF) + 24  # an offset's digits
        for side, extra, role in ((primary, 0, "primary"), (secondary, copy_extra, "secondary")):
            limit = await self.limit(side, topic)
            if limit is None:
                continue
            for record in marked:
                size = record_size(record) + extra
                if size > limit:
                    eid = record.headers.get("eb-id", b"?").decode(errors="replace")
                    raise EventTooLargeError(
                        f"event {eid} is {size} bytes with the migration's headers, over "
                        f"{topic!r}'s limit of {limit} on the {role} side; nothing was "
                        f"written. Raise {topic!r}'s max_event_bytes on that side to "
                        f"{limit + MIGRATION_ROOM} (alter_topic, or 'eventbus topics apply' "
                        "with its spec), or make the event smaller"
                    )

    async def limit(self, side: Transport, topic: str) -> int | None:
        """``topic``'s max event bytes on ``side`` (None: unknown). Never holds a publish
        for a side that is down: a known value is returned even when stale (refreshed in the
        background after ``LIMIT_TTL`` s); the first lookup waits at most 1 s."""
        key = (id(side), topic)
        now = time.monotonic()
        cached = self._limits.get(key)
        if cached is not None:
            if cached[1] <= now and key not in self.lookups:
                task = asyncio.ensure_future(self._look_up(side, topic))
                self.lookups[key] = task
                task.add_done_callback(lambda _: self.lookups.pop(key, None))
            return cached[0]
        try:
            return await asyncio.wait_for(self._look_up(side, topic), 1.0)
        except TimeoutError:
            self._limits[key] = (None, now + LIMIT_TTL)  # the write itself will tell
            return None

    async def _look_up(self, side: Transport, topic: str) -> int | None:
        try:
            limit: int | None = (await side.describe_topic(topic)).spec.max_event_bytes
        except EventBusError:
            limit = None  # the write itself will say what is wrong
        self._limits[(id(side), topic)] = (limit, time.monotonic() + LIMIT_TTL)
        return limit
